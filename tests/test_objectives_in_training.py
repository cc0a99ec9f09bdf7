"""WPO's weights and the batch-level losses in a training run: what is recorded per pair, and that the what-if replay of a
run reproduces each recorded loss (WPO's recorded weights, the NLL term and AOT's sort over each recorded micro-batch)."""
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import vs_trl  # noqa: E402

from dpo_nb.data import PairCollator
from dpo_nb.logps import response_logps
from dpo_nb.loss import dpo_loss, wpo_pair_weights
from dpo_nb.train import ConfigError, DPOConfig, DPOTrainer
from dpo_nb.widgets import WhatIf, replay_losses


def model():
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                        num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0, bos_token_id=1, eos_token_id=2))


def trainer(steps=3, held_out=8, **cfg):
    tok, _, data, _ = vs_trl.setup(dict(vocab=256, prompt=16, response=12), 4, 7)
    split = data.train_test_split(test_size=held_out, shuffle=False)
    c = DPOConfig(**{**dict(batch_size=4, max_steps=steps, learning_rate=1e-3, device="cpu", progress=False, max_length=None,
                            max_prompt_length=None, ref_cache=False), **cfg})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return DPOTrainer(model(), tok, split["train"], c, eval_data=split["test"])


def loss_args(rows, **kw):
    t = lambda c: torch.tensor(rows[c].to_numpy(float), dtype=torch.float64)
    return (t("chosen_logps"), t("rejected_logps"), t("ref_chosen_logps"), t("ref_rejected_logps")), kw


