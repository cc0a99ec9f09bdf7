"""The widgets of 06b_widgets at the Python level: set a control, check the figure data and the text shown.

Every widget, in the modes that matter (static: scripts, test runners, docs; widget: JupyterLab's FigureWidgets;
portable: Colab's core ipywidgets with static figures), from a synthetic History, a real tiny trainer (tokens
computed on demand), a History reloaded from disk, and a model/reference passed by hand.
"""
import copy, json, math, re, warnings
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
import torch
from plotly.callbacks import Points
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from dpo_nb.data import tokenize_pairs
from dpo_nb.history import History, synthetic_history
from dpo_nb.loss import LOSS_TYPES, dpo_loss, gradient_weight
from dpo_nb.plots import quadrant_counts
from dpo_nb.train import DPOConfig, DPOTrainer
import dpo_nb.widgets as wmod
from dpo_nb.widgets import (MarginExplorer, PairInspector, Run, TrainingDashboard, WhatIf, figure_bundle, plot_pair_trajectory,
                            rank_pairs, replay_losses, search_pairs, sync_figure, tokens_html, widget_mode)

ROOT = Path(__file__).resolve().parents[1]
WORDS = ["<pad>", "<bos>", "<eos>", "<unk>", "the", "film", "was", "plot", "acting", "is", "good", "bad", "very", "quite",
         "great", "awful", "and", "not", "fine", "dull"]


# --- fixtures -----------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def h():
    return synthetic_history(n_pairs=120, n_eval=30, n_steps=40, batch_size=8, eval_every=10, n_probe=2)


@pytest.fixture(scope="module")
def tok():
    wl = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    wl.pre_tokenizer = pre_tokenizers.Whitespace()
    wl.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=wl, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")


def tiny(seed=0):
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=len(WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64))


def make_pairs(n, seed=0):
    rng = np.random.default_rng(seed)
    subj, pos, neg = ["the film", "the plot", "the acting"], ["good", "great", "fine"], ["bad", "awful", "dull"]
    out = []
    for i in range(n):
        s, v = rng.choice(subj), rng.choice(["was", "is"])
        extra = " ".join(rng.choice(["very", "quite", "and"], size=rng.integers(0, 5)))
        out.append(dict(prompt=f"{s} {v}", chosen=f" {extra} {rng.choice(pos)}", rejected=f" {rng.choice(neg)} {extra} and not {rng.choice(pos)}"))
    out[1]["chosen"] = out[1]["chosen"].lstrip()  # "wasgood": joint tokenization cuts differently (a boundary merge)
    return out


TRAIN, EVAL = make_pairs(32, 0), make_pairs(12, 1)


def cfg(**kw):
    base = dict(beta=0.3, learning_rate=3e-3, batch_size=4, max_steps=10, warmup_ratio=0.0, eval_every=5, probe_every=5,
                probe_pairs=2, kl_prompts=4, kl_max_new_tokens=4, max_length=9, max_prompt_length=4, progress=False)
    base.update(kw)
    return DPOConfig(**base)


@pytest.fixture(scope="module")
def trainer(tok):
    t = DPOTrainer(tiny(), tok, TRAIN, cfg(), eval_data=EVAL, ref_model=tiny())
    t.fit()
    return t


@pytest.fixture(scope="module")
def saved(trainer, tmp_path_factory):
    d = tmp_path_factory.mktemp("run") / "history"
    trainer.history.save(d)
    return d


def ys(fig, i): return list(np.asarray(fig.data[i].y, float))


# --- modes and display ----------------------------------------------------------------------------------------------

def test_modes(monkeypatch):
    monkeypatch.delenv("DPO_NB_WIDGETS", raising=False)
    assert widget_mode() == "static"                       # no kernel here: plain figures and HTML
    assert widget_mode("widget") == "widget" and widget_mode("portable") == "portable"
    monkeypatch.setenv("DPO_NB_WIDGETS", "portable")
    assert widget_mode() == "portable"
    monkeypatch.setenv("COLAB_RELEASE_TAG", "x")
    monkeypatch.delenv("DPO_NB_WIDGETS")
    from dpo_nb.display import frontend
    assert frontend() == "colab"
    with pytest.raises(ValueError, match="choose one of"): widget_mode("fancy")


