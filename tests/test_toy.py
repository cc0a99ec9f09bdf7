"Tests for dpo_nb.toy: the shipped toy model and pairs, the lexicon reward, sampling, and tools/make_toy.py."
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dpo_nb
from dpo_nb.toy import (REWARD_EXAMPLES, TOY_DIR, Toy, load_toy, mean_reward, pairs_from_samples, reward_terms,
                        sample_completions, toy_files, toy_prompts, toy_reward, words_of)

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")  # (conftest: the toy model on one thread; `toy` is there too)


@pytest.fixture(scope="module")
def pairs(toy):
    return {"train": toy.train.to_list(), "test": toy.test.to_list()}


# --- loading from package data -------------------------------------------------------------------------------

def test_assets_are_package_data():
    assert TOY_DIR == Path(dpo_nb.__file__).parent / "assets" / "toy"
    f = toy_files()
    for k in ("model", "train", "test", "meta"): assert f[k].exists(), f[k]
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (f["model"] / name).exists(), name
    total = sum(p.stat().st_size for p in TOY_DIR.rglob("*") if p.is_file())
    assert total < 5e6, f"toy assets are {total:,} bytes"


def test_load_toy(toy):
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM
    assert isinstance(toy, Toy) and isinstance(toy.model, LlamaForCausalLM)
    assert sum(p.numel() for p in toy.model.parameters()) < 2_000_000
    tok = toy.tokenizer
    assert (tok.pad_token, tok.bos_token, tok.eos_token, tok.unk_token) == ("<pad>", "<bos>", "<eos>", "<unk>")
    assert toy.model.config.eos_token_id == tok.eos_token_id and toy.model.config.pad_token_id == tok.pad_token_id
    assert toy.model.config.vocab_size == len(tok)
    assert toy.reward is toy_reward and toy.meta["seed"] == 0
    assert 2500 <= len(toy.train) <= 3500 and 300 <= len(toy.test) <= 500
    assert set(toy.train.column_names) == set(toy.test.column_names) == {"prompt", "chosen", "rejected"}
    # the plain transformers path works too
    m = AutoModelForCausalLM.from_pretrained(toy_files()["model"])
    t = AutoTokenizer.from_pretrained(toy_files()["model"])
    assert t("the movie was good")["input_ids"][0] == t.bos_token_id
    for (n, a), b in zip(m.state_dict().items(), toy.model.state_dict().values()): assert torch.equal(a, b), n


def test_load_toy_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="make_toy"): load_toy(tmp_path)


# --- tokenizer --------------------------------------------------------------------------------------------------

def test_tokenizer_round_trip_and_no_boundary_merges(toy, pairs):
    tok = toy.tokenizer
    rows = pairs["train"] + pairs["test"]
    prompts = [r["prompt"] for r in rows]
    resps = [r[k] for r in rows for k in ("chosen", "rejected")]
    assert all(r.startswith(" ") and not r.startswith("  ") and r == r.rstrip() for r in resps), "responses: one leading space"
    assert not any(tok.eos_token in r or tok.bos_token in r for r in resps), "no special-token text in the jsonl"
    p_ids = tok(prompts)["input_ids"]
    r_ids = tok(resps, add_special_tokens=False)["input_ids"]
    joint = tok([r["prompt"] + r[k] for r in rows for k in ("chosen", "rejected")])["input_ids"]
    n_pos = toy.model.config.max_position_embeddings
    for i, r in enumerate(rows):
        for j, k in enumerate(("chosen", "rejected")):
            apart, together = p_ids[i] + r_ids[2 * i + j], joint[2 * i + j]
            assert apart == together, (i, k, r)
            assert tok.unk_token_id not in together, (i, k, r)
            assert tok.decode(together, skip_special_tokens=True) == r["prompt"] + r[k], (i, k)
            assert len(together) + 1 <= n_pos, (i, k, len(together))  # + EOS fits the context


def test_tokenize_pairs_sees_no_merges(toy):
    "The data module's own boundary check agrees."
    data = pytest.importorskip("dpo_nb.data")
    ds = data.tokenize_pairs(toy.test, toy.tokenizer)
    assert len(ds) == len(toy.test) and not any(ds["boundary_merge"])
    assert all(ids[-1] == toy.tokenizer.eos_token_id and ids.count(toy.tokenizer.eos_token_id) == 1 for ids in ds["chosen_ids"])


