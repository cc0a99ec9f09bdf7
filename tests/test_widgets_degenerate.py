"""Every widget and the report, on runs with little in them (issue 11: nothing lost, nothing silently wrong).

An empty History, a run of one step, runs without probe tokens, evaluations, KL estimates, texts, pairs or reference
log-probs, and a real one-step toy run with `probe_pairs=0` and no reference model. For each: every widget builds
live (its ipywidgets tree, in each mode), its callbacks run, its static HTML renders, and each place with nothing to
show says what is missing and which setting records it; `write_report` writes a report.html that says the same.
"""
import copy, io, contextlib, json

import ipywidgets as W
import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from dpo_nb.history import History, synthetic_history
from dpo_nb.plots import plot_training_curves
from dpo_nb.report import report_figures, write_report
from dpo_nb.widgets import RANKINGS, MarginExplorer, PairInspector, TrainingDashboard, WhatIf, plot_replay

APPS = (TrainingDashboard, PairInspector, MarginExplorer, WhatIf)
MODES = ("static", "portable", "widget")
LOGPS = ("chosen_logps", "rejected_logps", "ref_chosen_logps", "ref_rejected_logps")

# the messages, as the widgets and figures write them
NO_PAIRS = "no pair was scored in this run"
NO_TOKENS = "no probe tokens were recorded in this run"
PROBE_SETTINGS = "DPOConfig(probe_pairs=n, probe_every=k)"
NO_STEPS_DASH = "no optimizer step logged yet"
NO_STEPS_FIG = "no steps logged yet"
NO_KL = "no KL estimates logged"
KL_SETTINGS = "DPOConfig(kl_every=k)"
NO_TEXTS = "no texts were recorded in this run"
NO_FRONTIER = "no run has both a reward and a KL at the same step"


# --- the degenerate runs, made through History's logging API ---------------------------------------------------------

def rebuild(h: History, *, splits=("train", "eval", "probe"), tokens=True, evals=True, kl=True, texts=True) -> History:
    "A copy of `h` logged again record by record, leaving out whole kinds of records"
    g = History(dict(h.meta))
    for r in h.steps.to_dict("records"): g.log_step(**{k: v for k, v in r.items() if pd.notna(v)})
    if evals:
        for r in h.evals.to_dict("records"): g.log_eval(**{k: v for k, v in r.items() if pd.notna(v)})
    p = h.pairs
    for (step, split), grp in p[p["split"].isin(splits).to_numpy()].groupby(["step", "split"], sort=True):
        g.log_pairs(int(step), split, grp["pair_id"].to_numpy(), **{c: grp[c].to_numpy() for c in (*LOGPS, "loss")})
    if tokens: g.log_tokens(h.tokens)
    if kl:
        for r in h.kl.itertuples(): g.log_kl(r.step, r.method, r.value, r.n, r.note)
    t = h.texts
    if texts and len(t): g.add_texts(t[t["split"].isin(splits).to_numpy()])
    return g


def one_step() -> History:
    "A run stopped after its first optimizer step: the step's metrics and its batch of pairs"
    h = History(beta=0.1, loss_type="sigmoid")
    h.log_step(1, loss=0.6931, **{"rewards/chosen": 0.0, "rewards/rejected": 0.0, "rewards/margins": 0.0,
                                  "rewards/accuracies": 0.0, "lr": 1e-6, "grad_norm": 3.0})
    ids = np.arange(4)
    c, r = -10.0 - ids, -12.0 - ids
    h.log_pairs(1, "train", ids, chosen_logps=c, rejected_logps=r, ref_chosen_logps=c, ref_rejected_logps=r)
    h.add_texts([dict(pair_id=int(i), prompt=f"prompt {i}", chosen="a good answer", rejected="a bad one") for i in ids], split="train")
    return h


def no_reference() -> History:
    "Pairs scored twice with the policy's log-probs only (no reference log-probs were kept)"
    h = History(beta=0.1)
    for step, d in ((0, 0.0), (2, -1.0)):
        h.log_pairs(step, "eval", [0, 1], chosen_logps=[-5.0 + d, -6.0], rejected_logps=[-5.0 + 2 * d, -7.0])
    h.add_texts([dict(pair_id=i, prompt=f"p{i}", chosen="c", rejected="r") for i in (0, 1)], split="eval")
    return h