def test_bundles_reference_plotlyjs_never_inline(h):
    b = figure_bundle(plot_pair_trajectory(h, 3, "eval"))
    assert {"application/vnd.plotly.v1+json", "text/html", "text/plain"} <= set(b)
    assert "https://cdn.plot.ly/plotly-" in b["text/html"] and len(b["text/html"]) < 60_000
    ins = PairInspector(h, mode="widget")
    data = ins._bundle()
    assert data["application/vnd.jupyter.widget-view+json"]["model_id"] == ins.widget.model_id
    assert 'data-pair="eval:' in data["text/html"] and "cdn.plot.ly" in data["text/html"]  # the fallback exporters use


def test_sync_figure_replaces_structure_and_keeps_numbers(h):
    from dpo_nb.plots import plot_margin_change, plot_token_heatmap
    fw = wmod.figure_widget(plot_margin_change(h, "eval"))
    sync_figure(fw, plot_token_heatmap(h, 0))
    assert [t.type for t in fw.data] == ["heatmap", "heatmap"] and fw.layout.coloraxis.cmid == 0
    new = plot_margin_change(h, "train")
    sync_figure(fw, new)
    assert [t.type for t in fw.data] == ["scatter"] * 3
    assert not fw.layout.coloraxis.to_plotly_json()
    np.testing.assert_allclose(np.asarray(fw.data[0].x, float), np.asarray(new.data[0].x, float))


# --- the pair inspector ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["static", "widget", "portable"])
def test_inspector_controls_change_figure_and_text(h, mode):
    ins = PairInspector(h, mode=mode)
    assert ins.split == "eval" and ins.pair_id == int(rank_pairs(h, "eval", "largest margin gain", 1)["pair_id"][0])
    fig = ins.figures["trajectory"]
    ins.id_w.value = 7
    assert fig is ins.figures["trajectory"]                               # refilled in place, not rebuilt
    assert ys(fig, 2) == h.pair_trajectory(7, "eval")["margin"].tolist()
    assert list(fig.data[0].x) == h.pair_trajectory(7, "eval")["step"].tolist()
    assert "Pair 7 (eval)" in fig.layout.title.text and 'data-pair="eval:7"' in ins.html["head"]
    assert "probe pairs only" in ins.html["tokens"]                      # a bare History: tokens for probe pairs only
    ins.list_w.value = ins.list_w.options[3][1]
    assert ins.pair_id == ins.list_w.options[3][1] and ys(fig, 2) == h.pair_trajectory(ins.pair_id, "eval")["margin"].tolist()
    ins.rank_w.value = "likelihood displacement"
    mc = h.margin_change("eval")
    assert {v for _, v in ins.list_w.options} == set(mc[mc.displaced]["pair_id"])
    assert ins.pair_id == ins.list_w.options[0][1] and "likelihood displacement" in ins.html["head"]
    ins.split_w.value = "probe"
    ins.id_w.value = 0
    assert ins.split == "probe" and ins.step_w.value == 40                # the probe's latest recorded scoring
    tokens_40 = ins.html["tokens"]
    assert tokens_40.count('class="dpo-tok"') == int((h.token_frame(ins.pair_id, 40)["side"] != "prompt").sum())
    ins.step_w.value = 0
    assert ins.html["tokens"] != tokens_40 and "recorded at step 0" in ins.html["tokens"]
    ins.split_w.value = "train"
    ins.search_w.value = "haiku"
    assert ins.rank_w.value == "search results" and ins.list_w.options
    assert all("haiku" in h.text(v, "train")["prompt"] for _, v in ins.list_w.options)
    assert "haiku" in ins.html["tokens"]
    ins.id_w.value = 10**6
    assert "no pair 1000000" in ins.html["head"] and len(ins.figures["trajectory"].data[0].x) == 0


def test_inspector_static_display_and_html(h):
    ins = PairInspector(h, pair_id=5, split="eval", mode="static")
    html = ins.to_html()
    assert 'data-pair="eval:5"' in html and "cdn.plot.ly" in html and "Pair 5 (eval)" in html
    assert [k for k, _ in ins._items()] == ["html", "html", "figure"]


def test_inspector_portable_builds_outputs(h):
    ins = PairInspector(h, mode="portable")
    box = ins.widget
    kinds = {type(w).__name__ for w in box.children}
    assert "Output" in kinds and "FigureWidget" not in kinds


