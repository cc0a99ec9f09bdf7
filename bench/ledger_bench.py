"""The per-pair ledger at scale (issue 10): a `History` filled the way a real run fills it, then measured.

100,000 training pairs x 3 epochs at batch size 64 (4,686 optimizer steps), each step one `log_pairs` call with every
column `DPOTrainer._record_step` logs (float32 arrays, as the trainer hands them over), plus one `log_step`; every
`--eval-every` steps an evaluation of 2,000 eval pairs (`log_pairs("eval")` + `log_eval`), two KL estimates with their
per-sample values; every `--probe-every` steps (the trainer's default, 10) the probe pairs token by token, as
`DPOTrainer.probe` logs them (one dict per token, each token's text decoded afresh); the texts of every pair
(`add_texts`, as `DPOTrainer._record_texts`). Then:

(a) memory: what the History holds after logging (its columnar chunks), after its tables are built, and after the
    report and the inspector have cached their per-pair tables too, per recorded pair scoring: the History's own
    arrays and objects walked, each buffer and each distinct python object counted once however many arrays, views
    and frames share it (`--tracemalloc` cross-checks the total with tracemalloc plus pyarrow's pool); the pair ledger
    (pairs, steps, evals, KL) and the probe tokens apart, the texts (the dataset's own, one copy per pair) apart; the
    process's RSS growth (psutil);
(b) `History.save`: on-disk size, save and load times;
(c) `write_report` on the History in memory (it saves the History too, its default), and `report_from_dir` on the
    saved folder (`dpo-nb report`: load, then the same); the HTML's size;
(d) the PairInspector (06b_widgets): switching pair_id (`--switches` times, random pairs) and split (back and forth),
    median and p90, in static mode in this process (and, with --kernel, in widget mode inside a real ipykernel,
    FigureWidget messages serialized and sent over ZMQ, as bench/widgets_bench.py does).

Goals (issue 10): History under 200 bytes per recorded scoring in memory; report under 30 s; inspector switch median
under 100 ms.

    python bench/ledger_bench.py                 # full size (1.5-3 minutes on 2 shared cores)
    python bench/ledger_bench.py --scale 0.1     # 10,000 pairs, for a quick check (~20 s)
    python bench/ledger_bench.py --kernel        # also the widget-mode inspector in an ipykernel (+1-2 minutes)
    python bench/ledger_bench.py --probe-prompt once   # probe prompts recorded at the first probe only (a proposed change)

DPO_NB_ROOT=/path/to/another/checkout runs it on another copy of the package (to compare before and after a change).
"""
from __future__ import annotations

import argparse, gc, json, os, platform, statistics, sys, tempfile, time, tracemalloc, warnings
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, os.environ.get("DPO_NB_ROOT", str(ROOT)))  # (DPO_NB_ROOT: another copy of the package, to compare)

import numpy as np
import pandas as pd

# --- the run ----------------------------------------------------------------------------------------------------------

_WORDS = ("the", "a", "to", "and", "of", "step", "first", "then", "check", "water", "bread", "code", "list", "map", "you",
          "can", "should", "never", "always", "it", "is", "not", "small", "start", "ask", "help", "why", "how")


def _texts(rng, n: int, n_words: int, pool: int = 2_000) -> list:
    "n distinct texts of about `n_words` words (fresh str objects, as a tokenized dataset's columns hand them over)"
    base = [" ".join(rng.choice(_WORDS, n_words)) for _ in range(min(n, pool))]
    return [f"({i}) {base[i % len(base)]}" for i in range(n)]


