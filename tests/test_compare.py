"""Comparing runs (06d_compare): the per-pair join against plain pandas, the moved / not-moved categories on runs
whose answer is planted, the overlaid curves against each run's own numbers, the RunComparison widget's selection
and static copy, and the comparison report (08_report)."""
import warnings

import numpy as np
import pandas as pd
import pytest
from plotly.callbacks import Points

from dpo_nb.compare import (CATEGORIES, Comparison, RunComparison, compare, pair_changes, plot_compare_curves,
                            plot_compare_frontier, plot_compare_pairs, plot_compare_trajectory)
from dpo_nb.history import History, synthetic_history
from dpo_nb.report import comparison_section_html, write_comparison_report
from dpo_nb.runs import Run


@pytest.fixture(scope="module")
def sweep():
    "Three synthetic runs; 20 steps of 6 over 80 training pairs: each run re-scores a different half of them"
    return {f"seed {s} β={b:g}": synthetic_history(n_pairs=80, n_eval=16, n_steps=20, batch_size=6, eval_every=5, seed=s, beta=b)
            for s, b in ((0, 0.1), (1, 0.1), (2, 0.5))}


def planted(beta, moves, n=8, steps=(0, 10), split="train", ids=None):
    "n pairs scored at `steps`; pair i's chosen log-prob ends `moves.get(i, 0)` nats above the reference's"
    h = History(beta=beta, loss_type="sigmoid")
    ids = np.arange(n) if ids is None else np.asarray(ids)
    rc, rr = -20.0 - ids, np.full(len(ids), -25.0)
    for k, s in enumerate(steps):
        up = np.array([moves.get(int(i), 0.0) for i in ids]) * k / (len(steps) - 1)
        h.log_pairs(s, split, ids, chosen_logps=rc + up, rejected_logps=rr, ref_chosen_logps=rc, ref_rejected_logps=rr)
    return h


# --- the join ----------------------------------------------------------------------------------------------------------

def _plain_join(hs: dict, split: str, since: str) -> pd.DataFrame:
    "The same join written out in plain pandas, from each History's tables (Δ since the reference: the latest value)"
    parts = []
    for name, h in hs.items():
        p = h.pairs[h.pairs.split == split].sort_values(["pair_id", "step"], kind="stable")
        first, last = p.groupby("pair_id").head(1).set_index("pair_id"), p.groupby("pair_id").tail(1).set_index("pair_id")
        lr = lambda d: (d.chosen_logps - d.ref_chosen_logps) - (d.rejected_logps - d.ref_rejected_logps)
        d = pd.DataFrame({"step_first": first.step, "step_latest": last.step, "margin_first": first.margin, "margin_latest": last.margin,
                          "delta_margin": last.margin - first.margin, "delta_logratio": lr(last) - lr(first)})
        if since == "reference":
            d["delta_margin"], d["delta_logratio"] = last.margin, lr(last)
            parts.append(d[d.step_latest > 0].add_suffix(f"|{name}"))
        else: parts.append(d[d.step_latest > d.step_first].add_suffix(f"|{name}"))
    out = parts[0]
    for d in parts[1:]: out = out.merge(d, left_index=True, right_index=True, how="inner")
    return out.sort_index()


@pytest.mark.parametrize("since", ["reference", "first"])
@pytest.mark.parametrize("split", ["train", "eval"])
def test_pair_join_equals_plain_pandas(sweep, split, since):
    c = compare(sweep, split=split, since=since)
    got, want = c.pair_table(), _plain_join(sweep, split, since)
    assert list(got.index) == list(want.index) and len(got) > 0
    for name in sweep:
        for f in ("step_first", "step_latest", "margin_first", "margin_latest", "delta_margin", "delta_logratio"):
            np.testing.assert_allclose(got[(name, f)].to_numpy(float), want[f"{f}|{name}"].to_numpy(float), rtol=1e-12, err_msg=f"{name} {f}")
    cov = c.coverage()
    for name, h in sweep.items():
        scored = set(h.pairs.pair_id[h.pairs.split == split])
        assert cov.loc[name, "left_out"] == len(scored - set(want.index))
        assert cov.loc[name, "measured"] == len(pair_changes(h, split, since)) and cov.loc[name, "mismatched"] == 0