def test_inspector_computes_tokens_with_a_trainer(trainer):
    ins = PairInspector(trainer, mode="widget")
    assert ins.step_w.value == -1 and "computed now" in ins.html["tokens"]
    h = trainer.history
    last = h.pair_trajectory(ins.pair_id, "eval").iloc[-1]
    assert int(last["step"]) == trainer.step
    t = ins.run.pair_tokens("eval", ins.pair_id)
    for side in ("chosen", "rejected"):                                 # the sums are what the last evaluation logged
        np.testing.assert_allclose(t.loc[t.side == side, "logp"].sum(), last[f"{side}_logps"], atol=1e-3)
        np.testing.assert_allclose(t.loc[t.side == side, "ref_logp"].sum(), last[f"ref_{side}_logps"], atol=1e-3)
    # masks as the model saw them: prompt attended and not scored, the response scored, padding neither
    assert set(t.loc[t.side == "prompt", "scored"]) == {0} and set(t.loc[t.side == "prompt", "attention"]) == {1}
    resp = t[(t.side != "prompt") & (t.attention == 1)]
    assert set(resp["scored"]) == {1} and resp["token"].iloc[-1] == "<eos>" or "<eos>" in set(resp["token"])
    before = (ins.html["tokens"], ys(ins.figures["trajectory"], 2))
    other = next(v for _, v in ins.list_w.options if v != ins.pair_id)
    ins.list_w.value = other
    assert ins.html["tokens"] != before[0] and ys(ins.figures["trajectory"], 2) != before[1]
    spans = re.findall(r'class="dpo-tok" data-lr="([-\d.]+)"[^>]*style="background:(rgba\([^)]*\))', ins.html["tokens"])
    assert spans and all(c.startswith("rgba(") for _, c in spans)
    # the tokenized data's flags: pair 1 merges at the boundary; max_length=9 truncates the long ones
    ins.split_w.value = "train"
    ins.rank_w.value = "boundary merge"
    assert [v for _, v in ins.list_w.options] == [1] and "boundary merge" in ins.html["head"]
    ins.rank_w.value = "truncated"
    truncated = {v for _, v in ins.list_w.options}
    fl = ins.run.flags("train")
    assert truncated == set(fl[(fl[["prompt_truncated", "chosen_truncated", "rejected_truncated"]].sum(axis=1) > 0)]["pair_id"])
    assert truncated and "truncated by" in ins.html["head"] and "tokens cut" in ins.html["tokens"]


def test_inspector_from_saved_history_with_and_without_models(trainer, saved, tok):
    ins = PairInspector(saved, split="eval", pair_id=trainer.probe_ids[0], mode="static")
    assert ins.run.trainer is None and ins.step_w.value == trainer.step and "recorded at step" in ins.html["tokens"]
    ins.id_w.value = 7
    assert "probe pairs only" in ins.html["tokens"]
    # the same History with the models passed by hand: tokens for any pair, from the stored texts
    ins2 = PairInspector(saved, split="eval", pair_id=7, mode="static", model=trainer.model, ref_model=trainer.ref_model, tokenizer=tok)
    assert ins2.step_w.value == -1 and 'class="dpo-tok"' in ins2.html["tokens"]
    t = ins2.run.pair_tokens("eval", 7)
    last = trainer.history.pair_trajectory(7, "eval").iloc[-1]
    np.testing.assert_allclose(t.loc[t.side == "chosen", "logp"].sum(), last["chosen_logps"], atol=1e-3)


def test_inspector_without_reference_says_so(tok):
    t = DPOTrainer(tiny(), tok, TRAIN, cfg(max_steps=2, eval_every=0), eval_data=EVAL)  # precomputed reference
    t.fit()
    ins = PairInspector(t, mode="static")
    frame = ins.run.pair_tokens(ins.split, ins.pair_id)
    assert frame["ref_logp"].isna().all() and frame["logp"].notna().any()
    assert "no reference log-probs per token" in ins.html["tokens"]


