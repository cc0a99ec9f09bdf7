"""The audit (04a_audit): its numbers against independent computations, what it finds in planted faults, and the CLI.

CHES is recomputed from the full model's `output_hidden_states` pair by pair; the reference log-probs against
`score_pairs`; the step-0 pulls against 02_loss; duplicates, swaps and near-identical responses against a planted set.
"""
import json, random, warnings

import numpy as np
import pandas as pd
import pytest
import torch

from dpo_nb.audit import AUDIT_COLUMNS, audit, ches, duplicate_columns, edit_stats, response_states
from dpo_nb.cli import main
from dpo_nb.data import PairCollator, tokenize_pairs
from dpo_nb.logps import score_pairs
from dpo_nb.loss import gradient_weights
from dpo_nb.toy import load_toy


@pytest.fixture(scope="module")
def toy():
    return load_toy()


def naive_ches(model, tokenizer, row):
    "CHES of one tokenized pair from the full model's last hidden states, in a plain loop"
    b = PairCollator(tokenizer)([row])
    sums, n = {}, {}
    with torch.no_grad():
        for side in ("chosen", "rejected"):
            out = model(input_ids=b[f"{side}_input_ids"], attention_mask=b[f"{side}_attention_mask"], output_hidden_states=True)
            h, m = out.hidden_states[-1][0].double(), b[f"{side}_response_mask"][0]
            sums[side] = sum(h[t - 1] for t in range(1, h.shape[0]) if m[t])   # the state at t-1 predicts token t
            n[side] = int(m.sum())
    dot, sq = float(sums["chosen"] @ sums["rejected"]), float(sums["chosen"] @ sums["chosen"])
    return dot - sq, dot / (n["chosen"] * n["rejected"]) - sq / n["chosen"] ** 2


@pytest.mark.parametrize("lean", [True, False])
def test_ches_and_logps_equal_the_plain_computation(toy, lean):
    model = toy.model
    data = toy.train.select(range(24))
    old = getattr(model, "_dpo_nb_lean_ok", None)
    model._dpo_nb_lean_ok = lean   # False: the full model's output_hidden_states path, as for a model whose head is special
    try:
        a = audit(data, model, toy.tokenizer, max_length=64, max_prompt_length=16, batch_size=5)
    finally:
        model._dpo_nb_lean_ok = old
    tok = tokenize_pairs(data, toy.tokenizer, max_length=64, max_prompt_length=16)
    for i in (0, 7, 23):
        c, cn = naive_ches(model, toy.tokenizer, tok[i])
        row = a.pairs.iloc[i]
        np.testing.assert_allclose([row.ches, row.ches_norm], [c, cn], rtol=1e-5, atol=1e-6)
    ref = score_pairs(model, toy.tokenizer, tok, batch_size=4)
    np.testing.assert_allclose(a.pairs["ref_chosen_logps"], ref["chosen_logps"], atol=1e-3)
    np.testing.assert_allclose(a.pairs["ref_rejected_logps"], ref["rejected_logps"], atol=1e-3)
    np.testing.assert_array_equal(a.pairs["ref_ranks_right"], ref["chosen_logps"] > ref["rejected_logps"])
    assert list(a.pairs.columns) == list(AUDIT_COLUMNS)


def test_a_model_whose_head_is_special_is_scored_from_its_logits(toy):
    "Where decoder + LM head do not reproduce the logits (01_logps' fallback), the audit's log-probs are still training's"
    from transformers import LlamaForCausalLM

    class Scaled(LlamaForCausalLM):   # a family that post-processes its logits in forward, unknown to lm_head_logits
        def forward(self, *a, **kw):
            out = super().forward(*a, **kw)
            out.logits = out.logits * 0.5
            return out

    m = Scaled(toy.model.config)
    m.load_state_dict(toy.model.state_dict())
    m.eval()
    data = toy.train.select(range(12))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # the fallback's one-line notice
        a = audit(data, m, toy.tokenizer, max_length=64, max_prompt_length=16, batch_size=5)
        ref = score_pairs(m, toy.tokenizer, data, max_length=64, max_prompt_length=16, batch_size=4)
    assert m._dpo_nb_lean_ok is False
    np.testing.assert_allclose(a.pairs["ref_chosen_logps"], ref["chosen_logps"], atol=1e-3)
    np.testing.assert_allclose(a.pairs["ref_rejected_logps"], ref["rejected_logps"], atol=1e-3)
    plain = audit(data, toy.model, toy.tokenizer, max_length=64, max_prompt_length=16, batch_size=5)
    assert np.abs(a.pairs["ref_chosen_logps"] - plain.pairs["ref_chosen_logps"]).max() > 0.5   # the scaling shows
    np.testing.assert_allclose(a.pairs["ches"], plain.pairs["ches"], rtol=1e-5)            # the states are the same model's