def test_join_leaves_out_pairs_not_rescored_everywhere_and_says_so(sweep):
    c = compare(sweep, since="first")                      # train: each run re-scored a different subset
    n, cov = len(c.pair_table()), c.coverage()
    assert 0 < n < 80 and (cov["left_out"] > 0).all()
    note = c.coverage_note()
    assert note.startswith(f"{n} train pairs were scored at two or more steps in every run") and "left out" in note
    for name in sweep: assert f"{cov.loc[name, 'left_out']} of {name}'s" in note
    r = compare(sweep)                                     # since the reference a pair scored once counts too
    assert len(r.pair_table()) > n and r.coverage_note().startswith(f"{len(r.pair_table())} train pairs were scored after step 0")


def test_since_reference_is_the_same_with_or_without_a_step_0_scoring():
    # a trained run scores its training pairs first when their batch comes (steps 1..4, after updates); the same numbers
    # with a step-0 scoring (policy = reference, as an inspected run has) must give the same categories
    rng = np.random.default_rng(0)
    n, ids = 16, np.arange(16)
    rc, rr = -20.0 - ids, np.full(n, -25.0)
    first_step, moves = 1 + ids % 4, rng.normal(0, 2, (2, n))           # pair i: first at step 1..4, then at step 10
    def run(with_step_0):
        h = History(beta=0.1, loss_type="sigmoid")
        if with_step_0: h.log_pairs(0, "train", ids, chosen_logps=rc, rejected_logps=rr, ref_chosen_logps=rc, ref_rejected_logps=rr)
        for s in range(1, 5):
            k = first_step == s
            h.log_pairs(s, "train", ids[k], chosen_logps=(rc + moves[0])[k], rejected_logps=rr[k], ref_chosen_logps=rc[k], ref_rejected_logps=rr[k])
        h.log_pairs(10, "train", ids, chosen_logps=rc + moves[0] + moves[1], rejected_logps=rr, ref_chosen_logps=rc, ref_rejected_logps=rr)
        return h
    other = planted(0.5, {i: (-1) ** i * 2.0 for i in range(0, 16, 3)}, n=16)
    trained, inspected = run(False), run(True)
    a = compare({"run": trained, "other": other}).versus("run", "other")
    b = compare({"run": inspected, "other": other}).versus("run", "other")
    assert list(a.category) == list(b.category) and len(a) == n
    np.testing.assert_allclose(a.delta_a, b.delta_a); np.testing.assert_allclose(a.delta_a, moves[0] + moves[1])
    fa = compare({"run": trained, "other": other}, since="first").versus("run", "other")
    fb = compare({"run": inspected, "other": other}, since="first").versus("run", "other")
    assert list(fa.category) != list(fb.category)                       # what since="first" gets wrong
    assert compare({"a": trained, "b": inspected}).moved_counts("a", "b")["only A"] == 0


def test_inputs_saved_folders_runs_and_names(sweep, tmp_path):
    h0, h1 = list(sweep.values())[:2]
    h0.save(tmp_path / "a")
    c = compare([tmp_path / "a", Run(h1)], names=["from disk", "from a Run"])
    assert c.names == ["from disk", "from a Run"]
    np.testing.assert_allclose(c.pair_table()[("from disk", "delta_margin")], compare([h0, h1]).pair_table().iloc[:, 5])
    assert compare([h0, h0]).names == ["synthetic-0", "synthetic-0 (1)"]
    assert compare([History(beta=0.5, loss_type="ipo")]).names == ["ipo β=0.5"]
    with pytest.raises(TypeError, match="got int"): compare([1])
    with pytest.raises(ValueError, match="no runs"): compare({})