@pytest.fixture(scope="module")
def H():
    base = synthetic_history(n_pairs=24, n_eval=8, n_steps=6, batch_size=4, eval_every=3, n_probe=2)
    return {
        "empty": History(),
        "one step": one_step(),
        "no probe tokens": rebuild(base, splits=("train", "eval"), tokens=False),    # DPOConfig(probe_pairs=0)
        "no evals": rebuild(base, splits=("train", "probe"), evals=False),           # no eval_data: probes are train pairs
        "no KL": rebuild(base, kl=False),                                            # no reference model
        "no texts": rebuild(base, splits=("train", "eval"), tokens=False, texts=False),
        "steps only": rebuild(base, splits=(), tokens=False, evals=False, kl=False, texts=False),  # track_pairs=False
        "no reference": no_reference(),
    }


NAMES = ("empty", "one step", "no probe tokens", "no evals", "no KL", "no texts", "steps only", "no reference")

# what the static form of each widget says right after it is built, per run
EXPECT = {
    "empty": {"TrainingDashboard": [NO_STEPS_DASH, NO_KL, KL_SETTINGS, "not started"],
              "PairInspector": [NO_PAIRS, NO_TOKENS, PROBE_SETTINGS],
              "MarginExplorer": [NO_PAIRS, "scored at two different steps", NO_TOKENS],
              "WhatIf": [NO_PAIRS]},
    "one step": {"TrainingDashboard": [NO_KL, "step 1"],
                 "PairInspector": [NO_TOKENS, PROBE_SETTINGS, "scored 1×"],
                 "MarginExplorer": ["no 'train' pair was scored at two steps in this window", "scored at two different steps", NO_TOKENS],
                 "WhatIf": ["4 train pairs", "rescoring needs the policy"]},
    "no probe tokens": {"TrainingDashboard": ["eval (step 6)"],
                        "PairInspector": [NO_TOKENS, PROBE_SETTINGS],
                        "MarginExplorer": ["8 eval pairs scored at two steps", NO_TOKENS],
                        "WhatIf": ["8 eval pairs"]},
    "no evals": {"TrainingDashboard": ["KL: sampled"],
                 "PairInspector": ["recorded at step 6 (probe pair)"],
                 "MarginExplorer": ["2 probe pairs scored at two steps"],
                 "WhatIf": ["2 probe pairs"]},
    "no KL": {"TrainingDashboard": [NO_KL, KL_SETTINGS],
              "PairInspector": ["probe pairs only"],
              "MarginExplorer": ["8 eval pairs scored at two steps"],
              "WhatIf": ["8 eval pairs"]},
    "no texts": {"TrainingDashboard": ["eval (step 6)"],
                 "PairInspector": [NO_TOKENS, NO_TEXTS],
                 "MarginExplorer": ["8 eval pairs scored at two steps", NO_TEXTS],
                 "WhatIf": [NO_TEXTS, "8 eval pairs"]},
    "steps only": {"TrainingDashboard": [NO_KL, "step 6"],
                   "PairInspector": [NO_PAIRS, NO_TOKENS],
                   "MarginExplorer": [NO_PAIRS],
                   "WhatIf": [NO_PAIRS]},
    "no reference": {"TrainingDashboard": [NO_STEPS_DASH, NO_KL],
                     "PairInspector": [NO_TOKENS],
                     "MarginExplorer": ["2 eval pairs scored at two steps"],
                     "WhatIf": ["has all four log-probs", "nothing to replay"]},
}


def quiet(fn, *a, **kw):
    "Call `fn` with stdout swallowed (outside a kernel, the portable mode's Output widgets print what they show)"
    with contextlib.redirect_stdout(io.StringIO()): return fn(*a, **kw)


