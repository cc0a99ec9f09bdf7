"""The audit explorer (06c_audit_explorer) at the Python level: sorting, filters, picking a pair from the list, the id box
and the scatter, token colours against the reference's log-probs computed here by hand, and the static copy.

One audit of 48 toy pairs with four faults planted at the end (a repeat, swapped labels, near-identical responses, a
boundary merge) serves every test.
"""
import copy, re, warnings

import numpy as np
import pandas as pd
import pytest
import torch
from plotly.callbacks import Points

from dpo_nb.audit import audit
from dpo_nb.audit_explorer import FILTERS, PICKED, AuditExplorer
from dpo_nb.data import tokenize_pairs
from dpo_nb.display import _plain
from dpo_nb.toy import load_toy

N = 48
REPEAT, SWAPPED, NEAR, MERGED = N - 4, N - 3, N - 2, N - 1


pytestmark = pytest.mark.usefixtures("one_thread")  # (conftest: the toy model on one thread; `toy` is there too)


@pytest.fixture(scope="module")
def a(toy):
    p = toy.train.select(range(N)).to_pandas()[["prompt", "chosen", "rejected"]]
    p.loc[REPEAT] = p.loc[3]
    p.loc[SWAPPED] = p.loc[4, ["prompt", "rejected", "chosen"]].to_numpy()
    p.loc[NEAR, "rejected"] = " well ," + p.loc[NEAR, "chosen"]
    p.loc[MERGED, "chosen"] = p.loc[MERGED, "chosen"].lstrip()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return audit(p, toy.model, toy.tokenizer, max_length=64, max_prompt_length=16)


@pytest.fixture
def ax(a, toy):
    return AuditExplorer(a, toy.model, toy.tokenizer, mode="static")


def listed_ids(ax) -> list: return [v for _, v in ax.list_w.options]


def expected_order(pairs: pd.DataFrame, key, ascending: bool) -> list:
    "The order, computed here from the audit's own columns: by the key, ties by pair_id ascending"
    k = np.asarray(key(pairs), float)
    ids = pairs["pair_id"].to_numpy()
    order = sorted(range(len(ids)), key=lambda i: ((k[i] if ascending else -k[i]), ids[i]))
    return [int(ids[i]) for i in order]


# --- the table -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("by,key", [("ches", lambda p: p["ches"]), ("ref_preference", lambda p: p["ref_chosen_logps"] - p["ref_rejected_logps"]),
                                    ("edit_share", lambda p: p["edit_share"]),
                                    ("length_gap", lambda p: p["chosen_tokens"] - p["rejected_tokens"])])
def test_sorts_by_any_column_both_ways(ax, a, by, key):
    for asc in (False, True):
        ax.sort_w.value, ax.order_w.value = by, asc
        assert listed_ids(ax) == expected_order(a.pairs, key, asc)
        assert f'data-sort="{by}"' in ax.html["table"] and f'data-n="{N}"' in ax.html["table"]
        first = re.findall(r'<tr data-pair="(\d+)"', ax.html["table"])
        assert [int(i) for i in first] == listed_ids(ax)[:ax.static_rows]   # the static copy's table, in the same order


def test_every_column_is_offered_for_sorting(ax, a):
    offered = {v for _, v in ax.sort_w.options}
    assert set(a.pairs.columns) <= offered and {"length_gap", "abs_length_gap"} <= offered


def test_filters_keep_what_they_say(ax, a):
    p = a.pairs
    ax.filter_w.value = "repeats"
    assert sorted(listed_ids(ax)) == [REPEAT, SWAPPED]
    ax.filter_w.value = "boundary merge"
    assert listed_ids(ax) == [MERGED]
    ax.filter_w.value = "near-identical responses"
    assert set(listed_ids(ax)) == set(p.loc[p["edit_share"] < 0.25, "pair_id"]) and NEAR in listed_ids(ax)
    ax.filter_w.value = "reference ranks it wrong"
    assert set(listed_ids(ax)) == set(p.loc[p["ref_chosen_logps"] <= p["ref_rejected_logps"], "pair_id"])
    ax.filter_w.value = "flagged"
    assert {REPEAT, SWAPPED, NEAR, MERGED} <= set(listed_ids(ax)) and len(listed_ids(ax)) < N
    ax.filter_w.value = "top 5% CHES"
    assert set(listed_ids(ax)) == set(p.nlargest(int(np.ceil(0.05 * N)), "ches")["pair_id"])
    assert set(FILTERS) <= {o for o in ax.filter_w.options}