def test_different_pairs_under_one_pair_id_warn_and_are_left_out():
    a, b = planted(0.1, {0: 3}), planted(0.1, {0: 3})
    a.add_texts([dict(pair_id=i, prompt=f"q{i}", chosen="c", rejected="r") for i in range(8)], split="train")
    b.add_texts([dict(pair_id=i, prompt=f"q{i}" if i < 5 else "other", chosen="c", rejected="r") for i in range(8)], split="train")
    c = compare({"a": a, "b": b})
    with pytest.warns(UserWarning, match=r"3 train pair\(s\) joined on pair_id have different texts .* in 'a' and 'b' \(e.g. pair 5\)"):
        c.pair_table()
    assert c.mismatched["train"] == {"b": 3} and list(c.pair_table().index) == [0, 1, 2, 3, 4]
    assert c.coverage()["mismatched"].tolist() == [3, 3] and c.coverage()["left_out"].tolist() == [3, 3]
    assert "3 pair_ids left out as their texts (prompt, chosen, rejected) differ between runs (b: 3)" in c.coverage_note()
    assert "left out, as not" not in c.coverage_note() and len(c.versus("a", "b")) == 5


def test_swapped_and_flipped_pairs_with_the_same_prompt_are_caught():
    texts = lambda: [dict(pair_id=i, prompt=f"q{i}", chosen=f"good {i}", rejected=f"bad {i}") for i in range(8)]
    a, b, c0 = planted(0.1, {0: 3}), planted(0.1, {0: 3}), planted(0.1, {})
    a.add_texts(texts(), split="train")
    t = texts()
    t[0]["chosen"], t[1]["chosen"] = t[1]["chosen"], t[0]["chosen"]            # pairs 0 and 1 swapped their chosen responses
    t[2]["chosen"], t[2]["rejected"] = t[2]["rejected"], t[2]["chosen"]        # pair 2's label flipped
    b.add_texts(t, split="train")
    c = compare({"a": a, "b": b, "no texts": c0})
    with pytest.warns(UserWarning, match="different texts"): v = c.versus("a", "b")
    assert sorted(c._bad["train"]) == [0, 1, 2] and list(v.pair_id) == [3, 4, 5, 6, 7]
    assert sum(c.moved_counts("a", "b").values()) == 5
    note = c.coverage_note()
    assert "3 pair_ids left out" in note and "not checked for the same texts (none recorded): no texts" in note
    assert c.coverage().loc["no texts", "mismatched"] == 3


# --- moved and not moved ------------------------------------------------------------------------------------------------

def test_planted_categories_in_logratio_units():
    # A (β=0.1) moves pairs 0-3 up by 3 nats; B (β=2) moves 2 up, 3 down, 4-5 up; 6 is moved by 0.5 in both (under tol)
    a = planted(0.1, {0: 3, 1: 3, 2: 3, 3: 3, 6: 0.5})
    b = planted(2.0, {2: 3, 3: -3, 4: 3, 5: 3, 6: 0.5}, steps=(3, 7, 12))    # scored at other steps, three times
    c = compare({"A": a, "B": b})
    v = c.versus("A", "B")
    assert list(v.category) == ["only A", "only A", "both, same way", "both, opposite ways", "only B", "only B", "neither", "neither"]
    np.testing.assert_allclose(v.delta_a, [3, 3, 3, 3, 0, 0, 0.5, 0]); np.testing.assert_allclose(v.delta_b, [0, 0, 3, -3, 3, 3, 0.5, 0])
    assert list(v.moved_a) == [True] * 4 + [False] * 4 and list(v.moved_b) == [False, False, True, True, True, True, False, False]
    assert list(v.steps_b) == ["3→12"] * 8
    assert c.moved_counts("A", "B") == {"only A": 2, "only B": 2, "both, same way": 1, "both, opposite ways": 1, "neither": 2}
    assert c.moved_counts("A", "B", tol=0.4)["both, same way"] == 2     # pair 6 moves past a lower tolerance
    assert c.moved_counts("A", "A") == {"only A": 0, "only B": 0, "both, same way": 4, "both, opposite ways": 0, "neither": 4}


def test_planted_categories_in_margin_units():
    # the same log-prob change reads β times larger in margins: at β=2 a 0.5-nat move is a 1-nat margin change
    c = compare({"A": planted(0.1, {0: 3, 1: 20}), "B": planted(2.0, {0: 3, 2: 0.6})}, units="margin")
    v = c.versus("A", "B")
    np.testing.assert_allclose(v.delta_a[:3], [0.3, 2.0, 0]); np.testing.assert_allclose(v.delta_b[:3], [6.0, 0, 1.2])
    assert list(v.category[:3]) == ["only B", "only A", "only B"]
    assert list(c.versus("A", "B", units="logratio").category[:3]) == ["both, same way", "only A", "neither"]