# --- the margin explorer --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["static", "widget"])
def test_explorer_counts_lists_and_picks(h, mode):
    ex = MarginExplorer(h, mode=mode)
    mc = ex.changes
    counts = quadrant_counts(mc["delta_chosen_logps"], mc["delta_rejected_logps"])
    assert ex.figures["quadrants"].layout.meta["quadrant_counts"] == counts
    for q, n in counts.items(): assert f'<tr data-quadrant="{q}"><td>{q}</td><td style="text-align:right">{n}</td>' in ex.html["counts"]
    assert {v for _, v in ex.list_w.options} == set(mc[mc.displaced]["pair_id"])
    ex.quadrant_w.value = "chosen ↓ rejected ↓"
    assert len(ex.list_w.options) == counts["chosen ↓ rejected ↓"]
    pid = ex.list_w.options[0][1]
    ex.list_w.value = pid
    assert ex.inspector.pair_id == pid and f'data-pair="eval:{pid}"' in ex.inspector.html["head"]
    x0 = list(ex.figures["margins"].data[0].x)
    ex.window_w.value = (20, 40)
    assert list(ex.figures["margins"].data[0].x) != x0 and "steps 20–end" in ex.figures["margins"].layout.title.text
    n20 = int(ex.changes.shape[0])
    assert ex.html["counts"].startswith('<div class="dpo-counts" data-n="%d"' % n20)
    ex.split_w.value = "train"
    assert "train pairs" in ex.figures["margins"].layout.title.text and ex.window_w.value == (1, 40)


def test_explorer_click_and_selection_open_pairs(h):
    ex = MarginExplorer(h, mode="widget")
    tr = ex.figures["quadrants"].data[0]
    tr._dispatch_on_click(Points(point_inds=[2], xs=[tr.x[2]], ys=[tr.y[2]], trace_name=tr.name, trace_index=0), None)
    want = int(tr.customdata[2][0])
    assert ex.selected == want and ex.inspector.pair_id == want
    assert ys(ex.inspector.figures["trajectory"], 2) == h.pair_trajectory(want, "eval")["margin"].tolist()
    tr2 = ex.figures["margins"].data[0]
    tr2._dispatch_on_selection(Points(point_inds=[0, 1, 4], xs=[], ys=[], trace_name=tr2.name, trace_index=0), None)
    assert ex.quadrant_w.value == "selected in the plot"
    assert {v for _, v in ex.list_w.options} == {int(tr2.customdata[i][0]) for i in (0, 1, 4)}


def test_close_closes_every_widget(h):
    ex = MarginExplorer(h, mode="widget")
    ws = [ex.split_w, ex.figures["margins"], ex.inspector.list_w, ex.inspector.html_view("tokens"), ex.widget]
    assert all(w.comm is not None for w in ws)
    ex.close()
    assert all(w.comm is None for w in ws)                               # closed: gone from the kernel's widget registry


def test_explorer_embeds_a_given_inspector(h):
    ins = PairInspector(h, mode="static")
    ex = MarginExplorer(h, inspector=ins, mode="static")
    ex.open_pair(11)
    assert ins.pair_id == 11
    assert MarginExplorer(h, inspector=None, mode="static").inspector is None


# --- the dashboard --------------------------------------------------------------------------------------------------

def test_dashboard_from_history_controls(h):
    d = TrainingDashboard(h, mode="static")
    assert ys(d.figures["curves"], 0) == h.steps["loss"].tolist()
    assert "step 40" in d.html["status"] and "finished" in d.html["status"] and "KL:" in d.html["status"]
    d.smooth_w.value = 0.8
    np.testing.assert_allclose(ys(d.figures["curves"], 0), h.steps["loss"].ewm(alpha=0.2).mean().to_numpy())
    lr = next(t for t in d.figures["curves"].data if t.name == "lr")
    assert list(lr.y) == h.steps["lr"].tolist()                       # the schedule is never smoothed
    n = len(d.figures["curves"].data)
    d.evals_w.value = False
    assert len(d.figures["curves"].data) < n and not any(t.name.startswith("eval ") for t in d.figures["curves"].data)
    assert {t.name.split(" (")[0] for t in d.figures["kl"].data} == {"sampled", "token_exact"}


def test_dashboard_live_updates_in_place(tok):
    t = DPOTrainer(tiny(), tok, TRAIN, cfg(max_steps=6, eval_every=3, kl_every=3), eval_data=EVAL, ref_model=tiny())
    d = TrainingDashboard(t, every=0.0, budget=math.inf, mode="widget")  # redraw at every callback
    assert d in t.callbacks
    fw = d.figures["curves"]
    seen = []
    class Spy:
        def on_step_end(self, trainer, metrics): seen.append((trainer.step, len(d.figures["curves"].data[0].y), d.figures["curves"] is fw))
    t.callbacks.append(Spy())
    t.fit()
    assert [s for s, _, _ in seen] == list(range(1, 7))
    assert [n for _, n, _ in seen] == list(range(1, 7))                  # the loss curve grew with every step
    assert all(same for _, _, same in seen)                            # one FigureWidget all along
    assert ys(d.figures["curves"], 0) == t.history.steps["loss"].tolist()
    assert "step 6 / 6" in d.html["status"] and "finished" in d.html["status"]
    assert len(d.figures["kl"].data) == 2 and d.redraws >= 6 and d.overhead > 0


