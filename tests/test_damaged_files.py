"""Damaged checkpoints and histories are refused with a `CheckpointError` naming the file (or the parameter), never
loaded as something else: cut weights, configs and trainer state, lost history tables and data files, a broken
meta.json, and models whose shapes differ from the saved ones (checked before anything runs)."""
import json, shutil

import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from conftest import save_tiny_model, word_tokenizer
from test_train import WORDS, make_pairs
from dpo_nb.cli import USER_ERRORS, main
from dpo_nb.history import CheckpointError, History, synthetic_history
from dpo_nb.train import DPOConfig, DPOTrainer

CFG = dict(beta=0.3, learning_rate=3e-3, batch_size=4, max_steps=4, eval_every=2, probe_every=2, progress=False,
           ref_cache=False)
LORA = dict(target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM", lora_dropout=0.0)


def tiny(hidden=32, vocab=len(WORDS), layers=2):
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=64, num_hidden_layers=layers,
                                        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64))


@pytest.fixture(scope="module")
def tok(): return word_tokenizer(WORDS)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, tok):
    "A real checkpoint of a two-step toy run with eval data, a history and a frozen reference model (built once)."
    d = tmp_path_factory.mktemp("ck")
    t = DPOTrainer(tiny(), tok, make_pairs(8, 0), DPOConfig(**CFG), eval_data=make_pairs(4, 1), ref_model=tiny())
    t.fit(2)
    return t.save(d / "ck")


@pytest.fixture(scope="module")
def lora_ckpt(tmp_path_factory, tok):
    "A LoRA (rank 4) checkpoint whose base is a saved folder, as a Hub model would be."
    peft = pytest.importorskip("peft")
    d = tmp_path_factory.mktemp("lora")
    save_tiny_model(d / "base", WORDS)
    model = peft.get_peft_model(AutoModelForCausalLM.from_pretrained(d / "base"), peft.LoraConfig(r=4, **LORA))
    t = DPOTrainer(model, tok, make_pairs(8, 0), DPOConfig(**{**CFG, "eval_every": 0}))
    t.fit(1)
    return t.save(d / "ck")


def copy_of(ckpt, tmp_path, change=None):
    c = shutil.copytree(ckpt, tmp_path / "copy")
    if change: change(c)
    return c


def cut(f, keep=0.5):
    "Cut file `f` short, as a full disk or an interrupted copy does."
    b = f.read_bytes(); f.write_bytes(b[: int(len(b) * keep)])


def refused(folder, *names, **kw):
    "Load `folder`; it must raise a CheckpointError whose message holds each of `names`."
    with pytest.raises(CheckpointError) as e: DPOTrainer.load(folder, **kw)
    for n in names: assert str(n) in str(e.value), (n, str(e.value))
    return str(e.value)


def test_the_undamaged_copy_loads(ckpt, tmp_path):
    t = DPOTrainer.load(copy_of(ckpt, tmp_path))
    assert t.step == 2 and len(t.history.steps) == 2 and t.eval_data is not None


# ------------------------------------------------------------------------------------------ cut files
@pytest.mark.parametrize("keep", [0.5, 0.99, 1e-6], ids=["half", "last-bytes", "header"])
@pytest.mark.parametrize("weights", ["model/model.safetensors", "ref_model/model.safetensors"])
def test_cut_weights_are_named(ckpt, tmp_path, weights, keep):
    c = copy_of(ckpt, tmp_path, lambda c: cut(c / weights, keep))
    refused(c, c / weights, "not a readable safetensors file")


def test_lost_weights_are_named(ckpt, tmp_path):
    c = copy_of(ckpt, tmp_path, lambda c: (c / "model/model.safetensors").unlink())
    refused(c, c / "model/model.safetensors", "missing")


@pytest.mark.parametrize("name", ["config.json", "model/config.json", "ref_model/config.json", "model/tokenizer.json",
                                  "model/tokenizer_config.json"])
def test_cut_json_is_named(ckpt, tmp_path, name):
    c = copy_of(ckpt, tmp_path, lambda c: cut(c / name))
    refused(c, c / name, "not valid JSON")


def test_lost_model_config_is_named(ckpt, tmp_path):
    c = copy_of(ckpt, tmp_path, lambda c: (c / "model/config.json").unlink())
    refused(c, c / "model/config.json", "missing")


def test_trainer_config_that_is_not_an_object(ckpt, tmp_path):
    c = copy_of(ckpt, tmp_path, lambda c: (c / "config.json").write_text("[1, 2]"))
    refused(c, c / "config.json", "not a dict")


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.01])
def test_cut_trainer_state_is_named(ckpt, tmp_path, keep):
    c = copy_of(ckpt, tmp_path, lambda c: cut(c / "trainer_state.pt", keep))
    msg = refused(c, c / "trainer_state.pt", "unreadable")
    assert "internal miniz error" not in msg  # the library's first sentence, not its paragraph