def build_history(n_pairs=100_000, epochs=3, batch_size=64, n_eval=2_000, eval_every=250, probe_every=10, n_probe=4,
                  probe_len=(128, 96, 96), kl_samples=16, text_words=(40, 80, 80), seed=0, beta=0.1, probe_prompt="every"):
    "A History filled call by call as `DPOTrainer.fit` fills it (the numbers are random walks: their values do not matter here)"
    from dpo_nb.history import History
    rng = np.random.default_rng(seed)
    h = History(beta=beta, loss_type="sigmoid", model="ledger-bench", total_steps=None)
    per_epoch = n_pairs // batch_size  # every batch full, as `batch_rows`
    n_steps = per_epoch * epochs
    h.meta["total_steps"] = n_steps
    # the texts of every pair (DPOTrainer._record_texts: one DataFrame per split)
    for split, n in (("train", n_pairs), ("eval", n_eval)):
        h.add_texts(pd.DataFrame(dict(pair_id=np.arange(n), split=split,
                                      prompt=_texts(rng, n, text_words[0]), chosen=_texts(rng, n, text_words[1]),
                                      rejected=_texts(rng, n, text_words[2]))))
    ref = {s: -rng.uniform(15, 70, (n, 2)).astype(np.float32) for s, n in (("train", n_pairs), ("eval", n_eval))}
    drift = {s: rng.normal([0.0, -0.3], 0.1, (n, 2)).astype(np.float32) for s, n in (("train", n_pairs), ("eval", n_eval))}
    probe_tok = [[rng.integers(0, 32000, L) for L in probe_len] for _ in range(n_probe)]

    def scores(split, ids, step):
        "What `_micro_records` hands over: float32 numpy arrays (torch .float().cpu().numpy())"
        rc, rr = ref[split][ids, 0], ref[split][ids, 1]
        pc = rc + drift[split][ids, 0] * step / 100 + rng.normal(0, 0.3, len(ids)).astype(np.float32)
        pr = rr + drift[split][ids, 1] * step / 100 + rng.normal(0, 0.3, len(ids)).astype(np.float32)
        r_c, r_r = np.float32(beta) * (pc - rc), np.float32(beta) * (pr - rr)
        losses = np.logaddexp(np.float32(0), -(r_c - r_r)).astype(np.float32)
        w = (1 / (1 + np.exp(r_c - r_r))).astype(np.float32)
        return dict(pair_id=np.asarray(ids, dtype=np.int64), losses=losses, chosen_logps=pc, rejected_logps=pr,
                    ref_chosen_logps=rc, ref_rejected_logps=rr, chosen_reward=r_c, rejected_reward=r_r,
                    weight_chosen=w, weight_rejected=w.copy(), loss_batch=np.zeros(len(ids), dtype=np.int64))

    def log(step, split, p):  # DPOTrainer._record_step / evaluate, column for column
        margin = p["chosen_reward"] - p["rejected_reward"]
        h.log_pairs(step, split, p["pair_id"], chosen_logps=p["chosen_logps"], rejected_logps=p["rejected_logps"],
                    ref_chosen_logps=p["ref_chosen_logps"], ref_rejected_logps=p["ref_rejected_logps"],
                    chosen_reward=p["chosen_reward"], rejected_reward=p["rejected_reward"], margin=margin,
                    grad_weight=(p["weight_chosen"] + p["weight_rejected"]) / 2, weight_chosen=p["weight_chosen"],
                    weight_rejected=p["weight_rejected"], loss=p["losses"], loss_batch=p["loss_batch"], wpo_weight=p.get("wpo_weight"))
        m = p["chosen_reward"] - p["rejected_reward"]
        return {"loss": float(p["losses"].mean()), "rewards/chosen": float(p["chosen_reward"].mean()),
                "rewards/rejected": float(p["rejected_reward"].mean()), "rewards/margins": float(m.mean()),
                "rewards/accuracies": float((m > 0).mean()), "logps/chosen": float(p["chosen_logps"].mean()),
                "logps/rejected": float(p["rejected_logps"].mean())}

    def views(step):  # DPOTrainer._checkpoint_views: evaluate, probe, KL
        if eval_every and (step % eval_every == 0 or step in (0, n_steps)):
            h.log_eval(step, **log(step, "eval", scores("eval", np.arange(n_eval), step)))
            kl = rng.normal(0.01 * step / 100, 0.05, kl_samples).astype(np.float32)
            h.log_kl(step, "sampled", float(kl.mean()), kl_samples, note="at most 32 new tokens; nats per sample",
                     se=float(kl.std() / 4), values=kl)
            h.log_kl(step, "token_exact", float(kl.mean() / 30), kl_samples * 30, note="nats per token, along held-out chosen responses",
                     se=float(kl.std() / 120), values=kl / 30)
        if probe_every and (step % probe_every == 0 or step in (0, n_steps)):
            recs = []  # DPOTrainer.probe: one dict per token
            for pid, toks in enumerate(probe_tok):
                for side, ids in zip(("prompt", "chosen", "rejected"), toks):
                    if side == "prompt" and probe_prompt == "once" and step > 0: continue  # (the prompt recorded at the first probe only)
                    resp = side != "prompt"
                    lp = (-rng.uniform(0, 5, (2, len(ids)))).astype(np.float32).tolist() if resp else [[float("nan")] * len(ids)] * 2
                    for t, tid in enumerate(ids.tolist()):
                        recs.append(dict(step=step, pair_id=pid, side=side, position=t, token_id=tid,
                                         token=f"\u2581w{tid}",  # a fresh str each time, as tokenizer.decode gives
                                         logp=lp[0][t], ref_logp=lp[1][t]))
            h.log_tokens(recs)

    views(0)
    for e in range(epochs):
        perm = np.random.default_rng([seed, e]).permutation(n_pairs)
        for i in range(per_epoch):
            step = e * per_epoch + i + 1
            m = log(step, "train", scores("train", perm[i * batch_size:(i + 1) * batch_size], step))
            h.log_step(step, epoch=step / per_epoch, **m, lr=5e-6, grad_norm=float(rng.uniform(1, 9)), tokens_per_s=1200.0,
                       pairs_seen=step * batch_size)
            views(step)
    return h