def test_dashboard_throttles(tok):
    t = DPOTrainer(tiny(), tok, TRAIN, cfg(max_steps=5, eval_every=0), eval_data=EVAL)
    d = TrainingDashboard(mode="static", every=3600)                     # no source: attaches when fit starts
    t.callbacks.append(d)
    t.fit()
    assert d.run.trainer is t and d.redraws == 2                         # construction and fit end: no step redraws
    assert ys(d.figures["curves"], 0) == t.history.steps["loss"].tolist()
    d._cost = 1.0
    assert d.interval == 3600
    d.every = 0.1
    assert d.interval == pytest.approx(1.0 / 0.02)                      # a slow redraw spaces redraws out


def test_dashboard_errors_never_stop_training(tok, monkeypatch):
    t = DPOTrainer(tiny(), tok, TRAIN, cfg(max_steps=3, eval_every=0), eval_data=EVAL)
    d = TrainingDashboard(t, every=0.0, budget=math.inf, mode="static")
    monkeypatch.setattr(d, "_fill_curves", lambda *a, **k: 1 / 0)
    with pytest.warns(UserWarning, match="TrainingDashboard: ZeroDivisionError") as rec: t.fit()
    assert any("training continues" in str(w.message) for w in rec)
    assert t.step == 3 and "ZeroDivisionError" in d.error


# --- what if --------------------------------------------------------------------------------------------------------

def test_replay_losses_matches_the_loss_module(h):
    lat = h.latest("eval")
    r = replay_losses(lat, beta=0.1)
    np.testing.assert_allclose(r["weight_chosen"], lat["grad_weight"], atol=1e-9)
    np.testing.assert_allclose(r["loss"], lat["loss"], atol=1e-9)
    for lt in ("hinge", "robust", "nca_pair", "apo_zero", "bco_pair"):
        eps = 0.1 if lt == "robust" else 0.0
        rr = replay_losses(lat, beta=0.2, loss_type=lt, label_smoothing=eps)
        hw = lat["chosen_logps"] - lat["ref_chosen_logps"]
        d = 1e-5                                                       # the weight is -(1/β) dℓ/dh_w: check by finite differences
        up = dpo_loss(torch.tensor((lat["chosen_logps"] + d).to_numpy()), torch.tensor(lat["rejected_logps"].to_numpy()),
                      torch.tensor(lat["ref_chosen_logps"].to_numpy()), torch.tensor(lat["ref_rejected_logps"].to_numpy()),
                      beta=0.2, loss_type=lt, label_smoothing=eps)[0].numpy()
        np.testing.assert_allclose(-(up - rr["loss"].to_numpy()) / d / 0.2, rr["weight_chosen"], atol=1e-3, err_msg=lt)
    with pytest.raises(ValueError, match="token count"): replay_losses(lat, beta=0.1, loss_type="ipo")


def test_whatif_replay_controls(h):
    w = WhatIf(h, mode="static")
    assert w.result is None and "needs the policy" in w.html["scores"]
    assert w.replayed["pair_id"].nunique() == 30 and 'data-pairs="30"' in w.html["replay_summary"]
    m0, l0 = w.replayed["margin"].to_numpy(), w.replayed["loss"].mean()
    w.beta_w.value = 0.5
    np.testing.assert_allclose(w.replayed["margin"], 5 * m0)
    assert w.replayed["loss"].mean() != l0 and "β=0.5" in w.figures["replay"].layout.title.text
    np.testing.assert_allclose(w.figures["replay"].data[1].y, w.replayed.sort_values("log_ratio_diff", kind="stable")["weight_chosen"])
    w.loss_w.value = "hinge"
    assert w.eps_w.disabled and "hinge" in w.html["replay_summary"]
    w.loss_w.value = "nca_pair"                                        # pushes chosen and rejected unequally: both drawn
    assert any("(rejected)" in t.name for t in w.figures["replay"].data)
    w.loss_w.value = "exo_pair"
    assert w.eps_w.value == pytest.approx(0.01) and not w.eps_w.disabled and w.replayed is not None
    w.loss_w.value = "sigmoid_norm"
    assert w.replayed is None and "token count" in w.html["replay_summary"]
    w.loss_w.value = "sigmoid"
    w.step_w.value = 10
    assert "step 10" in w.html["replay_summary"] and set(w.replayed["step"]) == {10}


