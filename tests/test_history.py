"History: logging, derived columns, displacement, save/load, scale."
import json, subprocess, sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dpo_nb.history import History, TABLES, PAIR_COLUMNS, STEP_COLUMNS, synthetic_history


def _full_history():
    h = synthetic_history(n_pairs=40, n_eval=12, n_steps=20, batch_size=4, eval_every=5)
    h.meta.update(config={"lr": 5e-6, "schedule": "linear", "layers": [2, 4]}, note="round trip")
    h.log_step(21, loss=0.1, custom_metric=3)  # an extra column
    return h


def test_round_trip_all_tables_and_meta(tmp_path):
    h = _full_history()
    h.save(tmp_path / "h")
    assert sorted(p.name for p in (tmp_path / "h").iterdir()) == sorted([f"{t}.parquet" for t in TABLES] + ["meta.json"])
    h2 = History.load(tmp_path / "h")
    for name in TABLES:
        a, b = getattr(h, name), getattr(h2, name)
        assert len(a) > 0, name
        pd.testing.assert_frame_equal(a, b, check_exact=True, obj=name)
    assert h2.meta == h.meta
    assert h2.summary() == h.summary()
    pd.testing.assert_frame_equal(h2.margin_change(), h.margin_change())
    # a reloaded history keeps logging, and saves again identically
    h2.log_step(22, loss=0.05)
    assert h2.steps.step.iloc[-1] == 22
    h.save(tmp_path / "again")
    pd.testing.assert_frame_equal(History.load(tmp_path / "again").pairs, h.pairs)


def test_round_trip_empty_history(tmp_path):
    h = History(beta=0.2)
    h.save(tmp_path)
    h2 = History.load(tmp_path)
    for name in TABLES: pd.testing.assert_frame_equal(getattr(h, name), getattr(h2, name), obj=name)
    assert h2.meta == {"beta": 0.2}
    assert list(h2.pairs.columns) == list(PAIR_COLUMNS)
    assert list(h2.steps.columns) == list(STEP_COLUMNS)


def test_load_needs_no_torch(tmp_path):
    synthetic_history(n_pairs=16, n_eval=4, n_steps=6, batch_size=4, eval_every=3).save(tmp_path)
    code = ("import sys; from dpo_nb.history import History; h = History.load(sys.argv[1]); "
            "assert len(h.pairs) and len(h.tokens); h.displaced(); h.summary(); "
            "assert 'torch' not in sys.modules, 'torch was imported'; print('ok')")
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, cwd=root,
                       env={"PYTHONPATH": str(root), "PATH": ""})
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_load_missing_dir_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="meta.json"): History.load(tmp_path)


def test_displaced_constructed_case():
    h = History(beta=0.5)
    ref_c, ref_r = np.array([-10., -10, -10, -10, -10]), np.array([-12., -12, -12, -12, -12])
    h.log_pairs(0, "eval", np.arange(5), chosen_logps=ref_c, rejected_logps=ref_r, ref_chosen_logps=ref_c, ref_rejected_logps=ref_r)
    # pair 0: chosen up, rejected down (healthy); 1: both down, rejected more (displaced);
    # 2: chosen down, rejected up (margin fell: not displaced); 3: chosen down a little, rejected down less (margin fell);
    # 4: unchanged
    c = ref_c + np.array([1.0, -2.0, -1.0, -0.5, 0.0])
    r = ref_r + np.array([-1.0, -6.0, 1.0, -0.1, 0.0])
    h.log_pairs(3, "eval", np.arange(5), chosen_logps=c, rejected_logps=r, ref_chosen_logps=ref_c, ref_rejected_logps=ref_r)
    h.log_pairs(4, "train", [1], chosen_logps=[-20.], rejected_logps=[-40.], ref_chosen_logps=[-10.], ref_rejected_logps=[-12.])
    d = h.displaced("eval")
    assert d.pair_id.tolist() == [1]
    row = d.iloc[0]
    assert (row.step_first, row.step_latest, row.n_scored) == (0, 3, 2)
    assert row.chosen_logps_first == -10 and row.chosen_logps_latest == -12
    assert row.delta_chosen_logps == -2 and row.delta_rejected_logps == -6
    assert np.isclose(row.margin_latest, 0.5 * (-2) - 0.5 * (-6)) and row.margin_first == 0
    assert np.isclose(row.delta_margin, 2.0)
    mc = h.margin_change("eval")
    assert mc.displaced.tolist() == [False, True, False, False, False]
    assert np.allclose(mc.delta_margin, 0.5 * (np.array([1., -2, -1, -0.5, 0]) - np.array([-1., -6, 1, -0.1, 0])))
    # the train scoring of pair 1 is its own (split, pair): scored once, never flagged
    assert h.displaced("train").empty
    assert h.displaced().pair_id.tolist() == [1] and h.displaced().split.tolist() == ["eval"]
    assert h.displaced("eval", tol=2.5).empty  # delta chosen -2 is within tolerance


