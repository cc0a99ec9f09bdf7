"Plots on full and partial histories; the HTML report, self-contained and drawn by a real browser."
import json, re, sys
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from dpo_nb.history import History, synthetic_history
from dpo_nb.plots import (plot_training_curves, plot_reward_distributions, plot_kl, plot_margin_change, plot_displacement,
                          plot_token_heatmap, plot_frontier, frontier_points, reward_quantiles, default_split)
from dpo_nb.report import write_report, report_from_dir, report_figures

CHROMIUM = Path("/usr/bin/chromium")
ALL_PLOTS = (plot_training_curves, plot_reward_distributions, plot_kl, plot_margin_change, plot_displacement,
             plot_token_heatmap, plot_frontier)


@pytest.fixture(scope="module")
def full():
    return synthetic_history(n_pairs=60, n_eval=20, n_steps=30, batch_size=6, eval_every=10, n_probe=2)


def _partial_histories():
    "Histories missing one kind of data each, and nearly empty ones"
    out = {"empty": History()}
    h = History(beta=0.1); h.log_step(1, loss=0.7); out["one step"] = h
    h = History(beta=0.1)
    h.log_pairs(1, "train", [0, 1], chosen_logps=[-5., -6], rejected_logps=[-5., -7], ref_chosen_logps=[-5., -6], ref_rejected_logps=[-5., -7])
    out["pairs once, no texts"] = h
    full = synthetic_history(n_pairs=20, n_eval=6, n_steps=10, batch_size=4, eval_every=5)
    no_kl_probe = History(full.meta)
    for r in full._steps: no_kl_probe.log_step(**r)
    p = full.pairs
    for (s, split), g in p[p.split != "probe"].groupby(["step", "split"]):
        no_kl_probe.log_pairs(s, split, g.pair_id.to_numpy(), **{c: g[c].to_numpy() for c in ("chosen_logps", "rejected_logps",
                                                                                              "ref_chosen_logps", "ref_rejected_logps")})
    out["no KL, probes, evals or texts"] = no_kl_probe
    h = History(beta=0.1)  # no beta-derived rewards: log-probs only, no reference
    h.log_pairs(0, "eval", [0, 1], chosen_logps=[-5., -6], rejected_logps=[-5., -7])
    h.log_pairs(2, "eval", [0, 1], chosen_logps=[-6., -6], rejected_logps=[-8., -7])
    out["no reference"] = h
    return out


# ---- plots on a full history ----

def test_training_curves(full):
    f = plot_training_curves(full)
    by = {t.name: t for t in f.data}
    for c in ("loss", "rewards/accuracies", "rewards/chosen", "rewards/rejected", "rewards/margins", "lr", "grad_norm"):
        assert list(by[c].y) == full.steps[c].tolist() and list(by[c].x) == full.steps.step.tolist()
    assert list(by["eval loss"].x) == full.evals.step.tolist()
    assert f.layout.yaxis.title.text == "loss (nats)" and f.layout.yaxis4.title.text == "r_chosen − r_rejected (nats)"
    assert f.layout.xaxis4.title.text == "optimizer step"
    assert "share of pairs with margin &gt; 0" in by["rewards/accuracies"].hovertemplate


def test_reward_distributions(full):
    f = plot_reward_distributions(full)
    q = reward_quantiles(full, "eval")
    by = {t.name: t for t in f.data}
    assert np.allclose(by["chosen median"].y, q[q.side == "chosen"].q50)
    assert np.allclose(by["rejected 5–95%"].y, q[q.side == "rejected"].q05)
    assert list(by["chosen median"].x) == [0, 10, 20, 30]
    assert sum(by["rejected latest"].y) == 20
    assert "β·(log π − log π_ref)" in f.layout.yaxis.title.text
    ft = plot_reward_distributions(full, "train", n_bins=5)
    assert len(ft.select_traces(selector=dict(name="chosen median")).__next__().x) == 5