# --- reward -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,reward", REWARD_EXAMPLES)
def test_reward_documented_examples(text, reward):
    assert toy_reward(text) == reward


def test_reward_negation():
    assert toy_reward("good") == 1.0 and toy_reward("not good") == -0.5
    assert toy_reward("bad") == -1.0 and toy_reward("not bad") == 0.5
    assert toy_reward("not great") == -1.0 and toy_reward("hardly terrible") == 1.0
    assert toy_reward("not really very good") == -0.5            # within three words
    assert toy_reward("not the movie i would call good") == 1.0  # out of reach
    assert toy_reward("not bad , good") == 1.5                   # punctuation ends the reach
    assert toy_reward("never good and never bad") == 0.0
    assert reward_terms("the plot was not that bad but the ending was dreadful .") == [("not:bad", 0.5), ("dreadful", -2.0)]
    assert words_of("Great!Fun") == ["great", "!", "fun"]
    assert mean_reward(["great", "awful", "good"]) == pytest.approx(1 / 3) and mean_reward([]) == 0.0


# --- pairs ------------------------------------------------------------------------------------------------------

def test_pairs_chosen_beats_rejected(pairs):
    for split, rows in pairs.items():
        for i, r in enumerate(rows):
            assert toy_reward(r["chosen"]) > toy_reward(r["rejected"]), (split, i, r)


def test_prompts_disjoint_and_from_openings(pairs):
    tr, te = {r["prompt"] for r in pairs["train"]}, {r["prompt"] for r in pairs["test"]}
    assert not tr & te
    assert tr | te <= set(toy_prompts())
    assert all(2 <= len(p.split()) <= 5 for p in tr | te)


def test_pairs_from_samples_rule():
    ps, n = pairs_from_samples("p", [" good .", " bad .", " fine .", " long .", " great", " awful", " x", ""],
                               ended=[True, True, True, True, True, False, True, True])
    assert ps == [dict(prompt="p", chosen=" good .", rejected=" bad .")]
    assert n == dict(kept=1, dropped_tie=1, dropped_no_eos=1, dropped_empty=1)


# --- sampling ---------------------------------------------------------------------------------------------------

def test_sample_completions(toy):
    prompts = sorted({r["prompt"] for r in toy.test.to_list()})[:64]
    a, ended = sample_completions(toy.model, toy.tokenizer, prompts, seed=3, return_ended=True)
    assert a == sample_completions(toy.model, toy.tokenizer, prompts, seed=3) and len(a) == len(prompts)  # seeded
    # left padding with the attention mask: a prompt's next-token distribution is the same alone or in a batch
    enc = toy.tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left")
    assert len(set(map(len, toy.tokenizer(prompts)["input_ids"]))) > 1
    with torch.no_grad():
        batched = toy.model(**enc).logits[:, -1]
        alone = torch.stack([toy.model(**toy.tokenizer(p, return_tensors="pt")).logits[0, -1] for p in prompts])
    assert torch.allclose(batched, alone, atol=1e-4)
    assert sum(ended) >= 0.95 * len(a)
    assert all(t.startswith(" ") for t in a if t)
    assert -1.5 < mean_reward(a) < 1.5  # the SFT model is mixed, not already positive
    assert not toy.model.training


# --- tools/make_toy.py ------------------------------------------------------------------------------------------

def _hashes(d):
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()}


def test_make_toy_deterministic(tmp_path):
    outs = []
    for k in range(2):
        out = tmp_path / f"run{k}"
        r = subprocess.run([sys.executable, str(ROOT / "tools" / "make_toy.py"), "--quick", "--seed", "1", "--out", str(out)],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-3000:]
        outs.append(_hashes(out))
    assert outs[0] == outs[1]
    assert {"model/model.safetensors", "model/tokenizer.json", "train.jsonl", "test.jsonl", "meta.json"} <= set(outs[0])
    meta = json.loads((tmp_path / "run0" / "meta.json").read_text())
    assert meta["seed"] == 1 and meta["generated_by"].endswith("--quick")