def test_whatif_rescores_edits_with_a_trainer(trainer):
    w = WhatIf(trainer, pair_id=3, split="eval", mode="widget")
    o = w.original
    last = trainer.history.pair_trajectory(3, "eval").iloc[-1]
    np.testing.assert_allclose(w.result["margin"], last["margin"], atol=1e-3)   # unedited: what the last evaluation logged
    np.testing.assert_allclose(w.result["chosen_logps"], last["chosen_logps"], atol=1e-3)
    tokens0 = w.html["tokens"]
    w.chosen_w.value = o["rejected"]                                   # typing in the box rescores at once
    w.rejected_w.value = o["chosen"]
    assert 'data-edited="1"' in w.html["scores"] and w.html["tokens"] != tokens0
    np.testing.assert_allclose(w.result["margin"], -w.original_result["margin"], atol=1e-5)
    m = w.result["margin"]
    w.beta_w.value = 0.9                                               # settings re-score the loss, not the model
    np.testing.assert_allclose(w.result["margin"], m * 0.9 / 0.3, rtol=1e-6)
    assert 'data-margin="%.6f"' % w.result["margin"] in w.html["scores"]
    w.loss_w.value = "ipo"                                             # token counts come from the tokenized data
    assert w.replayed is not None and len(w.replayed) == len(EVAL) and np.isfinite(w.result["loss"])
    w.edit(chosen="")
    assert w.result is None and "could not score" in w.html["scores"]
    w.edit(chosen=" very very very very very very good")               # truncated to max_length: said so
    assert "chosen truncated by" in w.html["scores"] and "tokens cut" in w.html["tokens"]


def test_whatif_precomputed_reference_uses_the_cached_one(tok):
    t = DPOTrainer(tiny(), tok, TRAIN, cfg(max_steps=2, eval_every=0), eval_data=EVAL)
    t.fit()
    w = WhatIf(t, pair_id=0, split="eval", mode="static")
    assert w.result["ref_source"].startswith("cached") and np.isfinite(w.result["margin"])
    w.edit(chosen=" quite good")
    assert w.result["ref_source"] == "none" and "Pass ref_model=" in w.html["scores"]


def test_whatif_from_saved_history(saved):
    w = WhatIf(saved, beta=0.6, mode="static")
    np.testing.assert_allclose(w.replayed["margin"], 2 * w.replayed["margin_run"])   # 0.6 vs the run's 0.3
    assert "run: sigmoid, β=0.3" in w.html["replay_summary"]


# --- helpers --------------------------------------------------------------------------------------------------------

def test_rank_and_search(h, trainer):
    r = rank_pairs(h, "eval", "largest margin loss")
    assert (np.diff(r["delta_margin"]) >= 0).all() and r["label"].str.startswith("#").all()
    r = rank_pairs(h, "eval", "lowest margin now", n=5)
    assert len(r) == 5 and r["margin_latest"].is_monotonic_increasing
    assert rank_pairs(h, "train", "truncated").attrs["why"].startswith("needs the tokenized pairs")
    assert len(rank_pairs(Run(trainer), "train", "boundary merge")) == 1
    s = search_pairs(h, "eval", "PASSWORD")
    assert len(s) and all("password" in h.text(i, "eval")["prompt"].lower() for i in s["pair_id"])


def test_tokens_html_colours_by_log_ratio():
    t = pd.DataFrame(dict(side=["prompt", "chosen", "chosen", "rejected"], position=[0, 1, 2, 1], token_id=[1, 2, 3, 4],
                          token=["<bos>", "good", "<eos>", "bad"], logp=[np.nan, -1.0, -2.0, -3.0], ref_logp=[np.nan, -2.0, -2.0, -1.0]))
    x = tokens_html(t, beta=0.1, key="eval:9")
    spans = re.findall(r'class="dpo-tok" data-lr="([^"]+)"[^>]*style="background:rgba\((\d+),(\d+),(\d+),([\d.]+)\)', x)
    assert [s[0] for s in spans] == ["1.0000", "0.0000", "-2.0000"]
    assert spans[0][1:4] == ("33", "102", "172") and spans[2][1:4] == ("178", "24", "43")   # blue up, red down
    assert float(spans[2][4]) > float(spans[0][4]) > float(spans[1][4])                     # stronger where |log-ratio| is larger
    assert "reward β·Σ = +0.1000" in x and "reward β·Σ = -0.2000" in x