def test_pairs_scored_once_or_without_a_reference_are_not_compared():
    a = planted(0.1, {0: 3}, n=6)
    a.log_pairs(10, "train", [9], chosen_logps=[-1.0], rejected_logps=[-2.0], ref_chosen_logps=[-1.0], ref_rejected_logps=[-2.0])
    b = planted(0.1, {0: 3}, n=6)
    b.log_pairs(0, "train", [6], chosen_logps=[-1.0], rejected_logps=[-2.0])          # no reference: no margin, no h
    b.log_pairs(10, "train", [6], chosen_logps=[-0.5], rejected_logps=[-2.0])
    c = compare({"a": a, "b": b})
    assert list(c.pair_table().index) == list(range(6))                              # 9: only in a; 6: only in b
    assert c.coverage().loc["a", "left_out"] == 1 and c.coverage().loc["b", "left_out"] == 1
    assert 9 in set(pair_changes(a, "train").pair_id) and 9 not in set(pair_changes(a, "train", "first").pair_id)
    nan_b = compare({"b": b, "b again": b})
    assert 6 in nan_b.pair_table().index and 6 not in set(nan_b.versus("b", "b again").pair_id)
    assert nan_b.versus("b", "b again").attrs["dropped"] == 1


# --- figures ------------------------------------------------------------------------------------------------------------

def test_curves_overlaid_are_each_runs_own_numbers(sweep):
    c = compare(sweep)
    f = plot_compare_curves(c, ["loss", "rewards/margins", "rewards/accuracies", "gold_reward"])
    for name, h in sweep.items():
        for m in ("loss", "rewards/margins", "rewards/accuracies"):
            for df, kind in ((h.steps, "train"), (h.evals, "eval")):
                (t,) = [t for t in f.data if t.meta == dict(run=name, metric=m, kind=kind)]
                assert list(t.x) == df.step.tolist() and list(t.y) == df[m].tolist()
                assert t.line.color == c.colour(name) and t.legendgroup == name
        (g,) = [t for t in f.data if t.meta["run"] == name and t.meta["metric"] == "gold_reward"]
        assert g.meta["kind"] == "eval" and list(g.y) == h.evals.gold_reward.tolist()
    assert len({c.colour(n) for n in sweep}) == 3
    assert sum(t.showlegend for t in f.data) == 6                                    # each run once, train and eval


def test_pairs_scatter_counts_hover_and_diagonal():
    a, b = planted(0.1, {0: 3, 1: 3, 2: 3, 3: 3}), planted(1.0, {2: 3, 3: -3, 4: 3, 5: 3})
    a.add_texts([dict(pair_id=i, prompt=f"<q{i}>", chosen="c", rejected="r") for i in range(8)], split="train")
    c = compare({"A": a, "B": b})
    f = plot_compare_pairs(c, "A", "B")
    assert f.layout.meta["counts"] == c.moved_counts("A", "B")
    by = {t.meta["category"]: t for t in f.data if t.meta}
    assert sorted(int(r[0]) for r in by["only B"].customdata) == [4, 5] and by["only B"].name == "only B: 2"
    assert by["only A"].customdata[0][1] == "&lt;q0&gt;"                            # hover text escaped
    assert "log-ratio margin h" in f.layout.xaxis.title.text and "in A" in f.layout.xaxis.title.text
    diag = [t for t in f.data if t.name.startswith("y = x")][0]
    assert list(diag.x) == list(diag.y)
    assert f.layout.meta["quadrants"] == {"A ↑ B ↑": 1, "A ↑ B ↓": 3, "A ↓ B ↑": 2, "A ↓ B ↓": 2}


