"""`inspect_models` and `dpo-nb inspect` on models trained by TRL's DPOTrainer in the test itself (the toy model, CPU):
the History's means equal TRL's own logged evaluation means at every checkpoint, for a full fine-tune and for LoRA
adapters; the CLI from local folders; bad input; the widgets and the report on the result."""
import contextlib, copy, io, json, warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("trl")
import trl  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from dpo_nb.cli import main  # noqa: E402
from dpo_nb.history import History  # noqa: E402
from dpo_nb.inspection import checkpoint_step, inspect_models  # noqa: E402
from dpo_nb.toy import load_toy  # noqa: E402
from dpo_nb.train import ConfigError  # noqa: E402
from dpo_nb.widgets import MarginExplorer, PairInspector  # noqa: E402

KEYS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen", "logps/rejected")


@pytest.fixture(scope="module")
def toy():
    hf_logging.set_verbosity_error()
    torch.set_num_threads(1)
    return load_toy()


def pairs(ds): return Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in ds])


def train_with_trl(toy, out: Path, peft_config=None, **kw):
    "TRL's DPOTrainer on 48 toy pairs, a checkpoint and an evaluation on 16 held-out pairs every 3 steps; its logged eval means"
    sft = out / "sft"
    toy.model.save_pretrained(sft); toy.tokenizer.save_pretrained(sft)
    args = trl.DPOConfig(output_dir=str(out / "trl"), per_device_train_batch_size=8, per_device_eval_batch_size=8, max_steps=6,
                         learning_rate=kw.pop("learning_rate", 5e-3), eval_strategy="steps", eval_steps=3, save_steps=3,
                         logging_steps=1, bf16=False, use_cpu=True, gradient_checkpointing=False, report_to="none",
                         disable_tqdm=True, seed=0, **kw)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        t = trl.DPOTrainer(model=str(sft), args=args, peft_config=peft_config,  # (its reference: a copy of the start, or adapters off)
                           train_dataset=pairs(toy.train.select(range(48))), eval_dataset=pairs(toy.test.select(range(16))),
                           processing_class=toy.tokenizer)
        t.train()
    logged = pd.DataFrame([r for r in t.state.log_history if "eval_loss" in r]).set_index("step")
    return args, sft, sorted((out / "trl").glob("checkpoint-*")), logged


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_full_fine_tune_means_equal_trls_logged_means(toy, tmp_path, loss_type):
    args, sft, ckpts, logged = train_with_trl(toy, tmp_path, loss_type=[loss_type])
    assert [checkpoint_step(c) for c in ckpts] == [3, 6]
    h = inspect_models(ckpts, sft, toy.train.select(range(48)), eval_data=toy.test.select(range(16)), config=args, kl=False)
    ev = h.evals.set_index("step")
    assert list(ev.index) == [0, 3, 6]
    for k in KEYS: np.testing.assert_allclose(ev.loc[[3, 6], k], logged[f"eval_{k}"], atol=1e-5, rtol=0, err_msg=k)
    assert abs(logged["eval_rewards/margins"]).min() > 0.05  # (the runs moved: equality is not 0 == 0)
    # the means are of per-pair records: the last scoring of every held-out pair
    last = h.latest("eval")
    assert len(last) == 16 and last.step.eq(6).all()
    np.testing.assert_allclose(last["margin"].mean(), logged.loc[6, "eval_rewards/margins"], atol=1e-5)
    assert h.meta["loss_type"] in (loss_type, [loss_type]) and h.meta["config"]["max_length"] == 1024  # TRL's config, mapped
    # step 0 is the reference's: every margin 0
    assert h.first("eval")["margin"].abs().max() == 0 and ev.loc[0, "loss"] == pytest.approx(np.log(2) if loss_type == "sigmoid" else 1 / (2 * 0.1) ** 2)


def test_lora_adapters_inspected_on_their_base(toy, tmp_path):
    from peft import LoraConfig
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"], lora_dropout=0.0, task_type="CAUSAL_LM")
    args, sft, ckpts, logged = train_with_trl(toy, tmp_path, peft_config=lora, learning_rate=1e-1)
    assert all((c / "adapter_config.json").exists() for c in ckpts)
    from transformers import AutoModelForCausalLM
    ref = AutoModelForCausalLM.from_pretrained(sft)  # the caller's model: adapters go on it, and come off again
    ids = torch.tensor([toy.tokenizer("the plot was dull").input_ids])
    before = ref(ids).logits.detach()
    h = inspect_models(tmp_path / "trl", ref, toy.train.select(range(48)), eval_data=toy.test.select(range(16)), config=args)
    assert sorted(h.pairs.step.unique()) == [0, 3, 6]  # the run's output folder: its checkpoint-N folders
    assert h.meta["ref_mode"] == "adapters"  # the reference is the base with its adapters off, not a second copy
    assert type(ref).__name__ == "LlamaForCausalLM" and torch.equal(ref(ids).logits.detach(), before)
    ev = h.evals.set_index("step")
    for k in KEYS: np.testing.assert_allclose(ev.loc[[3, 6], k], logged[f"eval_{k}"], atol=1e-5, rtol=0, err_msg=k)
    assert abs(logged["eval_rewards/margins"]).min() > 0.05
    kl = h.kl.set_index(["step", "method"])["value"]
    assert kl[(0, "sampled")] == 0 and kl[(0, "token_exact")] == 0 and kl[(6, "token_exact")] > 0
    # the adapters named by each checkpoint were the ones scored: the two checkpoints give different margins
    m = h.pairs[h.pairs.split == "train"].pivot(index="pair_id", columns="step", values="margin")
    assert (m[3] - m[6]).abs().max() > 1e-3