# --- measuring --------------------------------------------------------------------------------------------------------

def _held() -> int:
    "Bytes allocated and still held: python/numpy (tracemalloc) plus pyarrow's memory pool (pandas' str columns live there)"
    import pyarrow as pa
    return tracemalloc.get_traced_memory()[0] + pa.total_allocated_bytes()


class Sizer:
    "Bytes held by objects, each buffer and python object counted once however many arrays, views and frames share it"
    def __init__(self): self.seen = set()

    def _once(self, key, n) -> int:
        if key in self.seen: return 0
        self.seen.add(key); return n

    def np(self, a: np.ndarray) -> int:
        base = a
        while isinstance(base.base, np.ndarray): base = base.base
        n = self._once(("buf", base.__array_interface__["data"][0]), base.nbytes)
        n += self._once(("obj", id(a)), sys.getsizeof(a) - (a.nbytes if a.flags.owndata else 0))  # (the array object itself)
        if a.dtype == object: n += sum(self.obj(x) for x in a.ravel())
        return n

    def arrow(self, ca) -> int:
        chunks = ca.chunks if hasattr(ca, "chunks") else [ca]
        return sum(self._once(("buf", b.address), b.size) for c in chunks for b in c.buffers() if b is not None)

    def series(self, s: pd.Series) -> int:
        arr = s.array
        if hasattr(arr, "_pa_array"): return self.arrow(arr._pa_array)
        if isinstance(arr, pd.Categorical): return self.np(arr.codes) + self.series(pd.Series(arr.categories))
        if hasattr(arr, "_ndarray"): return self.np(arr._ndarray)
        return self.np(np.asarray(arr))

    def obj(self, x) -> int:
        if isinstance(x, (bool, type(None))) or (isinstance(x, int) and -5 <= x <= 256): return 0  # interned by python
        if isinstance(x, np.ndarray): return self.np(x)
        if isinstance(x, pd.DataFrame):
            # (not sys.getsizeof: pandas' __sizeof__ is memory_usage(deep=True), which the columns count already)
            idx = 0 if isinstance(x.index, pd.RangeIndex) else self.np(x.index.to_numpy())
            return self._once(("obj", id(x)), object.__sizeof__(x)) + sum(self.series(x[c]) for c in x.columns) + idx
        if isinstance(x, pd.Series): return self.series(x)
        n = self._once(("obj", id(x)), sys.getsizeof(x))
        if not n: return 0
        if isinstance(x, dict): n += sum(self.obj(k) + self.obj(v) for k, v in x.items())
        elif isinstance(x, (list, tuple, set)): n += sum(self.obj(v) for v in x)
        return n


def history_bytes(h) -> dict:
    "What a History holds, by part: its logged rows and chunks first, then its cache of built tables (what those add)"
    sz = Sizer()
    out = {name: sz.obj(getattr(h, f"_{name}")) for name in ("pairs", "tokens", "texts", "steps", "evals", "kl")}
    out["cache"] = {"/".join(map(str, k)): sz.obj(v) for k, v in h._cache.items()}
    return out


def _ledger(b: dict, tokens: bool = True) -> int:
    "The bytes that grow with the run: everything but the texts (the dataset's own, one copy per pair); without `tokens`, the probe tokens left out too"
    drop = {"texts", "cache"} | (set() if tokens else {"tokens"})
    return sum(v for k, v in b.items() if k not in drop) + sum(v for k, v in b["cache"].items()
                                                               if k.split("/")[0] != "texts" and (tokens or k.split("/")[0] != "tokens"))