def test_frontier_one_kl_method_honestly_labelled(sweep):
    c = compare({**sweep, "no KL": planted(0.1, {0: 1})})
    f = plot_compare_frontier(c)
    assert f.layout.meta["kl_method"] == "sampled" and f.layout.meta["left_out"] == ["no KL"]
    assert f.layout.xaxis.title.text == "KL(π ‖ π_ref), sampled estimate (nats per sequence)"
    assert "log-ratio" not in f.layout.xaxis.title.text
    for name, h in sweep.items():
        (t,) = [t for t in f.data if t.name == name]
        k = h.kl[h.kl.method == "sampled"]
        np.testing.assert_allclose(t.x, k.value); np.testing.assert_allclose(t.y, h.evals.set_index("step").loc[k.step, "gold_reward"])
        assert "KL (sampled) %{x:.4g} nats per sequence" in t.hovertemplate and "<i>sampled KL: mean over" in t.hovertemplate
    f2 = plot_compare_frontier(compare(sweep), kl_method="token_exact")
    assert "nats per token" in f2.layout.xaxis.title.text


def test_trajectory_of_one_pair_in_both_runs():
    c = compare({"A": planted(0.1, {3: 3}), "B": planted(1.0, {3: -3}, steps=(0, 5, 10))})
    f = plot_compare_trajectory(c, 3)
    h = {t.meta["run"]: list(t.y) for t in f.data if t.meta["quantity"] == "logratio"}
    assert h == {"A": [0.0, 3.0], "B": [0.0, -1.5, -3.0]}
    ch = {t.meta["run"]: list(t.y) for t in f.data if t.meta["quantity"] == "chosen"}
    assert ch == h                                                                   # only the chosen side moved
    assert f.layout.meta == {"pair_id": 3, "split": "train"}


# --- the widget ---------------------------------------------------------------------------------------------------------

@pytest.fixture
def planted_cmp():
    a, b = planted(0.1, {0: 3, 1: 3, 2: 3, 3: 3}), planted(1.0, {2: 3, 3: -3, 4: 3, 5: 3})
    a.add_texts([dict(pair_id=i, prompt=f"question {i}", chosen="yes", rejected="no") for i in range(8)], split="train")
    return compare({"A": a, "B": b, "C": planted(0.5, {7: 2})})


def test_widget_selection_follows_the_controls(planted_cmp):
    w = RunComparison(planted_cmp, mode="static")
    assert w.settings == dict(a="A", b="B", split="train", units="logratio", tol=1.0)
    assert w.cat_w.value == "only A" and [v for _, v in w.list_w.options] == [0, 1] and w.pair_id == 0
    assert 'data-pair="train:0"' in w.html["pair"] and "question 0" in w.html["pair"] and 'data-category="only A"' in w.html["pair"]
    w.cat_w.value = "only B"
    assert [v for _, v in w.list_w.options] == [4, 5] and w.pair_id == 4
    w.list_w.value = 5
    assert w.pair_id == 5 and w.figures["trajectory"].layout.meta["pair_id"] == 5
    ys = {t.meta["run"]: list(t.y) for t in w.figures["trajectory"].data if t.meta["quantity"] == "logratio"}
    assert ys == {"A": [0.0, 0.0], "B": [0.0, 3.0]}
    w.b_w.value = "C"                                                                # B's category goes; pair 5 stays selected
    assert w.figures["pairs"].layout.meta["counts"] == planted_cmp.moved_counts("A", "C") and w.pair_id == 5
    assert {t.meta["run"] for t in w.figures["trajectory"].data} == {"A", "C"}
    assert [(t.meta["run"], t.line.width) for t in w.figures["curves"].data] == []   # no steps logged: no curves
    w.tol_w.value = 5.0                                                              # nobody moves anything by 5 nats
    assert w.cat_w.value == "neither" and len(w.list_w.options) == 8
    w.units_w.value = "margin"
    assert w.figures["pairs"].layout.meta["units"] == "margin"


def test_widget_static_copy_holds_every_view(planted_cmp):
    w = RunComparison(planted_cmp, mode="static")
    html = w.to_html()
    assert html.startswith('<div class="dpo-compare dpo-static">')
    for s in ('data-run="A"', 'data-run="B"', 'data-run="C"', 'class="dpo-compare-counts" data-n="8"', 'data-pair="train:0"'):
        assert s in html, s
    assert html.count('class="plotly-graph-div"') == 4                             # curves, pairs, trajectory, frontier
    assert [n for _, n in w._items()] == ["runs", "curves", "counts", "pairs", "pair", "trajectory", "frontier"]


