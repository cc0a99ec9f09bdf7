"""KL estimates carry their standard error and per-sample values: computed as stated, saved and loaded, drawn as error bars
and written as ± in the dashboard and the report."""
import copy
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import vs_trl  # noqa: E402

from dpo_nb.history import History
from dpo_nb.plots import plot_kl
from dpo_nb.train import DPOConfig, DPOTrainer, _ratio_se, _se


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tok, _, data, _ = vs_trl.setup(dict(vocab=256, prompt=16, response=12), 4, 5)
    torch.manual_seed(0)
    m = LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                     num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0, bos_token_id=1, eos_token_id=2))
    cfg = DPOConfig(batch_size=4, max_steps=3, learning_rate=5e-2, lr_schedule="constant", warmup_ratio=0.0, device="cpu", progress=False,
                    max_length=None, max_prompt_length=None, kl_prompts=6, kl_max_new_tokens=8, kl_every=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = DPOTrainer(copy.deepcopy(m), tok, data, cfg, ref_model=copy.deepcopy(m))
        t.fit()
    return t


def test_each_estimate_has_its_standard_error_and_values(run):
    k = run.history.kl
    assert set(k["method"]) == {"sampled", "token_exact"} and len(k) >= 4
    for r in k.itertuples():
        assert len(r.values) == 6 and np.isfinite(r.se) and (r.se > 0 if r.step > 0 else r.se == 0 == r.value)  # (step 0: π = π_ref)
        if r.method == "sampled":  # the mean of the samples, and their std / sqrt(n)
            assert abs(np.mean(r.values) - r.value) < 1e-6 and abs(np.std(r.values, ddof=1) / np.sqrt(6) - r.se) < 1e-9
    late = k[(k["method"] == "sampled") & (k["step"] == k["step"].max())].iloc[0]
    assert late.value > 2 * late.se  # (after 3 steps at this learning rate the policy has moved, beyond the noise)


def test_the_ratio_standard_error():
    rng = np.random.default_rng(0)
    x = rng.gamma(2.0, 0.01, 40)
    assert abs(_ratio_se(x * 12, np.full(40, 12)) - _se(x)) < 1e-12  # equal lengths: the plain standard error of the means
    s, n = rng.gamma(2.0, 0.1, 400), rng.integers(5, 40, 400).astype(float)
    boot = [(s[i].sum() / n[i].sum()) for i in (rng.integers(0, 400, 400) for _ in range(4000))]
    assert abs(_ratio_se(s, n) / np.std(boot) - 1) < 0.1  # the delta method agrees with a bootstrap
    assert np.isnan(_ratio_se([0.1], [3])) and np.isnan(_se([0.1]))


def test_saved_loaded_plotted_and_shown(run, tmp_path):
    run.history.save(tmp_path / "h")
    back = History.load(tmp_path / "h").kl
    k = run.history.kl
    np.testing.assert_allclose(back["se"], k["se"])
    assert all(np.allclose(a, b) for a, b in zip(back["values"], k["values"]))
    fig = plot_kl(run.history)
    for tr in fig.data:
        method = tr.name.split(" ")[0]
        np.testing.assert_allclose(tr.error_y.array, k[k["method"] == method].sort_values("step")["se"].to_numpy())
        assert all("± " in c[2] for c in tr.customdata)
    s = run.history.summary()
    assert s["kl/sampled/se"] == pytest.approx(k[k["method"] == "sampled"]["se"].iloc[-1])
    from dpo_nb.widgets import TrainingDashboard
    assert "± " in TrainingDashboard(run.history, mode="static").html["status"]


def test_an_estimate_without_a_standard_error_draws_no_bar():
    h = History()
    h.log_kl(0, "sampled", 0.0, n=8)
    h.log_kl(5, "sampled", 0.3, n=8)
    assert h.kl["se"].isna().all() and plot_kl(h).data[0].error_y.array is None
