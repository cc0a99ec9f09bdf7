"""dpo_nb vs TRL's DPOTrainer, side by side: same model, same data, same batches, in the same process.

    python bench/vs_trl.py --scenario short          # one table
    python bench/vs_trl.py --scenario all --json     # one JSON object per scenario

Rows of the table (each a fresh copy of one saved initial model, trained on the same batches in the same order):
  dpo_nb       dpo_nb.train.DPOTrainer.train_step (reference log-probs precomputed, its default)
  TRL best     trl.DPOTrainer, its fastest honest configuration: precompute_ref_log_probs=True, logging off,
               no gradient checkpointing, fp32
  TRL default  trl.DPOTrainer with its defaults (reference model run every step, gradient checkpointing on,
               default logging), but fp32 so that its losses can be compared too
  floor        one plain forward+backward of the policy over the same concatenated [2B, L] tokens, with the
               standard `labels=` cross-entropy (no optimizer step): what a DPO step costs before any DPO work

Timing: each run does 1 + STEPS optimizer steps; the first (allocator and optimizer-state warm-up) is not timed, the
next STEPS are. Runs alternate between the tools, rotating the order each round; the table shows medians over
ROUNDS. pairs/s = pairs in the timed steps / their wall time; tokens/s = non-pad prompt+response tokens of both
sequences of every pair / the same time; pairs/CPU-s = the same pairs / the CPU time this process spent on them, a
cross-check that other processes competing for the cores cannot inflate (use it with --threads 1 on a shared
machine). Ratios are given as ratios of the medians and as the median of the per-round ratios.

Peak memory is measured in a fresh process per tool (so peaks cannot mix): on CPU the peak RSS during the 1 + STEPS
steps above the RSS just before them (glibc told to return freed memory, MALLOC_MMAP_THRESHOLD_=65536), on GPU
torch.cuda.max_memory_allocated above the memory allocated before them.

Agreement is checked, not assumed: TRL's tokenized ids equal ours row for row; its precomputed reference log-probs
equal ours (relative 1e-6); every step's loss equals ours (absolute 1e-5) for both TRL rows, in every run. The exit
status is 1 when any of that fails (the figures are still printed).
"""
from __future__ import annotations

import argparse, contextlib, copy, json, os, platform, statistics, subprocess, sys, tempfile, time, warnings
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

SCENARIOS = {  # each scenario: one or more cases (same model shape, different data or vocabulary)
    "short": [dict(case="short", vocab=4096, prompt=48, response=48)],
    "long-prompt": [dict(case="long-prompt", vocab=4096, prompt=256, response=32)],
    "big-vocab": [dict(case="big-vocab-32k", vocab=32000, prompt=48, response=48),
                  # TRL needs ~25 s per step here on 2 CPU cores: fewer steps, and its default row left out
                  dict(case="big-vocab-150k", vocab=150000, prompt=48, response=48, steps=2, skip_default=True)],
}
MODEL = dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
             max_position_embeddings=1024, tie_word_embeddings=False)
TOOLS = ("dpo_nb", "TRL best", "TRL default", "floor")
LR, BETA, SEED = 1e-4, 0.1, 0
LOSS_ATOL, LOGP_RTOL = 1e-5, 1e-6


# ---------------------------------------------------------------------------------------------------------- data
def word_tokenizer(vocab: int):
    "A word-level tokenizer `<pad> <s> </s> <unk> w0 w1 ...` with BOS prepended: no merges, so no boundary effects."
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast
    words = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **{f"w{i}": i + 4 for i in range(vocab - 4)}}
    t = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    t.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=t, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>")