def exercise(w):
    "Set every control of `w` as a person would: each callback runs"
    if isinstance(w, TrainingDashboard):
        w.smooth_w.value = 0.5; w.evals_w.value = False; w.evals_w.value = True; w.refresh(); w.refresh(full=True)
    if isinstance(w, PairInspector):
        for how in list(RANKINGS) + ["search results"]: w.rank_w.value = how
        w.search_w.value = "good"; w.search_w.value = ""
        w.id_w.value = 3; w.id_w.value = 10_000; w.id_w.value = 0
        for s in w.split_w.options: w.split_w.value = s
        for _, v in w.step_w.options: w.step_w.value = v
        if w.list_w.options: w.list_w.value = w.list_w.options[-1][1]
    if isinstance(w, MarginExplorer):
        for q in w.quadrant_w.options: w.quadrant_w.value = q
        w.window_w.value = (w.window_w.min, w.window_w.max)
        for s in w.split_w.options: w.split_w.value = s
        if w.list_w.options: w.list_w.value = w.list_w.options[0][1]
        w.open_pair(0)
    if isinstance(w, WhatIf):
        w.beta_w.value = 0.3
        for lt in w.loss_w.options: w.loss_w.value = lt
        w.loss_w.value = "sigmoid"; w.eps_w.value = 0.1
        for _, v in w.step_w.options: w.step_w.value = v
        for s in w.split_w.options: w.split_w.value = s
        w.id_w.value = 10_000; w.load_w.click(); w.id_w.value = 0; w.load_w.click(); w.rescore_w.click()
        w.edit(chosen="an edited answer")


def static_text(w) -> str:
    "Everything the static form shows: the HTML, and each slot's display bundle"
    out = [w.to_html()]
    for a in [w] + w._children():
        for _, n in a._items(): out.append(a._static_bundle(n)["text/html"])
    return "\n".join(out)


# --- every widget x every run x every mode ---------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cls", APPS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("name", NAMES)
def test_widget_builds_runs_and_renders(H, name, cls, mode):
    w = quiet(cls, H[name], mode=mode)
    assert w.mode == mode
    tree = quiet(lambda: w.widget)
    assert isinstance(tree, W.Widget) and tree.children
    before = static_text(w)
    for msg in EXPECT[name][cls.__name__]: assert msg in before, f"{name} / {cls.__name__}: {msg!r} not shown"
    quiet(exercise, w)
    after = static_text(w)
    assert after.startswith(f'<div class="{w._css} dpo-static">')
    if mode == "widget": assert all(isinstance(f, go.FigureWidget) for f in w.figures.values())
    quiet(w.close)


# --- what each widget says, class by class ---------------------------------------------------------------------------

def test_dashboard_empty_then_one_step_live(H):
    h = History(beta=0.1)
    for mode in ("static", "widget"):
        d = quiet(TrainingDashboard, h if mode == "static" else History(beta=0.1), mode=mode)
        note = [a for a in d.figures["curves"].layout.annotations if a.name == "no-data"]
        assert len(note) == 1 and note[0].visible is not False and NO_STEPS_DASH in note[0].text     # an empty run's curves say why
        assert all(len(t.x) == 0 for t in d.figures["curves"].data)
        assert NO_KL in d.figures["kl"].layout.meta["why"] and KL_SETTINGS in d.figures["kl"].layout.meta["why"]
        d.run.history.log_step(1, loss=0.69)
        quiet(d.refresh)                                     # the live path: data filled into the figure already drawn
        curves = d.figures["curves"]
        assert not any(a.name == "no-data" for a in curves.layout.annotations)   # the note goes with the first point
        loss = [t for t in curves.data if t.name == "loss"][0]
        assert list(loss.y) == [0.69] and loss.mode == "lines+markers"   # one point: a marker, not an invisible line
        d.run.history.log_step(2, loss=0.6)
        quiet(d.refresh)
        assert [t for t in d.figures["curves"].data if t.name == "loss"][0].mode == "lines"
        assert NO_STEPS_DASH not in d.to_html() and "step 2" in d.html["status"]


def test_dashboard_one_step_and_missing_evals_kl(H):
    d = quiet(TrainingDashboard, H["one step"], mode="static")
    loss = [t for t in d.figures["curves"].data if t.name == "loss"][0]
    assert list(loss.y) == [0.6931] and loss.mode == "lines+markers"
    assert not any(a.name == "no-data" for a in d.figures["curves"].layout.annotations)
    d = quiet(TrainingDashboard, H["no evals"], mode="static")
    assert not any(t.name.startswith("eval ") and len(t.x) for t in d.figures["curves"].data)
    assert "eval (step" not in d.html["status"] and len(d.figures["kl"].data) == 2
    d = quiet(TrainingDashboard, H["no KL"], mode="static")
    assert d.figures["kl"].layout.meta["empty"] and "KL:" not in d.html["status"] and "eval (step 6)" in d.html["status"]


