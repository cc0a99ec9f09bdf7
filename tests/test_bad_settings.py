"""Bad settings a careful user tries: non-finite floats, seeds and devices out of range, a config changed after it was
made, pre-tokenized data cut with other limits or by another tokenizer, a resume that changes the batch plan, an edited
meta.json, and the command line's own flags. Each is an error naming the field, file or pair, before any training."""
import contextlib, io, json, math, warnings
from dataclasses import fields

import pytest
import torch
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM

from conftest import word_tokenizer
from dpo_nb.cli import main
from dpo_nb.data import PreferenceDataError, tokenize_pairs
from dpo_nb.history import CheckpointError, History, synthetic_history
from dpo_nb.models import ATTN_IMPLEMENTATIONS, attn_problem
from dpo_nb.train import ConfigError, DPOConfig, DPOTrainer

WORDS = ["<pad>", "<bos>", "<eos>", "<unk>", "the", "film", "was", "plot", "is", "good", "bad", "very", "great", "awful"]
EXTRA = [f"extra{i}" for i in range(20)]


def rows(n=12, extra=None):
    subj, verb, pos, neg = ("film", "plot"), ("was", "is"), ("good", "great"), ("bad", "awful")
    out = [dict(prompt=f"the {s} {v}", chosen=f" very {p}", rejected=f" {q}") for s in subj for v in verb for p in pos for q in neg]
    out = out[:n]
    if extra:  # {row: (field, word)}: that row's field gets a word only the larger tokenizer knows
        for i, (k, w) in extra.items(): out[i] = dict(out[i], **{k: out[i][k] + " " + w})
    return out


@pytest.fixture(scope="module")
def tok(): return word_tokenizer(WORDS)


@pytest.fixture(scope="module")
def big(): return word_tokenizer(WORDS + EXTRA)


def tiny_model(vocab=len(WORDS)):
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64))


def cfg(**k): return DPOConfig(**{**dict(batch_size=4, progress=False, device="cpu", learning_rate=1e-3), **k})


def quiet(fn, *a, **k):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*a, **k)


# ---------------------------------------------------------------- B13: every float setting finite

FLOAT_FIELDS = [f.name for f in fields(DPOConfig) if "float" in f.type]


def test_float_fields_listed():
    assert {"weight_decay", "router_aux_loss_coef", "beta", "label_smoothing", "max_grad_norm"} <= set(FLOAT_FIELDS)


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
@pytest.mark.parametrize("name", FLOAT_FIELDS)
def test_non_finite_float_refused(name, value):
    with pytest.raises(ConfigError, match=rf"DPOConfig\.{name}="): DPOConfig(**{name: value})


def test_finite_extremes_accepted():
    DPOConfig(weight_decay=1e6, router_aux_loss_coef=0.0); DPOConfig(router_aux_loss_coef=None, max_grad_norm=None)


# ---------------------------------------------------------------- B14: seed numpy takes

@pytest.mark.parametrize("seed", [-1, -(2**31), 2**32, 2**40])
def test_seed_out_of_range(seed):
    with pytest.raises(ConfigError, match=rf"DPOConfig\.seed={seed}: must be in \[0, 2\*\*32\)"): DPOConfig(seed=seed)


@pytest.mark.parametrize("seed", [0, 1, 2**32 - 1])
def test_seed_in_range(seed): assert DPOConfig(seed=seed).seed == seed


# ---------------------------------------------------------------- B15: device strings torch parses

@pytest.mark.parametrize("device", ["gpu", "GPU0", "cuda:abc", "cpu cuda"])
def test_bad_device(device):
    with pytest.raises(ConfigError) as e: DPOConfig(device=device)
    msg = str(e.value)
    assert f"DPOConfig.device={device!r}" in msg and all(d in msg for d in ("'cpu'", "'cuda'", "'cuda:1'", "'mps'"))


@pytest.mark.parametrize("device", [None, "cpu", "cuda", "cuda:1", "mps"])
def test_good_device_strings(device): assert DPOConfig(device=device).device == device


# ---------------------------------------------------------------- B16: the trainer checks its config again

@pytest.mark.parametrize("field,value", [("batch_size", 0), ("beta", math.nan), ("learning_rate", -1.0), ("seed", -1),
                                         ("device", "gpu"), ("grad_accum_steps", 0)])
def test_trainer_rechecks_mutated_config(tok, field, value):
    c = cfg(); setattr(c, field, value)
    with pytest.raises(ConfigError, match=rf"DPOConfig\.{field}="): DPOTrainer(tiny_model(), tok, rows(), c)


# ---------------------------------------------------------------- B6: pre-tokenized data longer than the config allows

LONG = [dict(prompt="the film was very very very good the plot", chosen=" very good", rejected=" bad")]


