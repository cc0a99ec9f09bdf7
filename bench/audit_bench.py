"""Benchmark of the audit (04a_audit): time and memory of `audit` on the toy task, beside `score_pairs` on the same pairs.

A measurement, not a timed test. Each case runs in a fresh subprocess, so its peak resident memory is its own; the
peer is `score_pairs` (01_logps), the reference log-probs alone, which any audit has to compute: the ratio says what
the hidden states (CHES), the edit distances and the duplicate search cost on top.

    python bench/audit_bench.py                  # 10,000 pairs, prints a Markdown table
    python bench/audit_bench.py --pairs 2000 --threads 2
"""
import argparse, json, os, resource, subprocess, sys, time

CASE = r"""
import json, resource, sys, time, warnings, torch
torch.set_num_threads({threads})
from datasets import concatenate_datasets
from dpo_nb.toy import load_toy
from dpo_nb.data import load_preferences
toy = load_toy()
n = {pairs}
pool = concatenate_datasets([toy.train, toy.test])
data = concatenate_datasets([pool] * (n // len(pool) + 1)).select(range(n))   # repeats beyond the toy's 3,400: found as duplicates
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    data = load_preferences(data)
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
if "{case}" == "audit":
    from dpo_nb.audit import audit
    a = audit(data, toy.model, toy.tokenizer, max_length=64, max_prompt_length=16, batch_size=64)
    rows = len(a.pairs)
else:
    from dpo_nb.logps import score_pairs
    rows = len(score_pairs(toy.model, toy.tokenizer, data, max_length=64, max_prompt_length=16, batch_size=64))
secs = time.perf_counter() - t0
print(json.dumps(dict(case="{case}", rows=rows, seconds=secs, peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      rss_before_mb=rss0 / 1024)))
"""


def run(case, pairs, threads):
    out = subprocess.run([sys.executable, "-c", CASE.format(case=case, pairs=pairs, threads=threads)], capture_output=True, text=True,
                         env=dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_DATASETS_OFFLINE="1"))
    if out.returncode: raise SystemExit(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=10_000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=2, help="alternating runs of each case; the table shows the fastest")
    args = ap.parse_args()
    res = {"score_pairs": [], "audit": []}
    for _ in range(args.rounds):
        for case in res: res[case].append(run(case, args.pairs, args.threads))
    best = {k: min(v, key=lambda r: r["seconds"]) for k, v in res.items()}
    load = os.getloadavg()[0]
    print(f"| {args.pairs:,} toy pairs, {args.threads} thread(s) | seconds | pairs / s | peak RSS (MB) | RSS after loading (MB) |")
    print("|---|---|---|---|---|")
    for k, r in best.items():
        print(f"| {k} | {r['seconds']:.1f} | {r['rows'] / r['seconds']:,.0f} | {r['peak_rss_mb']:.0f} | {r['rss_before_mb']:.0f} |")
    print(f"\naudit / score_pairs time: {best['audit']['seconds'] / best['score_pairs']['seconds']:.2f}; "
          f"fastest of {args.rounds} alternating runs each, load average {load:.1f} at the end")


if __name__ == "__main__":
    main()