def test_inspector_without_probe_tokens_names_the_setting(H):
    for name in ("no probe tokens", "one step", "empty", "no texts"):
        ins = quiet(PairInspector, H[name], mode="static")
        assert ins.step_w.options == ()                         # nothing recorded, nothing to compute with
        assert NO_TOKENS in ins.html["tokens"] and PROBE_SETTINGS in ins.html["tokens"], name
        assert "model=, ref_model=, tokenizer=" in ins.html["tokens"]
    ins = quiet(PairInspector, H["no KL"], mode="static", split="eval")   # probes exist: other pairs say "probe pairs only"
    assert "probe pairs only" in ins.html["tokens"] and NO_TOKENS not in ins.html["tokens"]
    quiet(ins.select, 0, "probe")
    assert 'class="dpo-tok"' in ins.html["tokens"]


def test_inspector_empty_and_pairless_runs(H):
    for name in ("empty", "steps only"):
        ins = quiet(PairInspector, H[name], mode="static")
        assert NO_PAIRS in ins.html["head"] and "track_pairs=True" in ins.html["head"]
        assert NO_PAIRS in ins.figures["trajectory"].layout.annotations[0].text
        quiet(setattr, ins.search_w, "value", "anything")
        assert "no texts recorded for split" in ins.html["list_note"]
    ins = quiet(PairInspector, H["no texts"], mode="static")
    assert NO_TEXTS in ins.html["tokens"] and "scored 3×" in ins.html["head"]
    ins = quiet(PairInspector, H["one step"], mode="static")
    assert "no 'train' pair was scored twice yet" in ins.html["list_note"] and ins.pair_id == 0   # the list is empty: why
    quiet(setattr, ins.id_w, "value", 99)
    assert "no pair 99 in split 'train'" in ins.html["head"]              # a run with pairs: the pair is what is missing
    assert "pair 99 was never scored in split 'train'" in ins.figures["trajectory"].layout.annotations[0].text


def test_explorer_says_why_it_has_no_points(H):
    ex = quiet(MarginExplorer, H["empty"], mode="static")
    assert NO_PAIRS in ex.html["counts"] and ex.list_w.options == () and len(ex.changes) == 0
    assert ex.figures["margins"].layout.meta["empty"] and ex.figures["quadrants"].layout.meta["empty"]
    ex = quiet(MarginExplorer, H["one step"], mode="static")
    assert "no 'train' pair was scored at two steps in this window" in ex.html["counts"]
    assert "scored at two different steps" in ex.figures["margins"].layout.meta["why"]
    ex = quiet(MarginExplorer, H["no probe tokens"], mode="widget")
    assert ex.html["counts"].startswith('<div class="dpo-counts" data-n="8"')
    quiet(ex.open_pair, int(ex.changes["pair_id"].iloc[0]))
    assert NO_TOKENS in ex.inspector.html["tokens"]


def test_whatif_empty_run_says_why_everywhere(H):
    for mode in MODES:
        w = quiet(WhatIf, H["empty"], mode=mode)
        assert NO_PAIRS in w.html["scores"] and NO_PAIRS in w.html["replay_summary"]
        assert w.html["tokens"] == "" and w.original is None and w.replayed is not None and not len(w.replayed)
        assert NO_PAIRS in w.figures["replay"].layout.annotations[0].text and w.figures["replay"].layout.meta["empty"]
        assert 'data-pairs="0"' in w.html["replay_summary"] and NO_PAIRS in w.to_html()   # was KeyError: 'tokens'
        quiet(w.rescore_w.click)
        assert "rescoring needs the policy" in w.html["scores"]


def test_whatif_missing_texts_or_reference(H):
    w = quiet(WhatIf, H["no texts"], mode="static")
    assert NO_TEXTS in w.html["scores"] and "no pair 0 with texts in split 'eval'" in w.html["scores"]
    assert w.html["tokens"] == "" and w.replayed["pair_id"].nunique() == 8           # the replay needs no texts
    w = quiet(WhatIf, H["no reference"], mode="static")
    assert "no 'eval' pair has all four log-probs" in w.html["replay_summary"] and not len(w.replayed)
    quiet(setattr, w.step_w, "value", 2)
    assert "scored at step 2 has all four log-probs" in w.figures["replay"].layout.meta["why"]
    w = quiet(WhatIf, H["one step"], mode="static")
    assert w.replayed["pair_id"].tolist() == [0, 1, 2, 3] and "as recorded at step 1" in w.html["scores"]