def _all(b: dict) -> int: return sum(v for k, v in b.items() if k != "cache") + sum(b["cache"].values())


def _texts_bytes(b: dict) -> int: return b["texts"] + b["cache"].get("texts", 0)


def _rss() -> int | None:
    try:
        import psutil
        return psutil.Process().memory_info().rss
    except ImportError: return None


def _scorings(h) -> dict:
    n = {}
    for ch in h._pairs:
        s = ch["split"][0] if len(ch["split"]) else "?"
        n[s] = n.get(s, 0) + len(ch["pair_id"])
    return n


def _pct(ms, q):
    s = sorted(ms)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def measure_memory(kw, trace: bool = False) -> tuple:
    "Build the History (timed); its bytes by part after logging and after its tables are built; RSS growth; with `trace`, tracemalloc's count too"
    gc.collect()
    rss0 = _rss()
    if trace: tracemalloc.start(); base = _held()
    t0 = time.perf_counter()
    h = build_history(**kw)
    t_build = time.perf_counter() - t0
    gc.collect()
    res = dict(build_s=t_build, logged=history_bytes(h))
    if trace: res["traced_logged"] = _held() - base
    tables = {}
    for name in ("pairs", "steps", "evals", "tokens", "kl", "texts"):
        t1 = time.perf_counter(); getattr(h, name); tables[name] = time.perf_counter() - t1
    res.update(table_s=tables, tables_s=sum(tables.values()))
    gc.collect()
    res["built"] = history_bytes(h)
    if trace: res["traced_built"] = _held() - base; tracemalloc.stop()
    rss1 = _rss()
    res["rss_growth"] = None if rss0 is None else rss1 - rss0
    res["frame_mem"] = {name: int(getattr(h, name).memory_usage(deep=True).sum()) for name in ("pairs", "tokens", "texts")}
    res["frame_own"] = {name: Sizer().obj(getattr(h, name)) for name in ("pairs", "tokens", "texts")}  # (a shared string counted once)
    return h, res


def measure_save(h, tmp: Path) -> dict:
    from dpo_nb.history import History
    d = tmp / "history"
    t0 = time.perf_counter(); h.save(d); t_save = time.perf_counter() - t0
    sizes = {f.stem: f.stat().st_size for f in d.iterdir()}
    t0 = time.perf_counter(); h2 = History.load(d); t_load = time.perf_counter() - t0
    t0 = time.perf_counter(); _ = h2.pairs; t_pairs = time.perf_counter() - t0
    assert len(h2.pairs) == len(h.pairs)
    return dict(save_s=t_save, load_s=t_load, loaded_pairs_s=t_pairs, sizes=sizes, total=sum(sizes.values()))


def measure_report(h, tmp: Path) -> dict:
    "`write_report` on the History in memory (as `fit` leaves it), and `report_from_dir` on its saved folder (`dpo-nb report`: load + report)"
    from dpo_nb.report import write_report, report_from_dir
    t0 = time.perf_counter()
    path = write_report(h, tmp / "report")
    t = time.perf_counter() - t0
    t0 = time.perf_counter()
    report_from_dir(tmp / "history", out_dir=tmp / "report_again")
    return dict(report_s=t, from_dir_s=time.perf_counter() - t0, html_bytes=path.stat().st_size)


SWITCH = r'''
import json, sys, time, warnings
import numpy as np
sys.path.insert(0, ROOT)
from ledger_bench import build_history, switch_times
warnings.filterwarnings("ignore")
h = build_history(**KW)
print("RESULT " + json.dumps(switch_times(h, MODE, N_SWITCH)))
'''