def test_flags_and_numbers_of_a_pair(ax, a):
    ax.open_pair(SWAPPED)
    assert "the labels are swapped against pair 4" in ax.html["pair"]
    r = a.pairs.set_index("pair_id").loc[SWAPPED]
    assert f"{r['ref_preference']:+.3f} nats summed" in ax.html["pair"]
    ax.open_pair(MERGED)
    assert "boundary merge" in ax.html["pair"]


# --- opening a pair --------------------------------------------------------------------------------------------------

def star(ax):
    tr = ax.figures["scatter"].data[-1]
    assert tr.name == "selected pair"
    return list(tr.x), list(tr.y)


def test_list_and_id_box_open_the_pair(ax, a):
    p = a.pairs.set_index("pair_id")
    top = listed_ids(ax)[0]
    assert ax.selected == top          # the table's first pair opens at start
    target = listed_ids(ax)[5]
    ax.list_w.value = target
    assert ax.selected == target and ax.id_w.value == target
    assert f'class="dpo-audit-pair" data-pair="{target}"' in ax.html["pair"] and f'data-pair="{target}"' in ax.html["tokens"]
    assert star(ax) == ([p.loc[target, "ref_preference"]], [p.loc[target, "ches"]])
    ax.id_w.value = 7
    assert ax.selected == 7 and f'data-pair="7"' in ax.html["tokens"] and ax.list_w.value == 7
    ax.ches_w.value = "ches_norm"
    assert star(ax) == ([p.loc[7, "ref_preference"]], [p.loc[7, "ches_norm"]])


def test_scatter_click_and_selection_in_widget_mode(a, toy):
    ax = AuditExplorer(a, toy.model, toy.tokenizer, mode="widget")
    tr = ax.figures["scatter"].data[1]
    want = int(tr.customdata[2][0])
    tr._dispatch_on_click(Points(point_inds=[2], xs=[tr.x[2]], ys=[tr.y[2]], trace_name=tr.name, trace_index=1), None)
    assert ax.selected == want and f'data-pair="{want}"' in ax.html["pair"]
    assert ax.figures["scatter"].data[-1].x == (a.pairs.set_index("pair_id").loc[want, "ref_preference"],)
    tr0 = ax.figures["scatter"].data[0]
    tr0._dispatch_on_selection(Points(point_inds=[0, 3], xs=[], ys=[], trace_name=tr0.name, trace_index=0), None)
    assert ax.filter_w.value == PICKED and sorted(listed_ids(ax)) == sorted(int(tr0.customdata[i][0]) for i in (0, 3))
    ax.colour_w.value = "flags"   # other traces: the clicks still open pairs
    tr = next(t for t in ax.figures["scatter"].data if t.name.startswith("duplicate or swapped"))
    i = list(int(c[0]) for c in tr.customdata).index(SWAPPED)
    tr._dispatch_on_click(Points(point_inds=[i], xs=[tr.x[i]], ys=[tr.y[i]], trace_name=tr.name, trace_index=0), None)
    assert ax.selected == SWAPPED
    ax.close()


# --- the tokens ------------------------------------------------------------------------------------------------------

def by_hand(model, tokenizer, pair_text: dict) -> dict:
    "Each response token's log-prob under `model`, from one forward over prompt + response ids: no dpo_nb scoring code"
    row = tokenize_pairs([pair_text], tokenizer, max_length=64, max_prompt_length=16, warn=False)[0]
    out = {}
    with torch.no_grad():
        for side in ("chosen", "rejected"):
            ids = torch.tensor([row["prompt_ids"] + row[f"{side}_ids"]])
            lp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), -1).gather(-1, ids[0, 1:, None])[:, 0]
            out[side] = lp[len(row["prompt_ids"]) - 1:].numpy()
    return out