def test_kl(full):
    f = plot_kl(full)
    assert [t.name for t in f.data] == ["sampled (nats per sequence)", "token_exact (nats per token)"]
    k = full.kl
    assert list(f.data[1].y) == k[k.method == "token_exact"].value.tolist()
    assert "held-out prompts" in f.data[0].hovertemplate and f.layout.yaxis2.title.text == "KL, token_exact (nats per token)"


def test_margin_change_and_displacement(full):
    mc = full.margin_change("eval")
    f = plot_margin_change(full)
    assert default_split(full) == "eval"
    disp = f.data[1]
    assert sorted(disp.x) == sorted(mc.margin_first[mc.displaced]) and sorted(disp.y) == sorted(mc.margin_latest[mc.displaced])
    assert len(f.data[0].x) + len(disp.x) == len(mc)
    assert f.data[2].name.startswith("y = x") and f.data[2].x[0] == f.data[2].y[0]
    cd = f.data[0].customdata[0]
    assert cd[1] == full.text(int(cd[0]), "eval")["prompt"][:120]  # hover carries the pair's text
    assert f.layout.xaxis.title.text == "margin at first scoring (nats)"
    g = plot_displacement(full)
    counts = g.layout.meta["quadrant_counts"]
    assert sum(counts.values()) == len(mc)
    assert counts["chosen ↓ rejected ↓"] == int(((mc.delta_chosen_logps <= 0) & (mc.delta_rejected_logps <= 0)).sum())
    texts = [a.text for a in g.layout.annotations]
    assert any(t.startswith(f"<b>chosen ↑ rejected ↓: {counts['chosen ↑ rejected ↓']}</b>") for t in texts)
    assert sorted(g.data[1].y) == sorted(mc.delta_rejected_logps[mc.displaced])
    assert g.layout.xaxis.title.text == "Δ log π(chosen | prompt) (nats)"


def test_token_heatmap(full):
    f = plot_token_heatmap(full, 1, wrap=8)
    t = full.token_frame(1)
    for i, side in enumerate(("chosen", "rejected")):
        s = t[t.side == side]
        z = np.asarray(f.data[i].z, dtype=float).ravel()
        assert np.allclose(z[:len(s)], s.log_ratio) and np.isnan(z[len(s):]).all()
        assert np.asarray(f.data[i].z).shape[1] == 8
        assert f.data[i].customdata[0][0][1] == s.token_id.iloc[0]
    assert f.layout.coloraxis.cmid == 0 and f.layout.coloraxis.colorscale[0][1].startswith("rgb")
    assert "log π_ref" in f.data[0].hovertemplate
    assert f.layout.meta["step"] == 30
    assert plot_token_heatmap(full, 1, step=10).layout.meta["step"] == 10


def test_frontier(full):
    other = synthetic_history(n_pairs=30, n_eval=8, n_steps=20, eval_every=5, seed=1)
    f = plot_frontier({"a": full, "b": other}, extra=pd.DataFrame({"label": ["best-of-8"], "kl": [1.0], "reward": [1.2]}))
    assert [t.name for t in f.data] == ["a", "b", "extra points", "frontier"]
    fp = frontier_points(other, "b")
    assert list(f.data[1].x) == fp.kl.tolist() and list(f.data[1].y) == fp.reward.tolist()
    assert list(f.data[2].text) == ["best-of-8"]
    assert f.layout.xaxis.title.text.startswith("KL(π ‖ π_ref) (nats")
    rows = pd.DataFrame({"run": ["x", "x", "y"], "kl": [0.1, 1.0, 0.5], "reward": [0.1, 0.9, 0.95]})
    g = plot_frontier(rows)
    assert list(g.data[-1].x) == [0.1, 0.5] and list(g.data[-1].y) == [0.1, 0.95]