def test_ches_definition_on_known_vectors():
    hp, hm = torch.tensor([[3.0, 4.0], [1.0, 0.0]]), torch.tensor([[3.0, 4.0], [0.0, 2.0]])
    c, cn = ches(hp, hm, torch.tensor([1.0, 2.0]), torch.tensor([1.0, 4.0]))
    np.testing.assert_allclose(c.numpy(), [0.0, -1.0])                        # identical: 0; orthogonal: -|h+|^2
    np.testing.assert_allclose(cn.numpy(), [0.0, 0.0 / 8 - 1.0 / 4])


def test_step0_pulls_follow_the_loss(toy):
    data = toy.train.select(range(16))
    for lt in ("sigmoid", "simpo", "ipo"):
        a = audit(data, toy.model, toy.tokenizer, loss_type=lt, beta=0.2, max_length=64, max_prompt_length=16)
        t = lambda c: torch.tensor(a.pairs[c].to_numpy(), dtype=torch.float64)
        w = gradient_weights(t("ref_chosen_logps"), t("ref_rejected_logps"), t("ref_chosen_logps"), t("ref_rejected_logps"), beta=0.2,
                             loss_type=lt, chosen_tokens=t("chosen_tokens"), rejected_tokens=t("rejected_tokens"))
        np.testing.assert_allclose(a.pairs["step0_weight_chosen"], w[0].numpy(), rtol=1e-6)
        if lt == "sigmoid": np.testing.assert_allclose(a.pairs["step0_weight_chosen"], 0.5)
        if lt == "simpo": assert a.pairs["step0_weight_chosen"].std() > 1e-3   # SimPO looks at the policy alone: pairs differ


def test_edit_stats_and_duplicates():
    assert edit_stats([1, 2, 3, 4], [1, 9, 3, 4]) == dict(edit_distance=1, edit_share=0.25, shared_prefix=1, shared_suffix=2)
    d = duplicate_columns(["p", "p", "p", "P", "q"], ["a b", "c", "a b", "A, b!", "a b"], ["c", "a b", "c", "c", "c"], [0, 1, 2, 3, 4])
    assert d["duplicate_of"].tolist() == [-1, -1, 0, -1, -1]
    assert d["swapped_of"].tolist() == [-1, 0, 1, -1, -1]                 # (2 repeats 0, so it contradicts 1 too)
    assert d["near_duplicate_of"].tolist() == [-1, -1, -1, 0, -1]   # the exact repeat (2) is counted as exact only


def planted_pairs(toy, n=600, seed=0):
    "Toy pairs with three planted faults the audit should find: exact repeats, swapped labels, near-identical responses"
    clean = toy.train.select(range(n)).to_pandas()[["prompt", "chosen", "rejected"]]
    order = random.Random(seed).sample(range(n), n)
    planted = {"duplicate": order[:20], "swapped": order[20:40], "near_identical": order[40:100]}
    sources = order[100:140]
    faulty = clean.copy()
    for i, j in zip(planted["duplicate"], sources[:20]): faulty.loc[i] = clean.loc[j]
    for i, j in zip(planted["swapped"], sources[20:]): faulty.loc[i] = [clean.loc[j, "prompt"], clean.loc[j, "rejected"], clean.loc[j, "chosen"]]
    for i in planted["near_identical"]: faulty.loc[i, "rejected"] = " well ," + clean.loc[i, "chosen"]
    return faulty, planted, {"duplicate": sources[:20], "swapped": sources[20:]}


def precision_recall(found, truth):
    found, truth = set(map(int, found)), set(map(int, truth))
    hit = len(found & truth)
    return hit / max(len(found), 1), hit / len(truth)


