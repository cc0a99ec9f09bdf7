"The command line: `dpo-nb train` on a model and data saved to local folders (the real loading path), `report`, `demo`."
import json, subprocess, sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from dpo_nb.cli import main
from conftest import save_tiny_model
from dpo_nb.history import History

WORDS = ["<pad>", "<bos>", "<eos>", "<unk>", "the", "film", "was", "plot", "is", "good", "bad", "very", "great", "awful"]


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    "A tiny model + tokenizer saved with save_pretrained, and pairs saved as a local dataset folder of JSONL files."
    d = tmp_path_factory.mktemp("local")
    save_tiny_model(d / "model", WORDS)
    (d / "data").mkdir()
    rows = [dict(prompt=f"the {s} {v}", chosen=f" very {p}", rejected=f" {n}")
            for s in ("film", "plot") for v in ("was", "is") for p in ("good", "great") for n in ("bad", "awful")] * 3
    with open(d / "data" / "train.jsonl", "w") as f:
        for r in rows: f.write(json.dumps(r) + "\n")
    return d


@pytest.mark.parametrize("lora", [False, True])
def test_train_on_local_folders(local, tmp_path, lora):
    if lora: pytest.importorskip("peft")
    out = tmp_path / "run"
    args = ["train", "--model", str(local / "model"), "--data", str(local / "data"), "--out", str(out), "--max-steps", "6",
            "--batch-size", "4", "--learning-rate", "0.01", "--beta", "0.5", "--eval-fraction", "0.25"]
    assert main(args + (["--lora", "--lora-r", "4"] if lora else [])) == 0
    for name in ("model/config.json", "model/tokenizer.json", "checkpoint/trainer_state.pt", "history/meta.json", "report.html", "summary.json"):
        assert (out / name).exists(), name
    h = History.load(out / "history")
    assert len(h.steps) == 6 and h.meta["beta"] == 0.5
    assert h.meta["ref_mode"] == ("adapters" if lora else "precomputed")
    assert h.evals["rewards/accuracies"].iloc[-1] > h.evals["rewards/accuracies"].iloc[0]
    trained = AutoModelForCausalLM.from_pretrained(out / "model")  # a plain model, LoRA merged in
    start = AutoModelForCausalLM.from_pretrained(local / "model")
    assert any(not torch.equal(a, b) for a, b in zip(trained.state_dict().values(), start.state_dict().values()))
    assert not any("lora" in k for k in trained.state_dict())


def test_train_reads_a_config_file_and_flags_win(local, tmp_path):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(dict(beta=0.2, max_steps=3, batch_size=4, learning_rate=1e-3)))
    out = tmp_path / "run"
    main(["train", "--model", str(local / "model"), "--data", str(local / "data"), "--out", str(out), "--config", str(cfg), "--beta", "0.3"])
    h = History.load(out / "history")
    assert h.meta["beta"] == 0.3 and len(h.steps) == 3
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(dict(betta=0.1)))
    assert main(["train", "--model", str(local / "model"), "--data", str(local / "data"), "--out", str(out), "--config", str(bad)]) == 2


def test_report_rerenders_a_finished_run(local, tmp_path):
    out = tmp_path / "run"
    main(["train", "--model", str(local / "model"), "--data", str(local / "data"), "--out", str(out), "--max-steps", "2", "--batch-size", "4"])
    (out / "report.html").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "report.html").stat().st_size > 100_000  # plotly.js inlined: opens offline