@pytest.mark.parametrize("data_limits,cfg_limits,message", [
    ((None, None), (64, 4), "longer than DPOConfig.max_prompt_length=4: pair_id 12 has a 10-token prompt"),
    ((512, 256), (64, 4), "longer than DPOConfig.max_prompt_length=4: pair_id 12"),
    ((None, None), (12, None), "1 pair(s) longer than DPOConfig.max_length=12: pair_id 12 has a 13-token prompt + response"),
])
def test_pretokenized_pairs_longer_than_the_config_refused(tok, data_limits, cfg_limits, message):
    d = quiet(tokenize_pairs, rows() + LONG, tok, max_length=data_limits[0], max_prompt_length=data_limits[1])
    with pytest.raises(ConfigError) as e:
        DPOTrainer(tiny_model(), tok, d, cfg(max_length=cfg_limits[0], max_prompt_length=cfg_limits[1]))
    assert message in str(e.value) and "load_preferences" in str(e.value) and "train data" in str(e.value), str(e.value)


def test_pretokenized_eval_longer_than_the_config_refused(tok):
    tr = quiet(tokenize_pairs, rows(8), tok, max_length=64, max_prompt_length=16)
    ev = quiet(tokenize_pairs, rows(12)[8:] + LONG, tok, max_length=None, max_prompt_length=None)
    with pytest.raises(ConfigError, match=r"the eval data holds 1 pair\(s\) longer than DPOConfig.max_prompt_length=8"):
        DPOTrainer(tiny_model(), tok, tr, cfg(max_length=64, max_prompt_length=8), eval_data=ev)


def test_pretokenized_pairs_within_the_limits_accepted(tok):
    d = quiet(tokenize_pairs, rows() + LONG, tok, max_length=None, max_prompt_length=None)
    assert len(quiet(DPOTrainer, tiny_model(), tok, d, cfg(max_length=64, max_prompt_length=16)).train_data) == 13
    tight = quiet(tokenize_pairs, rows() + LONG, tok, max_length=12, max_prompt_length=6)  # cut tighter than the config: fits
    assert len(quiet(DPOTrainer, tiny_model(), tok, tight, cfg(max_length=64, max_prompt_length=16)).train_data) == 13
    bare = Dataset.from_dict({k: d[k] for k in ("pair_id", "prompt_ids", "chosen_ids", "rejected_ids")})  # no report
    assert len(quiet(DPOTrainer, tiny_model(), tok, bare, cfg()).train_data) == 13
    assert len(quiet(DPOTrainer, tiny_model(), tok, d.select(range(12)), cfg(max_length=64, max_prompt_length=4)).train_data) == 12  # the long pair not in the subset


# ---------------------------------------------------------------- B7: token ids past the embedding table

@pytest.mark.parametrize("row,field", [(0, "prompt"), (5, "chosen"), (11, "rejected")])
def test_token_ids_from_larger_tokenizer(tok, big, row, field):
    d = quiet(tokenize_pairs, rows(extra={row: (field, "extra7")}), big)
    bad = WORDS.__len__() + 7
    with pytest.raises(PreferenceDataError) as e: quiet(DPOTrainer, tiny_model(), tok, d, cfg())
    msg = str(e.value)
    assert f"train data: pair_id {d['pair_id'][row]} has token id {bad} in {field}_ids" in msg
    assert f"{len(WORDS)} rows" in msg


def test_token_ids_eval_split_named(tok, big):
    tr = quiet(tokenize_pairs, rows(8), tok)
    ev = quiet(tokenize_pairs, rows(12, extra={10: ("chosen", "extra3")})[8:], big)
    with pytest.raises(PreferenceDataError, match=r"eval data: pair_id \d+ has token id 17 in chosen_ids"):
        quiet(DPOTrainer, tiny_model(), tok, tr, cfg(), eval_data=ev)


def test_token_ids_checked_in_this_selection_only(tok, big):
    d = quiet(tokenize_pairs, rows(extra={11: ("chosen", "extra1")}), big)
    sub = d.select(range(8))  # the Arrow table still holds row 11; this dataset does not
    assert len(quiet(DPOTrainer, tiny_model(), tok, sub, cfg()).train_data) == 8
    with pytest.raises(PreferenceDataError, match=r"pair_id \d+ has token id 15"):
        quiet(DPOTrainer, tiny_model(), tok, d.shuffle(seed=1), cfg())


# ---------------------------------------------------------------- D11: load refuses a changed batch plan

@pytest.fixture(scope="module")
def ckpt(tok, tmp_path_factory):
    t = quiet(DPOTrainer, tiny_model(), tok, rows(), cfg(max_steps=4, max_length=64, max_prompt_length=16))
    quiet(t.fit, 2)
    return t.save(tmp_path_factory.mktemp("ck") / "ck")


@pytest.mark.parametrize("field,given,saved", [("batch_size", 2, 4), ("grad_accum_steps", 2, 1), ("seed", 7, 0),
                                               ("group_by_length", True, False), ("max_length", 128, 64),
                                               ("max_prompt_length", 8, 16), ("ld_alpha", 0.5, None)])