def test_audit_finds_planted_faults_and_the_filter_removes_them(toy):
    faulty, planted, sources = planted_pairs(toy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = audit(faulty, toy.model, toy.tokenizer, max_length=64, max_prompt_length=16, batch_size=32)
    p = a.pairs
    for fault, col in (("duplicate", "duplicate_of"), ("swapped", "swapped_of")):
        flagged = np.r_[p.loc[p[col] >= 0, "pair_id"], p.loc[p[col] >= 0, col]]   # a repeat and the pair it repeats
        prec, rec = precision_recall(flagged, set(planted[fault]) | set(sources[fault]))
        assert prec == 1.0 and rec == 1.0, (fault, prec, rec)
    prec, rec = precision_recall(p.loc[p["edit_share"] < 0.25, "pair_id"], planted["near_identical"])
    assert prec >= 0.8 and rec >= 0.5, (prec, rec)
    s = a.summary()
    assert s.loc["exact duplicates", "value"] == 20 and s.loc["labels swapped", "value"] == 20
    kept, removed = a.suggest_filter(ches_top=0.0)
    assert len(kept) + len(removed) == len(faulty) and len(removed) == 20 + 40   # the repeats; both pairs of each swap
    assert set(removed["reason"]) == {"exact duplicate of an earlier pair", "labels swapped against an earlier pair",
                                      "labels swapped against a later pair"}
    kept2, removed2 = a.suggest_filter(ches_top=0.1, duplicates=False, swapped=False)
    top = p.nlargest(60, "ches")["pair_id"]
    assert set(removed2["pair_id"]) == set(top) and len(kept2) == len(faulty) - 60
    # with the repeats removed too, the CHES share is taken among the pairs left: 60 more, none of them a repeat
    kept3, removed3 = a.suggest_filter(ches_top=0.1)
    by_ches = removed3[removed3.reason.str.startswith("top 10%")]
    assert len(by_ches) == 60 and len(removed3) == 60 + 60 and not set(by_ches.pair_id) & set(removed.pair_id)
    rest = p[~p.pair_id.isin(removed.pair_id)]
    assert set(by_ches.pair_id) == set(rest.nlargest(60, "ches")["pair_id"])
    with pytest.raises(ValueError, match="ches_by"): a.suggest_filter(ches_by="nope")


def test_the_filter_never_keeps_a_pair_tokenization_dropped(toy):
    rows = [dict(r) for r in toy.train.select(range(8))]
    rows[2]["rejected"] = rows[2]["chosen"] + " and more words past the limit " * 8   # the same as chosen once truncated
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = audit(rows, toy.model, toy.tokenizer, max_length=24, max_prompt_length=8)
        kept, removed = a.suggest_filter()
    dropped = set(a.report.dropped_ids)
    assert dropped and not dropped & set(a.pairs["pair_id"])
    assert not dropped & set(kept["pair_id"]) and dropped <= set(removed["pair_id"])
    assert len(kept) + len(removed) == len(rows)
    assert set(removed.loc[removed["pair_id"].isin(dropped), "reason"]) == {"dropped by tokenization (see the data report)"}


def test_dropped_rows_are_counted_and_flags_carried(toy):
    rows = [dict(r) for r in toy.train.select(range(10))]
    rows[3]["chosen"] = "   "            # an empty response: dropped by the loader, with its reason
    rows[5] = dict(rows[4])              # a repeat: flagged by the data report
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = audit(rows, toy.model, toy.tokenizer, max_length=64, max_prompt_length=16)
    assert len(a.pairs) == 9 and 3 not in set(a.pairs["pair_id"])
    assert a.summary().loc["pairs dropped before scoring", "value"] == 1
    assert "duplicate" in a.pairs.set_index("pair_id").loc[5, "data_flags"]


@pytest.fixture(scope="module")
def local(tmp_path_factory, toy):
    d = tmp_path_factory.mktemp("audit_cli")
    toy.model.save_pretrained(d / "sft"); toy.tokenizer.save_pretrained(d / "sft")
    toy.train.select(range(40)).to_json(d / "pairs.jsonl")
    return d


def test_dpo_nb_audit_writes_html_and_parquet(local, tmp_path, capsys):
    rc = main(["audit", "--model", str(local / "sft"), "--data", str(local / "pairs.jsonl"), "--out", str(tmp_path / "a"),
               "--max-length", "64", "--max-prompt-length", "16", "--batch-size", "8"])
    assert rc == 0
    t = pd.read_parquet(tmp_path / "a" / "audit.parquet")
    assert len(t) == 40 and list(t.columns) == list(AUDIT_COLUMNS)
    page = (tmp_path / "a" / "audit.html").read_text()
    assert "reference ranking accuracy" in page and "highest CHES" in page and "audit.html" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["--data", "{local}/missing.jsonl"], "missing.jsonl"),
    (["--model", "./no_such_model"], "no such folder"),
])
def test_dpo_nb_audit_user_errors_are_one_line(local, tmp_path, capsys, argv, message):
    args = {"--model": str(local / "sft"), "--data": str(local / "pairs.jsonl")}
    for k, v in zip(argv[::2], argv[1::2]): args[k] = v.format(local=local)
    rc = main(["audit", *[x for kv in args.items() for x in kv], "--out", str(tmp_path / "a")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and message in err[0] and err[0].startswith("dpo-nb audit: error:")


def test_ches_ranks_displacement_above_shuffles_on_the_toy(toy):
    """The validation of 04a_audit, smaller: CHES before training against the chosen log-prob's fall after one epoch.
    Above shuffles, and no better than the length gap between the responses (04a_audit: CHES follows the lengths here)."""
    import copy
    from dpo_nb.train import DPOConfig, DPOTrainer
    pairs = toy.train.select(range(2000, 2256))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = audit(pairs, toy.model, toy.tokenizer, max_length=64, max_prompt_length=16, batch_size=32)
        cfg = DPOConfig(beta=0.5, learning_rate=3e-4, batch_size=32, epochs=1, warmup_ratio=0.05, max_length=64, max_prompt_length=16,
                        device="cpu", progress=False, probe_pairs=0, kl_prompts=2, kl_max_new_tokens=4)
        ref = copy.deepcopy(toy.model)
        t = DPOTrainer(copy.deepcopy(toy.model).requires_grad_(True), toy.tokenizer, pairs, ref_model=ref, config=cfg)
        t.fit()
    after = score_pairs(t.model, toy.tokenizer, pairs, max_length=64, max_prompt_length=16, batch_size=32)
    fall = a.pairs["ref_chosen_logps"].to_numpy() - after["chosen_logps"].to_numpy()
    rank = lambda x: pd.Series(np.asarray(x)).rank().to_numpy()
    rho = np.corrcoef(rank(a.pairs["ches"]), rank(fall))[0, 1]
    rng = np.random.default_rng(0)
    null = np.array([np.corrcoef(rng.permutation(rank(a.pairs["ches"])), rank(fall))[0, 1] for _ in range(500)])
    assert rho > null.mean() + 3 * null.std(), (rho, null.mean(), null.std())
    gap = (a.pairs["rejected_tokens"] - a.pairs["chosen_tokens"]).to_numpy()
    assert np.corrcoef(rank(a.pairs["ches"]), rank(gap))[0, 1] > 0.8          # CHES follows the length gap
    assert np.corrcoef(rank(gap), rank(fall))[0, 1] > rho - 2 * null.std()     # which explains as much of the fall


def test_tokenized_input_and_the_loss_settings(toy):
    rows = toy.train.select(range(24))
    tok = tokenize_pairs(rows, toy.tokenizer, max_length=64, max_prompt_length=16)
    a = audit(rows, toy.model, toy.tokenizer, max_length=64, max_prompt_length=16)
    b = audit(tok, toy.model, toy.tokenizer, max_length=64, max_prompt_length=16)  # tokenize_pairs output, taken as it is
    pd.testing.assert_frame_equal(a.pairs, b.pairs)
    kept, removed = b.suggest_filter()
    assert len(kept) == 24 and "chosen_ids" in kept.column_names   # the filter selects from what was given
    with pytest.raises(ValueError, match="lack column"): audit(tok.remove_columns(["prompt_text"]), toy.model, toy.tokenizer)
    # the loss's other settings reach the step-0 pulls: conservative DPO's at margin 0 are (1 - 2 eps) / 2
    c = audit(tok, toy.model, toy.tokenizer, loss_kwargs={"label_smoothing": 0.2})
    np.testing.assert_allclose(c.pairs["step0_weight_chosen"], 0.3, atol=1e-6)
    np.testing.assert_allclose(a.pairs["step0_weight_chosen"], 0.5, atol=1e-6)
    assert c.settings["label_smoothing"] == 0.2