def test_trainer_state_without_its_entries_is_named(ckpt, tmp_path):
    def change(c):
        s = torch.load(c / "trainer_state.pt", weights_only=False); del s["optimizer"], s["rng"]
        torch.save(s, c / "trainer_state.pt")
    refused(copy_of(ckpt, tmp_path, change), "trainer_state.pt", "optimizer", "rng")


# ------------------------------------------------------------------------------------------ history
@pytest.mark.parametrize("table", ["steps", "pairs", "evals", "kl", "tokens", "texts"])
def test_a_lost_history_table_is_never_an_empty_one(ckpt, tmp_path, table):
    c = copy_of(ckpt, tmp_path, lambda c: (c / "history" / f"{table}.parquet").unlink())
    refused(c, c / "history" / f"{table}.parquet", "missing")
    with pytest.raises(CheckpointError, match=f"{table}.parquet: missing"): History.load(c / "history")


def test_a_shortened_or_cut_history_table_is_named(ckpt, tmp_path):
    c = copy_of(ckpt, tmp_path)
    f = c / "history" / "pairs.parquet"
    pd.read_parquet(f).iloc[:3].to_parquet(f)
    refused(c, f, "3 rows")
    cut(c / "history" / "steps.parquet")
    with pytest.raises(CheckpointError, match="steps.parquet: not a readable Parquet"): History.load(c / "history")


def test_a_lost_history_is_named(ckpt, tmp_path):
    c = copy_of(ckpt, tmp_path, lambda c: shutil.rmtree(c / "history"))
    refused(c, c / "history" / "meta.json", "missing")


def _meta(f): return json.loads((f / "meta.json").read_text())


@pytest.mark.parametrize("damage, says", [
    (lambda f: cut(f / "meta.json"), "not valid JSON"),
    (lambda f: (f / "meta.json").write_text(""), "not valid JSON"),
    (lambda f: (f / "meta.json").write_bytes(b"\xff\xfe garbage"), "not valid JSON"),
    (lambda f: (f / "meta.json").write_text(json.dumps({**_meta(f), "format": "trl.history"})), "format tag 'trl.history'"),
    (lambda f: (f / "meta.json").write_text(json.dumps({k: v for k, v in _meta(f).items() if k != "format"})), "format tag None"),
    (lambda f: (f / "meta.json").write_text("[1, 2, 3]"), "format tag None"),
    (lambda f: (f / "meta.json").write_text(json.dumps({k: v for k, v in _meta(f).items() if k != "meta"})), "no 'meta'"),
    (lambda f: (f / "meta.json").write_text(json.dumps({k: v for k, v in _meta(f).items() if k != "version"})), "no 'version'"),
    (lambda f: (f / "meta.json").write_text(json.dumps({**_meta(f), "version": 7})), "format version 7"),
    (lambda f: (f / "meta.json").write_text(json.dumps({**_meta(f), "rows": [1, 2]})), "row counts"),
], ids=["cut", "empty", "binary", "other-format", "no-format", "a-list", "no-meta", "no-version", "newer-version", "bad-rows"])
def test_a_damaged_meta_json_is_named(tmp_path, damage, says):
    f = synthetic_history(n_pairs=16, n_eval=8, n_steps=4, eval_every=2).save(tmp_path / "h")
    damage(f)
    with pytest.raises(CheckpointError) as e: History.load(f)
    assert str(f / "meta.json") in str(e.value) and says in str(e.value), str(e.value)
    assert main(["report", str(f)]) == 2  # and the CLI says so in one line