def test_cli_inspect_from_folders_and_user_errors(toy, tmp_path):
    args, sft, ckpts, logged = train_with_trl(toy, tmp_path)
    pairs(toy.train.select(range(48))).to_json(tmp_path / "train.jsonl")
    pairs(toy.test.select(range(16))).to_json(tmp_path / "test.jsonl")
    (tmp_path / "trl.yaml").write_text("beta: 0.1\nmax_length: 1024\n")
    out = tmp_path / "inspect"
    with contextlib.redirect_stdout(io.StringIO()) as so:
        rc = main(["inspect", "--policy", *map(str, ckpts), "--ref", str(sft), "--data", str(tmp_path / "train.jsonl"),
                   "--eval-data", str(tmp_path / "test.jsonl"), "--trl-config", str(tmp_path / "trl.yaml"), "--kl-prompts", "4",
                   "--out", str(out)])
    assert rc == 0 and "report:" in so.getvalue()
    h = History.load(out / "history")
    np.testing.assert_allclose(h.evals.set_index("step").loc[[3, 6], "rewards/margins"], logged["eval_rewards/margins"], atol=1e-5)
    assert (out / "report.html").exists() and json.loads((out / "summary.json").read_text())["rewards/margins"] == pytest.approx(
        logged.loc[6, "eval_rewards/margins"], abs=1e-4)
    assert set(h.kl["step"]) == {0, 3, 6} and h.kl[h.kl.step == 6]["n"].iloc[0] == 4
    # user errors: one line, exit 2
    for argv, msg in ((["--policy", str(ckpts[-1]), "--data", str(tmp_path / "train.jsonl")], "needs the reference"),
                      (["--policy", str(tmp_path / "nowhere"), "--ref", str(sft), "--data", str(tmp_path / "train.jsonl")], "no such folder"),
                      (["--policy", str(sft), str(ckpts[0]), "--ref", str(sft), "--data", str(tmp_path / "train.jsonl")], "cannot tell the step")):
        err = io.StringIO()
        with contextlib.redirect_stderr(err): assert main(["inspect", *argv, "--out", str(tmp_path / "x")]) == 2
        assert len(err.getvalue().strip().splitlines()) == 1 and msg in err.getvalue(), err.getvalue()


def test_widgets_and_report_on_an_inspected_history(toy, tmp_path):
    pol = copy.deepcopy(toy.model)
    with torch.no_grad():  # a "trained" model: the reference with its head nudged
        pol.lm_head.weight.add_(0.05 * torch.randn_like(pol.lm_head.weight, generator=torch.Generator().manual_seed(0)))
    h = inspect_models(pol, toy.model, toy.train.select(range(24)), toy.tokenizer, eval_data=toy.test.select(range(8)), step=10,
                       max_length=64, max_prompt_length=16, kl_prompts=4)
    pid = h.probe_ids()[0]
    ins = PairInspector(h, split="eval", pair_id=pid, mode="static")
    assert ins.step_w.value == 10 and 'class="dpo-tok"' in ins.html["tokens"]
    t = h.token_frame(pid, 10)
    last = h.pair_trajectory(pid, "eval").iloc[-1]
    np.testing.assert_allclose(t.loc[t.side == "chosen", "logp"].sum(), last["chosen_logps"], atol=1e-4)
    ex = MarginExplorer(h, mode="static")
    assert len(ex.changes) == 8 and ex.changes["n_scored"].eq(2).all()
    ex.split_w.value = "train"
    assert len(ex.changes) == 24
    from dpo_nb.report import write_report
    html = write_report(h, tmp_path / "r").read_text()
    assert "inspect_models" in html and "Margin" in html


def test_bad_arguments(toy):
    with pytest.raises(ConfigError, match="needs the reference"): inspect_models(toy.model, None, toy.train.select(range(8)), toy.tokenizer)
    with pytest.raises(ConfigError, match=">= 1"): inspect_models({0: toy.model}, toy.model, toy.train.select(range(8)), toy.tokenizer)
    with pytest.raises(ConfigError, match="no tokenizer"): inspect_models(toy.model, toy.model, toy.train.select(range(8)))