def test_wpo_weights_are_recorded_applied_and_replayed():
    t = trainer(use_weighting=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t.fit()
    p = t.history.pairs
    for split in ("train", "eval"):
        rows = p[p["split"] == split]
        w = rows["wpo_weight"].to_numpy()
        assert np.isfinite(w).all() and (w > 0).all() and w.std() > 0
        plain = dpo_loss(*loss_args(rows)[0], 0.1)[0].numpy()
        np.testing.assert_allclose(rows["loss"].to_numpy(), plain * w, rtol=1e-5)   # each pair's loss, times its weight
        again = replay_losses(rows, beta=0.1, use_weighting=True)                   # the replay reproduces it from the record
        np.testing.assert_allclose(again["loss"].to_numpy(), rows["loss"].to_numpy(), rtol=1e-5)
    # the eval weights are the final policy's, from its own per-token log-probs and log Σ p²
    last = p[(p["split"] == "eval") & (p["step"] == p["step"].max())]
    batch = PairCollator(t.tokenizer)([t.eval_data[i] for i in range(len(t.eval_data))])
    with torch.no_grad():
        want = wpo_pair_weights(response_logps(t.model.eval(), batch, sum_sq=True)).numpy()
    np.testing.assert_allclose(last["wpo_weight"].to_numpy(), want, rtol=1e-4)
    # a replay asking for weights the scorings do not have says so
    with pytest.raises(ValueError, match="use_weighting .* these scorings have none"):
        replay_losses(p.drop(columns="wpo_weight"), beta=0.1, use_weighting=True)
    w = WhatIf(t, split="eval")  # the what-if view replays the run's own settings, weights included
    assert w.settings["use_weighting"] is True
    np.testing.assert_allclose(w.replayed["loss"].to_numpy(), w.replayed["loss_run"].to_numpy(), rtol=1e-6)
    assert "use_weighting" not in WhatIf(t, split="eval", loss_type="aot").settings  # (AOT sorts pairs: no weights)


def test_wpo_is_refused_with_aot_and_ported_from_trl():
    for lt in ("aot", "aot_unpaired", ["sigmoid", "aot"]):
        with pytest.raises(ConfigError, match="use_weighting=True with loss_type"):
            DPOConfig(loss_type=lt, use_weighting=True)
    assert DPOConfig.from_trl(dict(use_weighting=True)).use_weighting is True


@pytest.mark.parametrize("loss_type", [["sigmoid", "sft"], "aot", "orpo"])
def test_batch_level_losses_are_replayed_over_each_recorded_micro_batch(loss_type):
    # 16 training pairs, 8 a step: step 3 starts the second epoch, so the latest scorings come from several steps' batches
    t = trainer(steps=3, held_out=16, loss_type=loss_type, grad_accum_steps=2, learning_rate=2e-2, lr_schedule="constant",
                warmup_ratio=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(3): t.train_step()
    p = t.history.pairs
    p = p[p["split"] == "train"]
    assert sorted(set(p["loss_batch"])) == [0, 1]  # two micro-batches of 4 per step
    counts = t_counts(t)
    got = replay_losses(p, beta=0.1, loss_type=loss_type, token_counts=counts)
    np.testing.assert_allclose(got["loss"].to_numpy(), p["loss"].to_numpy(), rtol=1e-5, atol=1e-7)
    # scored as one batch of 8 (what the replay did before it knew the micro-batches), the losses are other losses
    late = p[p["step"] > 1]  # (at step 1 the policy is the reference: every AOT margin is 0, sorted or not)
    one = replay_losses(late.drop(columns="loss_batch"), beta=0.1, loss_type=loss_type, token_counts=counts)
    assert np.abs(one["loss"].to_numpy() - late["loss"].to_numpy()).max() > 1e-4
    # the what-if view's latest scorings: each replayed with its batch-mates of that step, so each is the loss it trained with
    latest = t.history.latest("train")
    assert latest["step"].nunique() > 1 and len(latest) < len(p)
    w = WhatIf(t, split="train").replayed.merge(latest[["pair_id", "loss"]].rename(columns={"loss": "recorded"}), on="pair_id")
    assert len(w) == len(latest)
    np.testing.assert_allclose(w["loss"].to_numpy(), w["recorded"].to_numpy(), rtol=1e-5, atol=1e-7)


def t_counts(t):
    import pandas as pd
    d = t.train_data
    return pd.DataFrame(dict(pair_id=d["pair_id"], chosen_tokens=[len(x) for x in d["chosen_ids"]],
                             rejected_tokens=[len(x) for x in d["rejected_ids"]]))


def test_replay_keeps_a_pair_trained_twice_in_one_step_apart():
    # 22 pairs, 4 a micro-batch, 2 micro-batches a step: 5 batches an epoch, so step 3 ends one epoch and starts the next, and a
    # pair can be in both of its micro-batches
    t = trainer(steps=4, held_out=10, loss_type=["sigmoid", "sft"], use_weighting=True, grad_accum_steps=2, learning_rate=2e-2,
                lr_schedule="constant", warmup_ratio=0.0)
    assert len(t.train_data) == 22
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(4): t.train_step()
    p = t.history.pairs
    p = p[p["split"] == "train"]
    counts = t_counts(t)
    for step in (-1, 3):
        w = WhatIf(t, split="train")
        w.step_w.value = step
        rows = t.history.latest("train") if step == -1 else p[p["step"] == step]
        got = w.replayed.merge(rows[["pair_id", "step", "loss_batch", "loss"]].rename(columns={"loss": "recorded"}),
                               on=["pair_id", "step", "loss_batch"])
        assert len(w.replayed) == len(rows) == len(got)   # one row per scoring: none lost, none doubled
        np.testing.assert_allclose(got["loss"].to_numpy(), got["recorded"].to_numpy(), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(got["loss"].to_numpy(), got["loss_run"].to_numpy(), rtol=1e-6)
    assert p.groupby("step")["pair_id"].apply(lambda s: s.duplicated().any()).any()  # (the case is there: a pair twice in a step)


def test_a_history_without_loss_batches_is_replayed_by_step_and_says_so():
    t = trainer(steps=2, loss_type=["sigmoid", "sft"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(2): t.train_step()
    t.history._pairs = [{k: v for k, v in ch.items() if k != "loss_batch"} for ch in t.history._pairs]  # as saved before loss_batch
    t.history._touch("pairs")
    w = WhatIf(t, split="train")
    assert "predates loss batches" in w.html["replay_summary"]
    np.testing.assert_allclose(w.replayed["loss"].to_numpy(), w.replayed["loss_run"].to_numpy(), rtol=1e-6)


@pytest.mark.parametrize("settings", [dict(loss_type="hinge"), dict(loss_type="sigmoid", label_smoothing=0.2),
                                      dict(loss_type="dpop", dpop_lambda=5.0), dict(loss_type=["sigmoid", "sft"], use_weighting=True),
                                      dict(loss_type="ipo")])
def test_the_recorded_gradient_weight_is_the_runs_own_losss(settings):
    t = trainer(steps=3, learning_rate=5e-2, lr_schedule="constant", warmup_ratio=0.0, **settings)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t.fit()
    p, counts = t.history.pairs, t_counts(t)
    counts = pd.concat([counts, eval_counts(t)])
    for split in ("train", "eval"):
        rows = p[p["split"] == split]
        again = replay_losses(rows, beta=0.1, token_counts=counts, **settings)  # autograd on the recorded log-probs, independently
        for side in ("chosen", "rejected"):
            np.testing.assert_allclose(rows[f"weight_{side}"].to_numpy(), again[f"weight_{side}"].to_numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(rows["grad_weight"], (rows["weight_chosen"] + rows["weight_rejected"]) / 2)
    m = p["margin"].to_numpy()
    if settings["loss_type"] == "hinge":
        np.testing.assert_array_equal(p["weight_chosen"].to_numpy(), (m < 1).astype(float))
    if settings.get("label_smoothing"):  # cDPO: σ(-m) - ε, negative once a pair is past the loss's optimum
        np.testing.assert_allclose(p["weight_chosen"].to_numpy(), 1 / (1 + np.exp(m)) - 0.2, atol=1e-6)
    if settings["loss_type"] != "sigmoid" or settings.get("label_smoothing"):  # (the sigmoid's σ(-m) would be wrong here)
        assert np.abs(p["grad_weight"].to_numpy() - 1 / (1 + np.exp(m))).max() > 1e-3


def eval_counts(t):
    import pandas as pd
    d = t.eval_data
    return pd.DataFrame(dict(pair_id=d["pair_id"], chosen_tokens=[len(x) for x in d["chosen_ids"]],
                             rejected_tokens=[len(x) for x in d["rejected_ids"]]))


def test_pulls_beyond_dpos_scale_are_drawn_and_ranked_by_size():
    from dpo_nb.widgets import plot_pair_trajectory, rank_pairs
    t = trainer(steps=3, learning_rate=5e-2, lr_schedule="constant", warmup_ratio=0.0, loss_type="dpop", dpop_lambda=20.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t.fit()
    lat = t.history.latest("eval")
    assert lat["grad_weight"].max() > 1.5  # DPOP pulls a chosen side below the reference 1 + λ times harder
    top = lat.iloc[lat["grad_weight"].abs().argmax()]
    lo, hi = plot_pair_trajectory(t.history, int(top["pair_id"]), "eval").layout.yaxis2.range
    assert lo <= 0 and hi >= top["grad_weight"]  # the whole pull is on the axis
    ranked = rank_pairs(t.history, "eval", "highest gradient weight")
    np.testing.assert_allclose(ranked["grad_weight_latest"].abs().to_numpy(), np.sort(lat["grad_weight"].abs().to_numpy())[::-1][:len(ranked)])