@pytest.mark.parametrize("name", list(_partial_histories()))
@pytest.mark.parametrize("fn", ALL_PLOTS, ids=lambda f: f.__name__)
def test_partial_histories_never_crash(name, fn):
    h = _partial_histories()[name]
    f = fn(h)
    assert isinstance(f, go.Figure)
    if (f.layout.meta or {}).get("empty"):
        assert f.layout.annotations and len(f.layout.annotations[0].text) > 10  # says why


def test_partial_expectations():
    hs = _partial_histories()
    assert plot_kl(hs["no KL, probes, evals or texts"]).layout.meta["empty"]
    assert plot_token_heatmap(hs["no KL, probes, evals or texts"]).layout.meta["empty"]
    assert not (plot_margin_change(hs["no KL, probes, evals or texts"]).layout.meta or {}).get("empty")
    f = plot_training_curves(hs["one step"])
    assert [t.name for t in f.data] == ["loss"] and sum(a.text == "not logged" for a in f.layout.annotations) == 5
    assert plot_reward_distributions(hs["no reference"]).layout.meta["empty"]
    assert (plot_displacement(hs["no reference"]).layout.meta or {}).get("quadrant_counts")  # log-probs suffice
    assert "need reference" in plot_margin_change(hs["no reference"]).layout.meta["why"]


# ---- the report ----

@pytest.fixture(scope="module")
def report(full, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    path = write_report(full, out, summary={"note": "pytest"}, title="Test <run>",
                        data_report=pd.DataFrame({"pair_id": [7], "reason": ["empty chosen"], "field": ["chosen"]}))
    return path, len(report_figures(full))


def test_report_self_contained(report):
    from plotly.offline import get_plotlyjs
    path, n = report
    text = path.read_text(encoding="utf-8")
    assert text.count(get_plotlyjs()[:5000]) == 1          # plotly.js inlined exactly once
    assert not re.search(r"<script[^>]*\bsrc\s*=", text)    # no external scripts at all
    assert not re.search(r"<link[^>]*href\s*=\s*[\"']https?:", text)
    assert text.count('class="plotly-graph-div"') == n == 8
    assert "Test &lt;run&gt;" in text and "empty chosen" in text and "Definitions" in text
    s = json.loads((path.parent / "summary.json").read_text())
    assert s["note"] == "pytest" and s["pairs/eval/pairs"] == 20
    assert (path.parent / "history" / "meta.json").exists()


def test_report_from_dir(report, tmp_path):
    path, n = report
    p = report_from_dir(path.parent, out_dir=tmp_path)
    text = p.read_text(encoding="utf-8")
    assert text.count('class="plotly-graph-div"') == n and "empty chosen" in text
    assert History.load(tmp_path / "history").summary() == History.load(path.parent / "history").summary()
    with pytest.raises(FileNotFoundError, match="meta.json"): report_from_dir(tmp_path / "nothing")


@pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is absent: apt-get install -y chromium (CI installs it)")
def test_report_draws_in_headless_chromium(report, tmp_path):
    pw = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed in the venv")
    path, n = report
    art = ROOT / "test-artifacts"; art.mkdir(exist_ok=True)
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"]
    errors, requests = [], []
    with pw.sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True,
                                                   args=args, viewport={"width": 1280, "height": 900})
        try:
            page = ctx.new_page()
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(path.as_uri(), wait_until="load")
            page.wait_for_function(
                "n => { const d = document.querySelectorAll('.js-plotly-plot');"
                " return d.length === n && [...d].every(x => x.querySelector('.main-svg')); }", arg=n, timeout=60_000)
            assert page.locator(".js-plotly-plot").count() == n
            assert page.locator(".js-plotly-plot .main-svg").count() >= n
            assert page.evaluate("[...document.querySelectorAll('.js-plotly-plot')].every(d => d._fullLayout)")
            page.screenshot(path=str(art / "report.png"), full_page=True)
        finally:
            ctx.close()
    assert not errors, errors
    assert all(u.startswith(("file:", "data:", "blob:", "about:")) for u in requests), [u for u in requests if not u.startswith("file:")]
    assert (art / "report.png").stat().st_size > 10_000