def test_plot_replay_empty_message():
    f = plot_replay(pd.DataFrame(), "run", "replay")
    assert f.layout.meta["why"] == "no pair with the four log-probs scored at this step"
    f = plot_replay(pd.DataFrame(), "run", "replay", why="nothing here because of a reason long enough to wrap in two lines or more")
    assert "<br>" in f.layout.meta["why"] and f.layout.meta["why"].replace("<br>", " ").startswith("nothing here")


# --- figures and the report ------------------------------------------------------------------------------------------

REPORT_EXPECT = {
    "empty": [NO_STEPS_FIG, NO_KL, NO_TOKENS, NO_FRONTIER, "no 'train' pair was scored at two different steps"],
    "one step": [NO_KL, NO_TOKENS, PROBE_SETTINGS, "no 'train' pair was scored at two different steps"],
    "no probe tokens": [NO_TOKENS, PROBE_SETTINGS],
    "no evals": [NO_FRONTIER],
    "no KL": [NO_KL, KL_SETTINGS, NO_FRONTIER],
    "no texts": [NO_TOKENS],
    "steps only": [NO_KL, NO_TOKENS, "no 'train' pairs with rewards logged"],
    "no reference": [NO_STEPS_FIG, NO_KL, "no 'eval' pairs with rewards logged"],
}


@pytest.mark.parametrize("name", NAMES)
def test_write_report_says_what_is_missing(H, name, tmp_path):
    path = write_report(H[name], tmp_path / "out")
    page = path.read_text(encoding="utf-8")
    assert path.name == "report.html" and page.rstrip().endswith("</html>")
    for msg in REPORT_EXPECT[name]: assert msg in page, f"{name}: {msg!r} not in the report"
    heads = [t for t, _, _ in report_figures(H[name])]
    assert ("Probe pairs, token by token" in heads) == (not H[name].probe_ids())
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["probe_pairs"] == len(H[name].probe_ids())


def test_one_step_curve_is_drawn_with_a_marker(H):
    f = plot_training_curves(H["one step"])
    assert {t.name: t.mode for t in f.data}["loss"] == "lines+markers"
    f = plot_training_curves(H["no KL"])
    assert {t.name: t.mode for t in f.data}["loss"] == "lines" and {t.name: t.mode for t in f.data}["eval loss"] == "lines+markers"


# --- a real one-step toy run without probes or a reference model -----------------------------------------------------

@pytest.fixture(scope="module")
def toy_trainer():
    from dpo_nb.toy import load_toy
    from dpo_nb.train import DPOConfig, DPOTrainer
    toy = load_toy()
    cfg = DPOConfig(max_steps=1, batch_size=4, probe_pairs=0, progress=False)
    t = DPOTrainer(copy.deepcopy(toy.model), toy.tokenizer, toy.train.select(range(12)), cfg, eval_data=toy.test.select(range(6)))
    quiet(t.fit)
    return t


def test_toy_run_without_probes_or_reference(toy_trainer, tmp_path):
    t = toy_trainer
    h = t.history
    assert len(h.steps) == 1 and h.probe_ids() == [] and not len(h.kl) and t.ref_mode == "precomputed"
    ins = quiet(PairInspector, h, mode="static")                  # the History alone: nothing recorded, nothing to score with
    assert NO_TOKENS in ins.html["tokens"] and PROBE_SETTINGS in ins.html["tokens"]
    live = quiet(PairInspector, t, mode="widget")                 # the trainer: tokens computed now, for any pair
    assert 'class="dpo-tok"' in live.html["tokens"] and "computed now" in live.html["tokens"]
    quiet(exercise, live)
    d = quiet(TrainingDashboard, t, mode="widget")
    assert NO_KL in d.figures["kl"].layout.meta["why"] and "step 1" in d.html["status"]
    assert [x for x in d.figures["curves"].data if x.name == "loss"][0].mode == "lines+markers"
    w = quiet(WhatIf, t, mode="static")
    assert w.result is not None and "cached by the run" in w.html["scores"] and 'class="dpo-tok"' in w.html["tokens"]
    quiet(exercise, w)
    ex = quiet(MarginExplorer, h, mode="portable")
    assert ex.html["counts"].startswith('<div class="dpo-counts" data-n="6"')    # eval pairs scored before and after fit
    quiet(exercise, ex)
    page = write_report(h, tmp_path / "toy").read_text(encoding="utf-8")
    assert NO_TOKENS in page and PROBE_SETTINGS in page and NO_KL in page