def test_token_colours_are_the_references_log_probs(ax, a, toy):
    pid = NEAR
    ax.open_pair(pid)
    d = a.data[[int(i) for i in a.data["pair_id"]].index(pid)]
    want = by_hand(toy.model, toy.tokenizer, {k: d[k] for k in ("prompt", "chosen", "rejected")})
    h = ax.html["tokens"]
    assert 'data-colour="ref_logp"' in h, h[:300]
    for side in ("chosen", "rejected"):
        block = re.search(rf'data-side="{side}">(.*?)</div>', h, re.S).group(1)
        got = np.array([float(x) for x in re.findall(r'data-ref-logp="([^"]+)"', block)])
        np.testing.assert_allclose(got, want[side], atol=2e-4)
        alpha = np.array([float(x) for x in re.findall(r"rgba\(166,54,3,([\d.]+)\)", block)])
        assert len(alpha) == len(got)
        assert np.all(np.diff(alpha[np.argsort(-got)]) >= -1e-9)   # less likely under the reference: never lighter
        assert np.isclose(got.sum(), a.pairs.set_index("pair_id").loc[pid, f"ref_{side}_logps"], atol=1e-3)
    assert "⚠" not in h.split('<div class="dpo-tokens"')[0]          # the sums agree with the audit: no warning


def test_another_model_is_caught(a, toy):
    other = copy.deepcopy(toy.model)
    with torch.no_grad(): next(other.parameters()).add_(0.5)
    ax = AuditExplorer(a, other, toy.tokenizer, mode="static", pair_id=3)
    assert "sum to" in ax.html["tokens"] and "another model, or other tokenization settings" in ax.html["tokens"]


def test_without_model_shows_texts(a):
    ax = AuditExplorer(a.pairs, data=a.data, mode="static", pair_id=NEAR)
    assert ax.tokens is None and "pass model=" in ax.html["tokens"] and "well ," in ax.html["tokens"]
    bare = AuditExplorer(a.pairs, mode="static")
    assert (bare.table["prompt"] == "").all() and "pass model=" in bare.html["tokens"]   # no data: no texts, and no error
    with pytest.raises(ValueError, match="together"): AuditExplorer(a, model=object())


# --- the static copy -------------------------------------------------------------------------------------------------

def test_static_copy_has_the_figures_table_and_pair(ax, a):
    ax.filter_w.value = "flagged"
    ax.open_pair(SWAPPED)
    h = ax.to_html()
    assert h.count('class="plotly-graph-div"') == 2                     # the scatter and the length bias
    assert "CHES against the reference" in h and "Length bias of" in h
    assert 'class="dpo-audit-table"' in h and f'<tr data-pair="{SWAPPED}"' in h and 'data-colour="ref_logp"' in h
    names = [n for _, n in ax._items()]
    assert names == ["summary", "table", "pair", "tokens", "scatter", "length"]
    data = _plain(ax._static_bundle("scatter")["application/vnd.plotly.v1+json"]["data"])
    ids = {int(c[0]) for tr in data[:-1] for c in np.asarray(tr["customdata"])}
    assert ids == set(a.pairs["pair_id"])                                # every pair is a point of the static figure
    assert np.asarray(data[-1]["customdata"]).tolist() == [[float(SWAPPED)]]   # the open pair, starred


def test_portable_mode_builds_and_redraws(a, toy):
    "Colab and VS Code: core ipywidgets, the figures drawn into Outputs; the list still opens pairs and moves the star"
    import ipywidgets as W
    ax = AuditExplorer(a, toy.model, toy.tokenizer, mode="portable")
    assert isinstance(ax.widget, W.VBox) and isinstance(ax.fig_view("scatter"), W.Output)
    target = listed_ids(ax)[3]
    ax.list_w.value = target
    assert ax.selected == target and star(ax)[0] == [a.pairs.set_index("pair_id").loc[target, "ref_preference"]]
    assert f'data-pair="{target}"' in ax.to_html()
    ax.close()