def test_cli_names_a_damaged_history(tmp_path, capsys):
    assert CheckpointError in USER_ERRORS
    f = synthetic_history(n_pairs=16, n_eval=8, n_steps=4, eval_every=2).save(tmp_path / "h")
    (f / "kl.parquet").unlink()
    assert main(["report", str(f)]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and str(f / "kl.parquet") in err and "Traceback" not in err


def test_an_old_meta_json_without_its_table_list_loads_as_before(tmp_path):
    h = synthetic_history(n_pairs=16, n_eval=8, n_steps=4, eval_every=2)
    f = h.save(tmp_path / "h")
    (f / "meta.json").write_text(json.dumps({k: v for k, v in _meta(f).items() if k != "rows"}))
    (f / "texts.parquet").unlink()
    old = History.load(f)
    assert len(old.texts) == 0 and len(old.pairs) == len(h.pairs)


# ------------------------------------------------------------------------------------------ data
@pytest.mark.parametrize("split", ["train_data", "eval_data"])
@pytest.mark.parametrize("damage", ["folder", "arrow", "state.json", "cut-arrow"])
def test_lost_or_cut_data_is_named(ckpt, tmp_path, split, damage):
    def change(c):
        d = c / split
        if damage == "folder": shutil.rmtree(d)
        elif damage == "state.json": (d / "state.json").unlink()
        else:
            for f in d.glob("*.arrow"): f.unlink() if damage == "arrow" else cut(f, 0.8)
    c = copy_of(ckpt, tmp_path, change)
    msg = refused(c, c / split)
    if damage == "arrow": assert ".arrow" in msg


def test_shortened_data_is_named(ckpt, tmp_path):
    from datasets import load_from_disk
    c = copy_of(ckpt, tmp_path)
    saved = load_from_disk(str(ckpt / "train_data"))
    saved.select(range(len(saved) - 2)).save_to_disk(str(c / "train_data"))
    refused(c, c / "train_data", f"{len(saved) - 2} rows, but {len(saved)} were saved")


# ------------------------------------------------------------------------------------------ shapes
@pytest.mark.parametrize("kw, param, saved, given", [
    (dict(hidden=64), "model.embed_tokens.weight", [20, 32], [20, 64]),
    (dict(vocab=30), "model.embed_tokens.weight", [20, 32], [30, 32]),
], ids=["hidden", "vocab"])
def test_a_model_of_other_shapes_is_refused_before_anything_runs(ckpt, tmp_path, monkeypatch, kw, param, saved, given):
    c = copy_of(ckpt, tmp_path)
    def ran(*a, **k): raise AssertionError("the trainer was built (a reference pass could run) before the check")
    monkeypatch.setattr(DPOTrainer, "__init__", ran)
    refused(c, param, saved, given, c / "model/model.safetensors", model=tiny(**kw))
    refused(c, param, "ref_model", c / "ref_model/model.safetensors", ref_model=tiny(**kw))


def test_a_model_of_other_shapes_names_the_first_parameter_that_differs(ckpt, tmp_path):
    wider_mlp = LlamaForCausalLM(LlamaConfig(vocab_size=len(WORDS), hidden_size=32, intermediate_size=96, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64))
    refused(copy_of(ckpt, tmp_path), "model.layers.0.mlp.gate_proj.weight", [64, 32], [96, 32], model=wider_mlp)


def test_a_model_of_the_same_shapes_is_accepted(ckpt, tmp_path):
    t = DPOTrainer.load(copy_of(ckpt, tmp_path), model=tiny(), ref_model=tiny())
    assert t.step == 2


def test_a_lora_of_another_rank_is_refused(lora_ckpt, tmp_path):
    import peft
    c = copy_of(lora_ckpt, tmp_path)
    base = lambda: AutoModelForCausalLM.from_pretrained(lora_ckpt.parent / "base")
    refused(c, "lora_A.weight", [4, 32], [8, 32], c / "model/adapter_model.safetensors",
            model=peft.get_peft_model(base(), peft.LoraConfig(r=8, **LORA)))
    other = dict(LORA, target_modules=["q_proj", "k_proj", "v_proj"])  # an adapter on other modules: named too
    refused(c, "k_proj.lora_A.weight", "only in the model given", model=peft.get_peft_model(base(), peft.LoraConfig(r=4, **other)))
    refused(c, "holds a peft adapter", "is not a peft model", model=base())
    t = DPOTrainer.load(c, model=peft.get_peft_model(base(), peft.LoraConfig(r=4, **LORA)))  # the same shapes: accepted
    assert t.step == 1 and t.ref_mode == "adapters"


def test_a_peft_model_for_a_whole_model_checkpoint_is_refused(ckpt, tmp_path):
    peft = pytest.importorskip("peft")
    refused(copy_of(ckpt, tmp_path), "holds a whole model", "is a peft model",
            model=peft.get_peft_model(tiny(), peft.LoraConfig(r=4, **LORA)))


def test_cut_adapter_weights_are_named(lora_ckpt, tmp_path):
    c = copy_of(lora_ckpt, tmp_path, lambda c: cut(c / "model/adapter_model.safetensors"))
    refused(c, c / "model/adapter_model.safetensors", "not a readable safetensors file")
    c2 = shutil.copytree(lora_ckpt, tmp_path / "copy2")
    cut(c2 / "model/adapter_config.json")
    refused(c2, c2 / "model/adapter_config.json", "not valid JSON")