def test_widget_click_picks_a_pair(planted_cmp):
    w = RunComparison(planted_cmp, mode="widget")
    tr = [t for t in w.figures["pairs"].data if t.meta and t.meta["category"] == "both, opposite ways"][0]
    tr._dispatch_on_click(Points(point_inds=[0], xs=[tr.x[0]], ys=[tr.y[0]], trace_name=tr.name, trace_index=0), None)
    assert w.pair_id == 3 and 'data-category="both, opposite ways"' in w.html["pair"]
    w.a_w.value = "C"                                                                # figures rebuilt: clicks still hooked
    tr = [t for t in w.figures["pairs"].data if t.meta and t.meta["category"] == "only A"][0]
    tr._dispatch_on_click(Points(point_inds=[0], xs=[tr.x[0]], ys=[tr.y[0]], trace_name=tr.name, trace_index=0), None)
    assert w.pair_id == 7
    w.close()


def test_widget_on_runs_with_nothing_to_compare():
    w = RunComparison([History(beta=0.1), planted(0.1, {0: 3})], mode="static")
    assert w.pair_id is None and "0 train pairs" in w.html["pair"]
    assert w.figures["pairs"].layout.meta["empty"] and w.to_html()


# --- the report ---------------------------------------------------------------------------------------------------------

def test_comparison_report_written_with_every_run(sweep, tmp_path):
    c = compare(sweep, split="eval")
    p = write_comparison_report(c, tmp_path / "cmp")
    text = p.read_text()
    for name in sweep: assert f'data-run="{name}"' in text, name
    names = list(sweep)
    for b in names[1:]: assert f"{names[0]} against {b}, pair by pair" in text
    assert text.count('class="plotly-graph-div"') == 4 and 'src="http' not in text
    assert "16 eval pairs were scored after step 0 in every run" in text and "since the reference" in text
    long = pd.read_parquet(tmp_path / "cmp" / "comparison_pairs.parquet")
    assert set(long.run) == set(names) and len(long) == 3 * 16
    assert list(pd.read_csv(tmp_path / "cmp" / "comparison_runs.csv").run) == names
    s = comparison_section_html(c, include_plotlyjs=False, versus=[(names[2], names[1])], top=3)
    assert s.count('class="plotly-graph-div"') == 3 and f"{names[2]} against {names[1]}" in s
    assert f"only {names[2]} (top 3)" in s


def test_cli_compare_from_run_folders(tmp_path):
    import contextlib, io
    from dpo_nb.cli import main
    for i, beta in enumerate((0.1, 0.5)):  # a saved History, and a run folder with history/ inside
        synthetic_history(n_pairs=40, n_steps=12, beta=beta, seed=i).save(tmp_path / ("h0" if i == 0 else "run1/history"))
    with contextlib.redirect_stdout(io.StringIO()) as so:
        assert main(["compare", str(tmp_path / "h0"), str(tmp_path / "run1"), "--names", "low,high", "--tol", "0.5",
                     "--out", str(tmp_path / "cmp")]) == 0
    assert "comparison:" in so.getvalue()
    runs = pd.read_csv(tmp_path / "cmp" / "comparison_runs.csv", index_col=0)
    assert list(runs.index) == ["low", "high"]
    html = (tmp_path / "cmp" / "comparison.html").read_text()
    assert "low" in html and "high" in html
    pairs = pd.read_parquet(tmp_path / "cmp" / "comparison_pairs.parquet")
    assert set(pairs["run"]) == {"low", "high"} and (pairs.groupby("run").size() > 0).all()
    for argv, msg in (([str(tmp_path / "h0")], "two runs or more"), ([str(tmp_path / "h0"), str(tmp_path / "nope")], "no such folder"),
                      ([str(tmp_path / "h0"), str(tmp_path / "run1"), "--names", "a"], "1 names for 2 runs")):
        err = io.StringIO()
        with contextlib.redirect_stderr(err): assert main(["compare", *argv, "--out", str(tmp_path / "x")]) == 2
        assert len(err.getvalue().strip().splitlines()) == 1 and msg in err.getvalue(), err.getvalue()