# --- the notebook stays light ---------------------------------------------------------------------------------------

def test_notebook_is_light():
    p = ROOT / "nbs" / "06b_widgets.ipynb"
    nb = json.loads(p.read_text())
    assert p.stat().st_size < 1_000_000, p.stat().st_size                   # static images (06_display) included
    assert "widgets" not in nb["metadata"]                               # no saved widget state
    for c in nb["cells"]:
        for o in c.get("outputs", []):
            data = o.get("data", {})
            if "application/vnd.jupyter.widget-view+json" in data:
                html = "".join(data["text/html"]) if isinstance(data["text/html"], list) else data["text/html"]
                assert "cdn.plot.ly" in html or "dpo-" in html                 # a static copy for exporters and the docs
            assert "text/html" not in data or len(json.dumps(data)) < 200_000   # plotly.js (4.8 MB) never inlined


def test_whatif_replays_a_run_that_mixed_loss_types():
    h = synthetic_history(n_pairs=20, n_steps=4)
    h.meta.update(loss_type=["sigmoid", "bco_pair"], config=dict(beta=0.1, loss_type=["sigmoid", "bco_pair"], loss_weights=[1.0, 0.5],
                                                                 label_smoothing=0.0, f_divergence_type="reverse_kl"))
    w = WhatIf(h, mode="static")
    assert w.loss_w.value == ("sigmoid", "bco_pair") and w.settings["loss_weights"] == [1.0, 0.5]
    w.replay()
    rows = h.latest("train").dropna(subset=["ref_chosen_logps"])
    mixed = replay_losses(rows, 0.1, ["sigmoid", "bco_pair"], loss_weights=[1.0, 0.5])
    parts = [replay_losses(rows, 0.1, t) for t in ("sigmoid", "bco_pair")]
    np.testing.assert_allclose(mixed["loss"], parts[0]["loss"] + 0.5 * parts[1]["loss"], rtol=1e-12)
    w.loss_w.value = "bco_pair"  # one type: the mix's weights do not apply
    assert "loss_weights" not in w.settings and w.eps_w.disabled
    assert "sigmoid+bco_pair" in w.to_html()


# --- what the browser showed: figures that show movement, titles that fit, an inspector that follows -------------------

def test_margin_scatter_starts_where_margins_moved(h):
    ex = MarginExplorer(h, mode="static")
    first = h.margin_change("eval")["margin_first"]
    assert np.allclose(first.dropna(), 0)                                  # the run's first eval: policy == reference
    second = sorted(h.pairs.loc[h.pairs["split"] == "eval", "step"].unique())[1]
    assert ex.margins_since == second and f"steps {second}" in ex.figures["margins"].layout.title.text
    xs = np.concatenate([np.asarray(t.x, float) for t in ex.figures["margins"].data[:2]])
    assert np.abs(xs).max() > 0.01                                          # not a vertical stripe at 0
    assert ex.figures["quadrants"].layout.title.text.endswith("latest scoring)")   # the quadrants still count from the first
    ex.window_w.value = (0, ex.window_w.max)
    assert ex.margins_since == second                                       # the whole run's window: same default
    third = sorted(h.pairs.loc[h.pairs["split"] == "eval", "step"].unique())[2]
    ex.window_w.value = (third, ex.window_w.max)
    assert ex.margins_since == third and f"steps {third}" in ex.figures["margins"].layout.title.text  # a window asked for: kept


def test_inspector_follows_the_explorers_split(h):
    ex = MarginExplorer(h, mode="static")
    assert ex.inspector.split == "eval"
    ex.split_w.value = "train"
    assert ex.inspector.split == "train"
    assert ex.inspector.pair_id in set(h.pairs.loc[h.pairs["split"] == "train", "pair_id"])


def test_dashboard_smoothing_is_a_subtitle(h):
    d = TrainingDashboard(h, mode="static")
    title = d.figures["curves"].layout.title.text
    d.smooth_w.value = 0.9
    f = d.figures["curves"]
    assert f.layout.title.text == title and "0.90" in f.layout.title.subtitle.text and f.layout.margin.t >= 100
    d.smooth_w.value = 0.0
    assert d.figures["curves"].layout.title.subtitle.text is None