def switch_times(h, mode, n_switch: int, seed: int = 0) -> dict:
    "Construct a PairInspector on `h`, then switch pair_id `n_switch` times and split back and forth"
    from dpo_nb.widgets import PairInspector, widget_mode
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    ins = PairInspector(h, split="train", mode=mode)
    _ = ins.widget if ins.mode != "static" else None
    res = {"mode": ins.mode, "construct_s": time.perf_counter() - t0}
    n_train = int(h.pairs["pair_id"].max()) + 1
    ids = rng.choice(n_train, size=n_switch + 5, replace=False)
    for i in ids[:5]: ins.id_w.value = int(i)  # warm-up
    out = []
    for i in ids[5:]:
        t = time.perf_counter(); ins.id_w.value = int(i); out.append(1000 * (time.perf_counter() - t))
    assert ins.pair_id == int(ids[-1]) and ins.figures["trajectory"].layout.meta["pair_id"] == ins.pair_id
    res["by_id_ms"] = out
    out = []
    for k in range(max(4, n_switch // 10)):
        t = time.perf_counter(); ins.split_w.value = "eval" if k % 2 == 0 else "train"; out.append(1000 * (time.perf_counter() - t))
    res["split_ms"] = out
    return res


def measure_switch(h, n_switch: int, kernel: bool, kw: dict) -> dict:
    res = {"static, this process": switch_times(h, "static", n_switch)}
    if kernel:
        sys.path.insert(0, str(ROOT / "bench"))
        from widgets_bench import run_in_kernel
        code = SWITCH.replace("ROOT", repr(str(ROOT / "bench"))).replace("KW", repr(kw)).replace("MODE", "None").replace("N_SWITCH", str(n_switch))
        res["widget, in an ipykernel"] = run_in_kernel(code, 1800)
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of 100,000 pairs (and 2,000 eval pairs)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--probe-every", type=int, default=10, help="the trainer's default; 0 for no probe tokens")
    ap.add_argument("--probe-prompt", choices=["every", "once"], default="every",
                    help="record the probe pairs' prompt tokens at every probe (as DPOTrainer.probe does today) or at the first only")
    ap.add_argument("--switches", type=int, default=300)
    ap.add_argument("--kernel", action="store_true", help="also time the widget-mode inspector in a real ipykernel")
    ap.add_argument("--tracemalloc", action="store_true", help="cross-check the byte counts with tracemalloc (slow)")
    ap.add_argument("--json", action="store_true", help="print the results as one JSON object too")
    a = ap.parse_args()
    warnings.filterwarnings("ignore")
    kw = dict(n_pairs=int(100_000 * a.scale), epochs=a.epochs, batch_size=a.batch_size, n_eval=max(64, int(2_000 * a.scale)),
              eval_every=a.eval_every, probe_every=a.probe_every, probe_prompt=a.probe_prompt)
    t_all = time.time()
    print(f"== building the History: {kw}", flush=True)
    h, mem = measure_memory(kw, a.tracemalloc)
    sc = h.pairs["split"].value_counts().to_dict()
    n_sc = sum(sc.values())
    n_tok = len(h.tokens)
    lg, bt = mem["logged"], mem["built"]
    print(f"   {h!r}\n   scorings {sc}, token rows {n_tok}; logged in {mem['build_s']:.1f} s, tables built in {mem['tables_s']:.1f} s "
          f"{ {k: round(v, 2) for k, v in mem['table_s'].items()} }\n   held after logging {lg}\n   after the tables {bt}", flush=True)
    if a.tracemalloc: print(f"   tracemalloc + arrow pool: {mem['traced_logged'] / 1e6:.1f} MB after logging, {mem['traced_built'] / 1e6:.1f} MB after the tables "
                            f"(the walk: {_all(lg) / 1e6:.1f} MB, {_all(bt) / 1e6:.1f} MB)", flush=True)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        sv = measure_save(h, tmp)
        print(f"   save {sv['save_s']:.1f} s, {sv['total'] / 1e6:.1f} MB {sv['sizes']}; load {sv['load_s']:.1f} s (+ pairs {sv['loaded_pairs_s']:.2f} s)", flush=True)
        rp = measure_report(h, tmp)
        print(f"   report {rp['report_s']:.1f} s, {rp['html_bytes'] / 1e6:.1f} MB; from the saved folder {rp['from_dir_s']:.1f} s", flush=True)
    sw = measure_switch(h, a.switches, a.kernel, kw)
    gc.collect()
    used = history_bytes(h)  # after the report and the inspector: their derived tables cached too
    print(f"   after the report and the inspector {used}", flush=True)
    load = os.getloadavg()
    per = lambda b: b / n_sc
    ok = lambda v, lim, unit: f"< {lim} {unit}" + (" ✓" if v < lim else " ✗")
    mb = lambda b: f"{b / 1e6:.1f} MB"
    rows = [
        ("pair scorings recorded (train + eval)", f"{n_sc:,} ({sc.get('train', 0):,} + {sc.get('eval', 0):,})", ""),
        ("probe token rows / KL rows / steps / evaluations", f"{n_tok:,} / {len(h.kl):,} / {len(h.steps):,} / {len(h.evals):,}", ""),
        ("pair ledger after logging: pairs + steps + evals + KL",
         f"{mb(_ledger(lg, False))} = **{per(_ledger(lg, False)):.0f} B / scoring**", ok(per(_ledger(lg, False)), 200, "B")),
        ("... with its tables built (`.pairs` ... cached)",
         f"{mb(_ledger(bt, False))} = **{per(_ledger(bt, False)):.0f} B / scoring**", ok(per(_ledger(bt, False)), 200, "B")),
        ("... and after the report and the inspector (their per-pair tables cached too)",
         f"{mb(_ledger(used, False))} = **{per(_ledger(used, False)):.0f} B / scoring**", ok(per(_ledger(used, False)), 200, "B")),
        (f"whole History but the texts (+ {n_tok:,} probe token rows): after logging / tables built / after report and inspector",
         " / ".join(f"{mb(_ledger(x))} = **{per(_ledger(x)):.0f}**" for x in (lg, bt, used)) + " B / scoring",
         ok(per(_ledger(bt)), 200, "B")),
        ("texts of every pair (one copy per pair, not per scoring)", f"{mb(_texts_bytes(lg))} logged, {mb(_texts_bytes(bt))} with `.texts` built", ""),
        ("`.pairs` DataFrame alone, memory_usage(deep=True)", f"{mb(mem['frame_mem']['pairs'])} = {mem['frame_mem']['pairs'] / len(h.pairs):.0f} B / row", ""),
        ("`.tokens` DataFrame alone (each distinct string counted once; memory_usage(deep=True) counts it on every row)",
         f"{mb(mem['frame_own']['tokens'])} = {mem['frame_own']['tokens'] / max(1, n_tok):.0f} B / row (deep=True: {mem['frame_mem']['tokens'] / max(1, n_tok):.0f})", ""),
        ("process RSS growth (logging + tables, texts included)", "n/a" if mem["rss_growth"] is None else mb(mem["rss_growth"]), ""),
        ("building the History (random numbers + every log call) / building all its tables", f"{mem['build_s']:.1f} s / {mem['tables_s']:.1f} s", ""),
        ("`History.save`: on disk", f"{mb(sv['total'])} (pairs {mb(sv['sizes'].get('pairs', 0))}, tokens {mb(sv['sizes'].get('tokens', 0))}, texts {mb(sv['sizes'].get('texts', 0))})", ""),
        ("`History.save` / `History.load` (+ `.pairs`)", f"{sv['save_s']:.1f} s / {sv['load_s']:.1f} s (+ {sv['loaded_pairs_s']:.2f} s)", ""),
        ("`write_report` (the History in memory; it saves the History too)", f"**{rp['report_s']:.1f} s**, HTML {mb(rp['html_bytes'])}", ok(rp["report_s"], 30, "s")),
        ("`report_from_dir` (`dpo-nb report`: load the saved folder, then the same)", f"**{rp['from_dir_s']:.1f} s**", ok(rp["from_dir_s"], 30, "s")),
    ]
    for where, r in sw.items():
        rows.append((f"PairInspector ({where}): construct", f"{r['construct_s']:.2f} s", ""))
        for key, what in (("by_id_ms", "switch pair_id"), ("split_ms", "switch split")):
            v = r[key]
            rows.append((f"... {what}, median / p90 (n={len(v)})", f"**{statistics.median(v):.1f} ms** / {_pct(v, 0.9):.1f} ms",
                         "median " + ok(statistics.median(v), 100, "ms")))
    md = [f"Ledger at {kw['n_pairs']:,} pairs x {a.epochs} epochs, batch {a.batch_size}, {kw['n_eval']:,} eval pairs every "
          f"{a.eval_every} steps, probes every {a.probe_every} steps (prompt tokens: {a.probe_prompt}) ({platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, pandas {pd.__version__}, numpy {np.__version__}; load average {load[0]:.2f} "
          f"{load[1]:.2f} {load[2]:.2f}; {date.today()}; {time.time() - t_all:.0f} s in all)", "",
          "| what | measured | goal |", "|---|---|---|"] + [f"| {w} | {m} | {g} |" for w, m, g in rows]
    print("\n" + "\n".join(md))
    if a.json: print(json.dumps(dict(kw=kw, mem=mem, save=sv, report=rp, switch=sw, load=load, scorings=sc), default=str))


if __name__ == "__main__":
    main()