def test_dpo_nb_command_runs_the_demo(tmp_path):
    "The installed console script, end to end on the bundled toy task (short run)."
    out = tmp_path / "demo"
    r = subprocess.run(["dpo-nb", "demo", "--steps", "20", "--samples", "16", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["steps"] == 20 and 0 <= s["held-out reward accuracy"] <= 1
    assert "held-out reward accuracy" in r.stdout and "report.html" in r.stdout
    assert (out / "report.html").exists()


def test_train_load_dtype_and_attention_reach_the_model(local, tmp_path, monkeypatch):
    "--dtype bf16: the checkpoint is read in bf16, trained on fp32 master weights, and saved back in bf16."
    import dpo_nb.cli
    seen = []
    def spy(*a, **k):
        m, t = load_model(*a, **k)
        seen.append((next(m.parameters()).dtype, m.config._attn_implementation))
        return m, t
    load_model = dpo_nb.cli.load_model
    monkeypatch.setattr(dpo_nb.cli, "load_model", spy)
    out = tmp_path / "run"
    assert main(["train", "--model", str(local / "model"), "--data", str(local / "data"), "--out", str(out), "--max-steps", "3",
                 "--batch-size", "4", "--learning-rate", "1e-5", "--dtype", "bf16", "--attn-implementation", "eager",
                 "--gradient-checkpointing", "--eval-fraction", "0"]) == 0
    h = History.load(out / "history")
    assert h.meta["precision"]["upcast_to_fp32"] > 0 and h.meta["config"]["gradient_checkpointing"] is True
    saved = json.loads((out / "model" / "config.json").read_text())
    assert saved["dtype"] == "bfloat16" and seen == [(torch.bfloat16, "eager")]
    trained = AutoModelForCausalLM.from_pretrained(out / "model")
    start = AutoModelForCausalLM.from_pretrained(local / "model", dtype=torch.bfloat16)
    assert next(trained.parameters()).dtype == torch.bfloat16
    assert any(not torch.equal(a, b) for a, b in zip(trained.state_dict().values(), start.state_dict().values()))  # moved at 1e-5


def test_train_qlora_saves_the_adapter(local, tmp_path):
    pytest.importorskip("bitsandbytes"); pytest.importorskip("peft")
    out = tmp_path / "run"
    assert main(["train", "--model", str(local / "model"), "--data", str(local / "data"), "--out", str(out), "--max-steps", "3",
                 "--batch-size", "4", "--learning-rate", "0.01", "--load-in-4bit", "--device", "cpu", "--eval-fraction", "0"]) == 0
    h = History.load(out / "history")
    assert h.meta["ref_mode"] == "adapters" and h.meta["precision"]["placed"]
    assert (out / "model" / "adapter_config.json").exists() and not (out / "model" / "model.safetensors").exists()
    cfg = json.loads((out / "model" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(local / "model")


USER_ERRORS = [  # (arguments, what the one line must say)
    (["train", "--model", "{model}", "--data", "{tmp}/missing.jsonl"], "no such file: {tmp}/missing.jsonl"),
    (["train", "--model", "nobody/no-such-model", "--data", "{tmp}/missing.jsonl"], "no such file"),  # data before the model
    (["train", "--model", "{tmp}/no_model", "--data", "{data}"], "--model {tmp}/no_model: no such folder"),
    (["train", "--model", "{model}", "--data", "{data}", "--ref", "./no_ref"], "--ref ./no_ref: no such folder"),
    (["train", "--model", "{model}", "--data", "{data}", "--loss-type", "sigmoidd"], "DPOConfig.loss_type: unknown loss_type 'sigmoidd'"),
    (["train", "--model", "{model}", "--data", "{data}", "--max-grad-norm", "-1"], "DPOConfig.max_grad_norm=-1.0"),
    (["train", "--model", "{model}", "--data", "{tmp}/bad.jsonl"], "line 2: not valid JSON"),
    (["demo", "--loss-type", "nope", "--out", "{tmp}/demo"], "DPOConfig.loss_type: unknown loss_type 'nope'"),
    (["report", "{tmp}/no_run"], "neither it nor {tmp}/no_run/history holds a saved History"),
]


@pytest.mark.parametrize("argv,message", USER_ERRORS, ids=[" ".join(a[:1] + a[-2:]) for a, _ in USER_ERRORS])
def test_user_errors_are_one_line_and_exit_2(local, tmp_path, capsys, argv, message):
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": oops}\n')
    fill = lambda x: x.format(model=local / "model", data=local / "data", tmp=tmp_path)
    assert main([fill(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"dpo-nb {argv[0]}: error: ") and fill(message) in err[0], err


def test_the_command_prints_no_traceback_for_a_user_error(tmp_path):
    r = subprocess.run(["dpo-nb", "train", "--model", str(tmp_path / "m"), "--data", str(tmp_path / "d.jsonl")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "no such folder" in r.stderr