def test_load_refuses_batch_plan_overrides(ckpt, field, given, saved):
    with pytest.raises(ConfigError) as e: DPOTrainer.load(ckpt, **{field: given})
    msg = str(e.value)
    assert f"{field}={given!r} differs from the saved run's {field}={saved!r}" in msg


@pytest.mark.parametrize("kw", [dict(max_steps=6, eval_every=1, progress=False), dict(batch_size=4, seed=0), dict(kl_every=0)])
def test_load_allows_other_overrides(ckpt, kw):
    t = quiet(DPOTrainer.load, ckpt, **kw)
    assert t.step == 2 and all(getattr(t.config, k) == v for k, v in kw.items())


# ---------------------------------------------------------------- B18: meta.json entries of the wrong type

@pytest.fixture(scope="module")
def saved_history(tmp_path_factory):
    h = synthetic_history(n_pairs=16, n_eval=4, n_steps=4, batch_size=4)
    h.meta.update(total_steps=4, data={"train": None, "eval": None},
                  left_out=dict(batch_size=4, pairs=16, per_epoch=0, epochs=1, left_out_by_epoch={}, never_trained=0,
                                never_trained_ids=[]))
    return h.save(tmp_path_factory.mktemp("h") / "h")


@pytest.mark.parametrize("key,value", [("beta", "abc"), ("beta", True), ("data", "garbage"), ("data", {"train": 5}),
                                       ("left_out", [1, 2]), ("total_steps", "10"), ("total_steps", 2.5),
                                       ("loss_type", 3), ("config", [1]), ("left_out", {"batch_size": "4"})])
def test_meta_wrong_types(saved_history, tmp_path, key, value):
    import shutil
    f = tmp_path / "h"; shutil.copytree(saved_history, f)
    info = json.loads((f / "meta.json").read_text()); info["meta"][key] = value
    (f / "meta.json").write_text(json.dumps(info))
    with pytest.raises(CheckpointError) as e: History.load(f)
    msg = str(e.value)
    assert str(f / "meta.json") in msg and f"meta[{key!r}]" in msg


def test_meta_good_types_load(saved_history):
    h = History.load(saved_history)
    assert h.meta["total_steps"] == 4 and h.beta == 0.1


# ---------------------------------------------------------------- the command line: one line, exit 2

def one_error(capsys, argv, cmd="train"):
    assert main(argv) == 2
    lines = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"dpo-nb {cmd}: error:"), lines
    return lines[0]


T = ["train", "--model", "m", "--data", "d"]


def test_cli_config_not_json_or_not_object(capsys, tmp_path):
    for name, text, what in (("bad.json", "{beta: 1", "not valid JSON"), ("cut.json", '{"beta": 0.1', "not valid JSON"),
                             ("list.json", "[1, 2]", "holds a JSON list"), ("str.json", '"beta"', "holds a JSON str")):
        (tmp_path / name).write_text(text)
        msg = one_error(capsys, T + ["--config", str(tmp_path / name)])
        assert str(tmp_path / name) in msg and what in msg


@pytest.mark.parametrize("f", ["1.5", "-0.1", "nan", "1", "inf"])
def test_cli_eval_fraction(capsys, f):
    assert f"--eval-fraction {float(f)}: must be a number with 0 <= f < 1" in one_error(capsys, T + ["--eval-fraction", f])


@pytest.mark.parametrize("r", ["0", "-4"])
def test_cli_lora_r(capsys, r):
    assert f"--lora-r {r}: must be an integer >= 1" in one_error(capsys, T + ["--lora", "--lora-r", r])


@pytest.mark.parametrize("name", ["bogus", "flash_attention2", "SDPA"])
def test_cli_attn_implementation(capsys, name):
    msg = one_error(capsys, T + ["--attn-implementation", name])
    assert f"attn_implementation={name!r}" in msg and all(k in msg for k in ATTN_IMPLEMENTATIONS)


def test_attn_problem_allows_known_and_hub_kernels():
    assert all(attn_problem(k) is None for k in (None, *ATTN_IMPLEMENTATIONS, "kernels-community/flash-attn"))
    assert "eager" in attn_problem("bogus")


@pytest.mark.parametrize("flag,value", [("--samples", "0"), ("--samples", "-5"), ("--steps", "0"), ("--steps", "-1"),
                                        ("--batch-size", "0")])
def test_cli_demo_counts(capsys, flag, value):
    assert f"{flag} {value}: must be an integer >= 1" in one_error(capsys, ["demo", flag, value], "demo")


@pytest.mark.parametrize("cmd", ["train", "demo"])
def test_cli_out_is_a_file(capsys, tmp_path, cmd):
    (tmp_path / "afile").write_text("x")
    argv = T if cmd == "train" else ["demo"]
    for out in (tmp_path / "afile", tmp_path / "afile" / "sub"):
        msg = one_error(capsys, argv + ["--out", str(out)], cmd)
        assert f"{tmp_path / 'afile'} is a file, not a folder" in msg