def test_derived_columns_and_tensor_input():
    torch = pytest.importorskip("torch")
    h = History(beta=0.1)
    h.log_pairs(torch.tensor(2), "train", torch.tensor([5, 6]),
                chosen_logps=torch.tensor([-4.0, -5.0], dtype=torch.bfloat16, requires_grad=True) * 1,
                rejected_logps=torch.tensor([-6.0, -5.0]), ref_chosen_logps=np.array([-5.0, -5.0]), ref_rejected_logps=[-5.0, -5.0],
                chosen_tokens=torch.tensor([3, 4]))
    p = h.pairs
    assert p.pair_id.tolist() == [5, 6] and p.step.tolist() == [2, 2]
    assert np.allclose(p.chosen_reward, [0.1, 0.0]) and np.allclose(p.rejected_reward, [-0.1, 0.0])
    assert np.allclose(p.margin, [0.2, 0.0])
    assert np.allclose(p.grad_weight, 1 / (1 + np.exp([0.2, 0.0])))
    assert p.chosen_tokens.tolist() == [3, 4]
    h.log_step(1, loss=torch.tensor(0.5), lr=1e-6)
    assert h.steps.loss.tolist() == [0.5]


def test_bad_input_names_the_field():
    h = History()
    with pytest.raises(ValueError, match=r"step=3, split='eval'.*'margin' has shape \(2,\)"):
        h.log_pairs(3, "eval", [1, 2, 3], margin=[0.1, 0.2])
    with pytest.raises(ValueError, match="not a KL estimate"): h.log_kl(1, "preference_logratio", 0.3, 10)
    with pytest.raises(ValueError, match="record 1 field 'side'"):
        h.log_tokens([{"step": 1, "pair_id": 0, "side": "chosen", "position": 0, "logp": -1.0},
                      {"step": 1, "pair_id": 0, "side": "reply", "position": 1, "logp": -1.0}])
    assert len(h.pairs) == 0 and len(h.kl) == 0 and len(h.tokens) == 0


def test_cache_invalidated_on_write():
    h = History(beta=0.1)
    h.log_pairs(0, "eval", [0], chosen_logps=[-1.], rejected_logps=[-1.], ref_chosen_logps=[-1.], ref_rejected_logps=[-1.])
    assert len(h.pairs) == 1 and len(h.latest("eval")) == 1 and h.latest("eval").step.tolist() == [0]
    h.log_pairs(5, "eval", [0, 1], chosen_logps=[-2., -1], rejected_logps=[-4., -1], ref_chosen_logps=[-1., -1], ref_rejected_logps=[-1., -1])
    assert len(h.pairs) == 3
    assert h.latest("eval").step.tolist() == [5, 5]
    assert h.pair_trajectory(0).step.tolist() == [0, 5]
    assert h.displaced("eval").pair_id.tolist() == [0]
    h.log_kl(5, "sampled", 0.1, 8)
    assert h.kl.value.tolist() == [0.1]
    h.log_kl(6, "token_exact", 0.01, 80)
    assert h.kl.method.tolist() == ["sampled", "token_exact"]


def test_ten_thousand_pairs_twenty_steps():
    rng = np.random.default_rng(0)
    n, steps, bs = 10_000, 20, 500
    h = History(beta=0.1)
    ref_c, ref_r = -rng.uniform(10, 50, n), -rng.uniform(10, 50, n)
    c, r = ref_c.copy(), ref_r.copy()
    for s in range(steps):
        for lo in range(0, n, bs):  # one call per batch, as the trainer does
            ids = np.arange(lo, lo + bs)
            h.log_pairs(s, "train", ids, chosen_logps=c[ids], rejected_logps=r[ids], ref_chosen_logps=ref_c[ids],
                        ref_rejected_logps=ref_r[ids], loss=rng.uniform(0, 1, bs))
        h.log_step(s + 1, loss=0.5)
        c += rng.normal(0, 0.3, n); r += rng.normal(-0.3, 0.3, n)
    p = h.pairs
    assert len(p) == n * steps
    assert p.pair_id.nunique() == n
    t = h.pair_trajectory(1234)
    assert t.step.tolist() == list(range(steps)) and (t.pair_id == 1234).all()
    assert len(h.latest("train")) == n and (h.latest("train").step == steps - 1).all()
    mc = h.margin_change("train")
    assert len(mc) == n and (mc.n_scored == steps).all()
    assert 0 < mc.displaced.sum() < n
    # a later write after a read: appended and indexed again
    h.log_pairs(steps, "eval", np.arange(n), chosen_logps=c, rejected_logps=r, ref_chosen_logps=ref_c, ref_rejected_logps=ref_r)
    assert len(h.pairs) == n * (steps + 1)
    assert h.pair_trajectory(9999).step.tolist() == list(range(steps + 1))
    assert len(h.pair_trajectory(9999, "eval")) == 1
    s = h.summary()
    assert s["pairs/train/pairs"] == n and s["pairs/train/scorings"] == n * steps
    json.dumps(s, allow_nan=False)


def test_synthetic_history_without_probe_pairs_and_empty_texts():
    import warnings
    from dpo_nb.history import History, synthetic_history
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no mean of an empty probe split
        h = synthetic_history(n_probe=0)
    assert h.probe_ids() == [] and "probe" not in set(h.pairs["split"]) and len(h.texts) == 248
    e = History(); e.add_texts([], split="train")
    assert len(e.texts) == 0