def make_pairs(n: int, vocab: int, prompt: int, response: int, seed: int = SEED) -> list[dict]:
    "n explicit pairs of random words; prompt ~`prompt` tokens with BOS, responses ~`response` tokens with EOS (+-25%)."
    g = torch.Generator().manual_seed(seed)
    length = lambda mu: int(torch.randint(mu - mu // 4, mu + mu // 4 + 1, (1,), generator=g))
    text = lambda k: " ".join(f"w{i}" for i in torch.randint(0, vocab - 4, (k,), generator=g).tolist())
    return [dict(prompt=text(length(prompt) - 1), chosen=" " + text(length(response) - 1),
                 rejected=" " + text(length(response) - 1)) for _ in range(n)]


def setup(case: dict, batch_size: int, steps: int):
    "The tokenizer, the pairs in our row order, our tokenized dataset, and the row order both tools train in."
    from dpo_nb.data import load_preferences, tokenize_pairs
    from dpo_nb.train import batch_rows
    tok = word_tokenizer(case["vocab"])
    n = batch_size * (1 + steps)
    pairs = make_pairs(n, case["vocab"], case["prompt"], case["response"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = tokenize_pairs(load_preferences(pairs), tok, max_length=None, max_prompt_length=None)
    assert len(data) == n and not any(data["boundary_merge"]), "the word-level tokenizer must not merge across boundaries"
    order = [i for s in range(1 + steps) for i in batch_rows(n, batch_size, SEED, s)[0]]  # dpo_nb's batch order
    return tok, pairs, data, order


def initial_model(vocab: int):
    "The one saved initial state: a random-init Llama built from its config (no download)."
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(SEED)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, pad_token_id=0, bos_token_id=1, eos_token_id=2, **MODEL))


# ---------------------------------------------------------------------------------------------------------- tools
def _sync(dev):
    if dev.type == "cuda": torch.cuda.synchronize()


def _now():
    "(wall clock, this process's CPU time): CPU time is blind to other processes competing for the cores."
    return time.perf_counter(), time.process_time()


def _times(ends) -> dict:
    t = torch.tensor(ends, dtype=torch.float64)
    d = t.diff(dim=0)
    return dict(step_times=d[:, 0].tolist(), cpu_times=d[:, 1].tolist())


class Probe:
    "Marks the start of training for the memory measurement (a no-op when timing)."
    def __init__(self, dev, memory: bool): self.dev, self.memory, self.base = dev, memory, None

    def start(self):
        if not self.memory: return
        _sync(self.dev)
        if self.dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(); self.base = torch.cuda.memory_allocated()
        else:
            Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark (VmHWM) to the current RSS
            self.base = _status()["VmRSS"]

    def result(self) -> dict:
        _sync(self.dev)
        if self.dev.type == "cuda":
            peak = torch.cuda.max_memory_allocated()
        else: peak = _status()["VmHWM"]
        return dict(peak_mb=(peak - self.base) / 2**20, peak_abs_mb=peak / 2**20)


def _status() -> dict:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmHWM", "VmRSS")): k, v = line.split(":"); out[k] = int(v.split()[0]) * 1024
    return out


def loss_settings(args) -> dict:
    "The loss settings a run compares (`args.loss`: loss_type, loss_weights, f_divergence_type, ...; the same names in both)."
    return dict(getattr(args, "loss", None) or {})


def run_dpo_nb(pristine, tok, data, order, args, dev, probe):
    from dpo_nb.train import DPOConfig, DPOTrainer
    cfg = DPOConfig(**{"beta": BETA, **loss_settings(args)}, learning_rate=LR, lr_schedule="constant", warmup_ratio=0.0, weight_decay=0.0,
                    batch_size=args.batch_size, max_steps=1 + args.steps, max_grad_norm=1.0, seed=SEED, device=str(dev),
                    mixed_precision="no", progress=False, max_length=None, max_prompt_length=None,  # the data's limits (none)
                    ref_cache=False)  # score the reference afresh every run, so the agreement check sees computed numbers
    t = DPOTrainer(copy.deepcopy(pristine), tok, data, cfg, ref_model=copy.deepcopy(pristine) if cfg.sync_ref_model else None)
    probe.start()
    losses, ends = [], []
    for _ in range(1 + args.steps):
        losses.append(t.train_step()["loss"])
        _sync(dev); ends.append(_now())
    ref = t.ref_logps["train"][order].tolist() if "train" in t.ref_logps else None  # [n, 2], in TRL's row order (None: not precomputed)
    return dict(losses=losses, ref_logps=ref, **_times(ends))


def _trl_trainer_cls():
    import trl
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def __init__(self, dev, probe): self.dev, self.probe, self.ends = dev, probe, []
        def on_train_begin(self, args, state, control, **kw): self.probe.start()
        def on_step_end(self, args, state, control, **kw):
            _sync(self.dev); self.ends.append(_now())

    class Measured(trl.DPOTrainer):
        "TRL's DPOTrainer, recording each step's loss (one `.item()` more than it already does per step)."
        bench_losses: list

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            out = super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
            self.bench_losses.append((out[0] if return_outputs else out).detach().item())
            return out
    return Measured, Clock


def trl_config(best: bool, args, dev, out_dir):
    from trl import DPOConfig
    same = dict(output_dir=out_dir, per_device_train_batch_size=args.batch_size, max_steps=1 + args.steps,
                learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
                **{"beta": BETA, "loss_type": "sigmoid", **loss_settings(args)}, seed=SEED, bf16=False, fp16=False, use_cpu=dev.type == "cpu",
                report_to="none", save_strategy="no", disable_tqdm=True,
                train_sampling_strategy="sequential")  # our batch order: the dataset is given in dpo_nb's order
    if best:
        return DPOConfig(**same, precompute_ref_log_probs=True, precompute_ref_batch_size=16, logging_strategy="no",
                         gradient_checkpointing=False, max_length=None)
    return DPOConfig(**same)  # everything else at TRL's defaults


class _Null:
    def write(self, s): return len(s)
    def flush(self): pass


def run_trl(best: bool, pristine, tok, pairs, data, order, args, dev, probe):
    from datasets import Dataset
    Measured, Clock = _trl_trainer_cls()
    clock = Clock(dev, probe)
    with tempfile.TemporaryDirectory() as d, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = Dataset.from_list([pairs[i] for i in order])
        t = Measured(model=copy.deepcopy(pristine), ref_model=None if best else copy.deepcopy(pristine),
                     args=trl_config(best, args, dev, d), train_dataset=ds, processing_class=tok, callbacks=[clock])
        t.bench_losses = []
        # the ids TRL trains on are ours, row for row
        for k in ("prompt_ids", "chosen_ids", "rejected_ids"):
            assert t.train_dataset[k] == [data[i][k] for i in order], f"TRL's {k} differ from dpo_nb's"
        with contextlib.redirect_stdout(sys.stderr if os.environ.get('BENCH_VERBOSE') else _Null()):
            t.train()  # (its end-of-training summary line would otherwise land in our output)
    ref = ([list(x) for x in zip(t.train_dataset["ref_chosen_logps"], t.train_dataset["ref_rejected_logps"])]
           if best else None)
    return dict(losses=t.bench_losses, ref_logps=ref, **_times(clock.ends))


def run_floor(pristine, tok, data, order, args, dev, probe):
    from dpo_nb.data import PairCollator
    from dpo_nb.logps import concat_pair_batch
    model, collate = copy.deepcopy(pristine).to(dev).train(), PairCollator(tok)
    probe.start()
    ends = []
    for s in range(1 + args.steps):
        cat = concat_pair_batch(collate([data[i] for i in order[s * args.batch_size:(s + 1) * args.batch_size]]))
        ids, att = cat["input_ids"].to(dev), cat["attention_mask"].to(dev)
        labels = ids.masked_fill(cat["response_mask"].to(dev) == 0, -100)
        model(input_ids=ids, attention_mask=att, labels=labels).loss.backward()
        model.zero_grad(set_to_none=True)
        _sync(dev); ends.append(_now())
    return dict(losses=None, ref_logps=None, **_times(ends))


def run_tool(tool, pristine, tok, pairs, data, order, args, dev, memory=False):
    probe = Probe(dev, memory)
    if tool == "dpo_nb": r = run_dpo_nb(pristine, tok, data, order, args, dev, probe)
    elif tool == "TRL best": r = run_trl(True, pristine, tok, pairs, data, order, args, dev, probe)
    elif tool == "TRL default": r = run_trl(False, pristine, tok, pairs, data, order, args, dev, probe)
    else: r = run_floor(pristine, tok, data, order, args, dev, probe)
    if memory: r.update(probe.result())
    return r


# ---------------------------------------------------------------------------------------------------------- bench
def measure_memory(scenario, case_index, tool, args) -> dict:
    "Peak memory of one tool's run, in a fresh process."
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    cmd = [sys.executable, __file__, "--scenario", scenario, "--_memory", tool, "--_case", str(case_index),
           "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--device", args.device]
    cmd += ["--threads", str(args.threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0: raise RuntimeError(f"memory run of {tool} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def case_args(case: dict, args):
    "The run settings of one case: its own step count unless --steps was given, its own tool list."
    a = argparse.Namespace(**vars(args))
    if a.steps is None: a.steps = case.get("steps", 5)
    a.skip_default = a.skip_default or (case.get("skip_default", False) and not a.all_tools)
    return a


def bench_case(scenario, ci, case, args, dev, log) -> dict:
    args = case_args(case, args)
    tok, pairs, data, order = setup(case, args.batch_size, args.steps)
    pristine = initial_model(case["vocab"])
    tokens = sum(len(data[i]["prompt_ids"]) * 2 + len(data[i]["chosen_ids"]) + len(data[i]["rejected_ids"])
                 for i in order[args.batch_size:])  # the timed steps' real tokens
    pairs_timed = args.batch_size * args.steps
    tools = [t for t in TOOLS if not (args.skip_default and t == "TRL default")]
    runs = {t: [] for t in tools}
    load = [os.getloadavg()[0]]
    for r in range(args.rounds):
        k = r % len(tools)
        for tool in tools[k:] + tools[:k]:  # alternate, rotating which tool goes first
            res = run_tool(tool, pristine, tok, pairs, data, order, args, dev)
            runs[tool].append(res)
            log(f"  {case['case']} round {r + 1}/{args.rounds} {tool:<11} {pairs_timed / sum(res['step_times']):7.2f} pairs/s"
                f" ({pairs_timed / sum(res['cpu_times']):6.2f} per CPU-s)")
        load.append(os.getloadavg()[0])
    mem = {t: measure_memory(scenario, ci, t, args) for t in tools} if not args.no_memory else {}
    # agreement: every run's every step, and the reference log-probs
    ours = runs["dpo_nb"][0]
    agree = {}
    for t in ("TRL best", "TRL default"):
        if t not in runs: continue
        d = max(abs(a - b) for run, mine in zip(runs[t], runs["dpo_nb"]) for a, b in zip(run["losses"], mine["losses"]))
        n = {len(run["losses"]) for run in runs[t] + runs["dpo_nb"]}
        assert n == {1 + args.steps}, f"{t}: expected {1 + args.steps} losses per run, got {n}"
        agree[f"loss max |diff| vs {t}"] = d
    ref_ours, ref_trl = torch.tensor(ours["ref_logps"], dtype=torch.float64), torch.tensor(runs["TRL best"][0]["ref_logps"], dtype=torch.float64)
    agree["summed log-probs max rel diff vs TRL best"] = float(((ref_ours - ref_trl).abs() / ref_ours.abs()).max())
    agree["token ids identical"] = True  # asserted in every TRL run
    rows = {}
    for t in tools:
        pps = [pairs_timed / sum(x["step_times"]) for x in runs[t]]
        med = statistics.median(pps)
        cpu = statistics.median(pairs_timed / sum(x["cpu_times"]) for x in runs[t])
        rows[t] = {"pairs/s": med, "tokens/s": med * tokens / pairs_timed, "pairs/CPU-s": cpu, "pairs/s runs": pps,
                   "step-1 loss": runs[t][0]["losses"][0] if runs[t][0]["losses"] else None,
                   "losses": runs[t][0]["losses"], **({"peak_mb": mem[t]["peak_mb"], "peak_abs_mb": mem[t]["peak_abs_mb"]} if mem else {})}
    pairs_of = (("dpo_nb", "TRL best"), ("dpo_nb", "TRL default"), ("dpo_nb", "floor"), ("TRL best", "floor"))
    ratios = {f"{a} / {b} pairs/s": rows[a]["pairs/s"] / rows[b]["pairs/s"] for a, b in pairs_of if a in rows and b in rows}
    # the same ratios taken round by round (the two tools ran minutes apart at most), then their median
    ratios.update({f"{a} / {b} pairs/s, median of per-round ratios": statistics.median(
        sum(y["step_times"]) / sum(x["step_times"]) for x, y in zip(runs[a], runs[b])) for a, b in pairs_of if a in rows and b in rows})
    ratios.update({f"{a} / {b} pairs per CPU-s": rows[a]["pairs/CPU-s"] / rows[b]["pairs/CPU-s"]
                   for a, b in pairs_of if a in rows and b in rows})
    if mem:
        ratios.update({f"{a} / {b} peak memory": rows[a]["peak_mb"] / rows[b]["peak_mb"]
                       for a, b in (("dpo_nb", "TRL best"), ("dpo_nb", "TRL default")) if a in rows and b in rows})
    ok = all(v <= LOSS_ATOL for k, v in agree.items() if k.startswith("loss")) and \
        agree["summed log-probs max rel diff vs TRL best"] <= LOGP_RTOL
    return dict(case=case["case"], vocab=case["vocab"], prompt_tokens=case["prompt"], response_tokens=case["response"],
                steps=args.steps,
                rows=rows, ratios=ratios, agreement=agree, agree=ok, load_average=[min(load), max(load)])


def machine(dev) -> str:
    if dev.type == "cuda": return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def print_table(res: dict):
    print(f"\nscenario {res['scenario']}: {res['model']}; {res['batch_size']} pairs per batch; "
          f"medians of {res['rounds']} alternating runs; {res['device']} ({res['machine']})")
    for c in res["cases"]:
        print(f"\n{c['case']}: vocab {c['vocab']}, prompts ~{c['prompt_tokens']} tokens, responses ~{c['response_tokens']}, "
              f"{c.get('steps', res['steps'])} timed steps per run")
        hdr = (f"{'':<12}{'pairs/s':>9}{'tokens/s':>10}{'pairs/CPU-s':>12}{'peak MB':>9}{'step-1 loss':>13}{'x TRL best':>11}"
               f"{'mem x TRL best':>15}")
        print(hdr); print("-" * len(hdr))
        best = c["rows"]["TRL best"]
        for t, r in c["rows"].items():
            mem = f"{r['peak_mb']:9.0f}" if "peak_mb" in r else f"{'-':>9}"
            memx = f"{r['peak_mb'] / best['peak_mb']:15.2f}" if "peak_mb" in r else f"{'-':>15}"
            loss = f"{r['step-1 loss']:13.6f}" if r["step-1 loss"] is not None else f"{'-':>13}"
            print(f"{t:<12}{r['pairs/s']:9.2f}{r['tokens/s']:10.0f}{r['pairs/CPU-s']:12.2f}{mem}{loss}"
                  f"{r['pairs/s'] / best['pairs/s']:11.2f}{memx}")
        print("ratios:\n" + "\n".join(f"  {k} = {v:.2f}" for k, v in c["ratios"].items()))
        print(f"load average during the runs: {c['load_average'][0]:.1f} to {c['load_average'][1]:.1f}")
        a = c["agreement"]
        print("agreement: " + "; ".join(f"{k} = {v:.2e}" if isinstance(v, float) else f"{k} = {v}" for k, v in a.items())
              + f"  -> {'SAME' if c['agree'] else 'DIFFERENT'}")


def markdown_table(res: dict) -> str:
    "The same figures as `print_table`, as Markdown (for bench/README.md)."
    out = [f"**{res['scenario']}** ({res['device']}: {res['machine']}; {res['model']}; {res['batch_size']} pairs per batch; "
           f"medians of {res['rounds']} alternating runs; "
           + ", ".join(f"{k} {v}" for k, v in res["versions"].items()) + ")", ""]
    for c in res["cases"]:
        out += [f"*{c['case']}*: vocab {c['vocab']}, prompts ~{c['prompt_tokens']} tokens, responses ~{c['response_tokens']}, "
                f"{c.get('steps', res['steps'])} timed steps per run (load average {c['load_average'][0]:.1f} to {c['load_average'][1]:.1f})", "",
                "| | pairs/s | tokens/s | pairs/CPU-s | peak MB | step-1 loss | pairs/s x TRL best | memory x TRL best |",
                "|---|---:|---:|---:|---:|---:|---:|---:|"]
        best = c["rows"]["TRL best"]
        for t, r in c["rows"].items():
            mem = (f"{r['peak_mb']:.0f}", f"{r['peak_mb'] / best['peak_mb']:.2f}") if "peak_mb" in r else ("-", "-")
            loss = f"{r['step-1 loss']:.6f}" if r["step-1 loss"] is not None else "-"
            out.append(f"| {t} | {r['pairs/s']:.2f} | {r['tokens/s']:.0f} | {r['pairs/CPU-s']:.2f} | {mem[0]} | {loss} | "
                       f"{r['pairs/s'] / best['pairs/s']:.2f} | {mem[1]} |")
        a = c["agreement"]
        out += ["", "Ratios: " + "; ".join(f"{k} **{v:.2f}**" for k, v in c["ratios"].items()) + ".", "",
                "Agreement (" + ("same" if c["agree"] else "DIFFERENT") + "): " +
                "; ".join(f"{k} {v:.1e}" if isinstance(v, float) else f"{k}: {v}" for k, v in a.items()) + ".", ""]
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scenario", choices=[*SCENARIOS, "all"], help="which scenario to run (required unless --render)")
    p.add_argument("--json", action="store_true", help="print one JSON object per scenario instead of a table")
    p.add_argument("--markdown", action="store_true", help="print Markdown tables")
    p.add_argument("--render", metavar="FILE", help="print the tables of a saved --json run (one object per line) and exit")
    p.add_argument("--rounds", type=int, default=5, help="alternating runs per tool (medians over these)")
    p.add_argument("--steps", type=int, default=None,
                   help="timed steps per run, after one untimed warm-up step (default: 5; 2 for big-vocab-150k)")
    p.add_argument("--batch-size", type=int, default=8, help="pairs per batch")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: on a shared machine more threads wait on busy cores; 0: torch's default)")
    p.add_argument("--skip-default", action="store_true", help="leave out the TRL default row")
    p.add_argument("--all-tools", action="store_true", help="run the TRL default row also where a case leaves it out")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    p.add_argument("--_memory", help=argparse.SUPPRESS)
    p.add_argument("--_case", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not args.scenario and not args.render: p.error("--scenario is required")
    if args.render:
        for line in Path(args.render).read_text().splitlines():
            if line.strip(): print(markdown_table(json.loads(line)) if args.markdown else print_table(json.loads(line)) or "")
        return
    if args.threads: torch.set_num_threads(args.threads)  # (the memory runs get the same --threads)
    dev = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                       "cpu" if args.device == "auto" else args.device)
    args.device = dev.type
    import transformers, datasets
    transformers.logging.set_verbosity_error(); datasets.logging.set_verbosity_error()
    if args._memory:  # child process: one tool's peak memory
        case = SCENARIOS[args.scenario][args._case]
        args = case_args(case, args)
        tok, pairs, data, order = setup(case, args.batch_size, args.steps)
        r = run_tool(args._memory, initial_model(case["vocab"]), tok, pairs, data, order, args, dev, memory=True)
        print(json.dumps(dict(peak_mb=r["peak_mb"], peak_abs_mb=r["peak_abs_mb"])))
        return
    import trl
    log = (lambda s: print(s, file=sys.stderr, flush=True))
    all_agree = True
    for name in (SCENARIOS if args.scenario == "all" else [args.scenario]):
        res = dict(scenario=name, device=dev.type, machine=machine(dev), batch_size=args.batch_size, steps=args.steps,
                   rounds=args.rounds, versions=dict(torch=torch.__version__, transformers=transformers.__version__,
                                                      trl=trl.__version__),
                   model="random-init Llama (hidden {hidden_size}, {num_hidden_layers} layers, MLP {intermediate_size}, "
                         "{num_attention_heads} heads), fp32".format(**MODEL),
                   cases=[bench_case(name, i, c, args, dev, log) for i, c in enumerate(SCENARIOS[name])])
        if args.json: print(json.dumps(res), flush=True)
        elif args.markdown: print(markdown_table(res), flush=True)
        else: print_table(res)
        all_agree = all_agree and all(c["agree"] for c in res["cases"])
    if not all_agree:
        print("dpo_nb and TRL disagree (see the agreement lines)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
