"""One command for a CUDA machine: dpo_nb and TRL's DPOTrainer side by side on random-init models shaped like real ones.

    python bench/gpu_check.py                                  # on a GPU (H100/H200: well under 8 minutes)
    python bench/gpu_check.py --device cpu --tiny --out DIR    # the same runs at toy sizes, on CPU (~1 minute)

Writes DIR/gpu_check.json (everything) and DIR/gpu_check.md (one table; also printed to stdout); progress goes to stderr.

Runs (one row each; shapes built from transformers configs, random-init, saved once per shape in bf16 with
`save_pretrained`, as a Hub checkpoint would arrive; nothing is downloaded):
  smollm2-135m  LlamaConfig like SmolLM2-135M  (hidden 576, 30 layers, 9 heads / 3 kv, MLP 1536, vocab 49152, tied)
  qwen2.5-0.5b  Qwen2Config like Qwen2.5-0.5B  (hidden 896, 24 layers, 14 heads / 2 kv, MLP 4864, vocab 151936, tied)
  1.5b          Qwen2Config like Qwen2.5-1.5B  (hidden 1536, 28 layers, 12 heads / 2 kv, MLP 8960, vocab 151936, tied)
  --tiny replaces each by a 2-layer model (hidden 64-96, vocab 512-1024) and adds one fp32 run (tight agreement check).
Modes:
  full            full fine-tuning, bf16 autocast, fp32 master weights. dpo_nb gets the checkpoint as stored (bf16) and
                  upcasts the trainable weights itself (DPOConfig(mixed_precision="bf16", master_weights="fp32")); TRL
                  gets the same checkpoint loaded in fp32 (the same values) with bf16=True (its autocast).
  lora            peft LoRA r=16, alpha 32, all-linear, on the bf16 base as stored; adapters fp32 (peft's default);
                  bf16 autocast; both tools get the same peft model (LoRA init seeded identically).
  qlora           NF4 4-bit base (dpo_nb.models.load_model(folder, load_in_4bit=True)) + the same LoRA; skipped, with
                  the reason recorded, where bitsandbytes is missing. TRL 1.16 casts the adapters of a quantized model
                  to bf16 (its QLoRA rule); dpo_nb keeps them fp32.
  fp16-as-on-T4   like full, but fp16 autocast with a GradScaler (DPOConfig(mixed_precision="fp16"); TRL fp16=True);
                  records dpo_nb's overflow-skipped steps (trainer.amp_overflow_steps) and both loss scales.
  full-fp32       (--tiny only) like full, without autocast: fp32 weights and compute in both tools.
dpo_nb runs DPOTrainer.train_step with the reference log-probs precomputed before the first step (`precompute_ref=True`:
for a peft model the pass runs with the adapters off, `ref_mode` in the row), as TRL best does; TRL runs trl.DPOTrainer in its best configuration (bench/vs_trl.py's "TRL best":
precompute_ref_log_probs=True, no gradient checkpointing, logging off, max_length=None), on the same pairs in the same
order (the dataset in dpo_nb's batch order, train_sampling_strategy="sequential"; TRL's token ids are asserted equal
to dpo_nb's, and both tools' starting trainable weights are checked equal). lr 1e-4 constant, beta 0.1, sigmoid loss,
clipping 1.0, AdamW, no weight decay.

Measured per tool: 1 warm-up step (untimed) + --steps timed steps, torch.cuda.synchronize() at every step end.
  pairs/s, tokens/s  pairs (tokens: non-pad prompt+response tokens of both sequences of every pair) / timed wall time
  peak MB            GPU: torch.cuda.max_memory_allocated() during the steps (peak stats reset at the first step),
                     counting the weights, gradients, optimizer state and activations (`peak_memory_mb`; `peak_mb`
                     is the part above what was allocated at the first step); CPU: peak RSS above the RSS at the
                     first step (rough: freed memory of earlier runs is reused)
  MFU                model FLOPs / (timed wall time * the GPU's dense bf16 peak), with model FLOPs per step =
                     k * N * T: T = the tokens above (the prompt counted once per sequence, i.e. twice per pair);
                     N = the parameters of the matmuls, i.e. all parameters minus the input embedding table
                     (tied: the shared matrix counted once, as the LM head); k = 6 for full fine-tuning (forward 2N,
                     backward 4N), k = 4 for LoRA/QLoRA (forward 2N, backward through the frozen base for the
                     activation gradients 2N; the adapters' own FLOPs and the attention-score FLOPs are left out).
                     The reference pass is not counted (both tools precompute it, before the timed steps). The same model FLOPs are credited to both tools, so dpo_nb's
                     prompt sharing and response-only LM head show up as a higher MFU. null on CPU and on GPUs missing
                     from PEAK_FLOPS.
  agreement          max |loss diff| over every step (1 + --steps) <= 2e-2 for bf16/fp16 runs, 1e-4 for fp32 runs,
                     plus equal token ids and equal starting weights -> `agree`.
Each run is wrapped in try/except (an error, e.g. out of memory, is recorded in its row and the next run starts; GPU
memory is freed between tools). A run is not started when the elapsed time plus the longest run so far (times
sqrt(size ratio) for a bigger model, plus the longest model build for a new shape) would pass --budget-s; it is
recorded as skipped.
Exit status: 0 when every row that ran agrees (skipped rows aside), 1 when any disagrees or failed with an error.
"""
from __future__ import annotations

import argparse, contextlib, dataclasses, gc, importlib.metadata, importlib.util, json, math, os, platform, shutil, \
    sys, tempfile, time, traceback, warnings
from pathlib import Path

T0 = time.perf_counter()
sys.path.insert(0, str(Path(__file__).resolve().parent))
from vs_trl import BETA, LR, SEED, Probe, _Null, _now, _sync, _times, _trl_trainer_cls, setup, trl_config  # noqa: E402 (sets quiet-progress env vars)

import torch  # noqa: E402

SHAPES = {
    "smollm2-135m": ("llama", dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                                   intermediate_size=1536, vocab_size=49152, tie_word_embeddings=True,
                                   max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5)),
    "qwen2.5-0.5b": ("qwen2", dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                                   intermediate_size=4864, vocab_size=151936, tie_word_embeddings=True,
                                   max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6)),
    "1.5b": ("qwen2", dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                           intermediate_size=8960, vocab_size=151936, tie_word_embeddings=True,
                           max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6)),
}
TINY = {  # same architectures and head layout (GQA, tied head), toy sizes; small vocabularies, because CPUs without
    # bf16 units multiply bf16 ~10x slower than fp32 and the LM head dominates
    "smollm2-135m": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=128, vocab_size=512),
    "qwen2.5-0.5b": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=160, vocab_size=768),
    "1.5b": dict(hidden_size=96, num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2,
                 intermediate_size=192, vocab_size=1024),
}
# (shape, mode, how it is tuned, autocast precision), in the order they run (the most telling first)
RUNS = [("smollm2-135m", "full", "full", "bf16"), ("smollm2-135m", "lora", "lora", "bf16"),
        ("smollm2-135m", "fp16-as-on-T4", "full", "fp16"),
        ("qwen2.5-0.5b", "full", "full", "bf16"), ("qwen2.5-0.5b", "lora", "lora", "bf16"),
        ("qwen2.5-0.5b", "qlora", "qlora", "bf16"),
        ("1.5b", "lora", "lora", "bf16"), ("1.5b", "qlora", "qlora", "bf16")]
TINY_RUNS = [("smollm2-135m", "full-fp32", "full", "fp32")]
TOLERANCE = {"bf16": 2e-2, "fp16": 2e-2, "fp32": 1e-4}
LORA = dict(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
PEAK_FLOPS = [  # dense bf16 (fp16 on T4/V100) tensor-core peak by device name, first match wins
    ("H200", 989e12), ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("GH200", 989e12),
    ("A100", 312e12), ("A800", 312e12), ("L40S", 362e12), ("L40", 181e12), ("L4", 121e12), ("A10G", 125e12),
    ("A10", 125e12), ("RTX 4090", 165e12), ("V100", 125e12), ("T4", 65e12)]
HEADER = ("| run | precision | dpo_nb pairs/s | TRL pairs/s | x TRL | dpo_nb tokens/s | TRL tokens/s | dpo_nb peak MB "
          "| TRL peak MB | dpo_nb MFU | TRL MFU | max abs loss diff | agree | notes |")


def log(msg: str):
    print(f"[{time.perf_counter() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def free_memory():
    gc.collect()
    if torch.cuda.is_available(): torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------------------- models
def model_config(shape: str, tiny: bool):
    "The model class and config of `shape` (and the settings it was built from)."
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM
    arch, kw = SHAPES[shape]
    kw = {**kw, **(TINY[shape] if tiny else {})}
    cfg_cls, model_cls = (LlamaConfig, LlamaForCausalLM) if arch == "llama" else (Qwen2Config, Qwen2ForCausalLM)
    return model_cls, cfg_cls(**kw, pad_token_id=0, bos_token_id=1, eos_token_id=2), kw


def count_params(shape: str, tiny: bool) -> int:
    "The parameter count of `shape`, from a model built on the meta device (no memory, no init)."
    model_cls, cfg, _ = model_config(shape, tiny)
    with torch.device("meta"):
        return sum(p.numel() for p in model_cls(cfg).parameters())


def build_checkpoint(shape: str, tiny: bool, tok, folder: str, dev) -> dict:
    "Build the random-init model of `shape` (on the GPU when there is one: fast init), save it in bf16 with its tokenizer."
    model_cls, cfg, kw = model_config(shape, tiny)
    torch.manual_seed(SEED)
    with torch.device(dev.type if dev.type == "cuda" else "cpu"):
        model = model_cls(cfg)
    total = sum(p.numel() for p in model.parameters())  # unique tensors: a tied matrix once
    emb = model.get_input_embeddings().weight
    tied = model.get_output_embeddings().weight is emb
    model.to(torch.bfloat16).save_pretrained(folder)
    tok.save_pretrained(folder)
    del model
    free_memory()
    return dict(arch=model_cls.__name__, config={k: v for k, v in kw.items()}, params=total, tied=tied,
                matmul_params=total - (0 if tied else emb.numel()))


def fingerprint(model) -> list[float]:
    "Sum and sum of squares (float64) of the weights that will be trained (all of them for full fine-tuning)."
    ps = [p for p in model.parameters() if p.requires_grad and p.is_floating_point()]
    return [float(sum(p.detach().double().sum() for p in ps)), float(sum(p.detach().double().square().sum() for p in ps))]


def load_for(tool: str, folder: str, tune: str, dev):
    "The starting model one tool gets (see the module docstring), its trainable-parameter count and fingerprint."
    from dpo_nb.models import load_model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        if tune == "qlora":
            model, _ = load_model(folder, load_in_4bit=True, device=str(dev) if dev.type == "cuda" else "cpu")
        else:  # dpo_nb: the checkpoint as stored (bf16); TRL full fine-tuning: the same values in fp32
            model, _ = load_model(folder, dtype="fp32" if tool == "trl" and tune == "full" else "auto")
        if tune != "full":
            import peft
            torch.manual_seed(SEED)  # the same LoRA A init for both tools
            model = peft.get_peft_model(model, peft.LoraConfig(**LORA))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return model, trainable, fingerprint(model)


# ---------------------------------------------------------------------------------------------------------- tools
def train_dpo_nb(model, tok, data, prec, a, dev, probe) -> dict:
    from dpo_nb.train import DPOConfig, DPOTrainer
    cfg = DPOConfig(beta=BETA, learning_rate=LR, lr_schedule="constant", warmup_ratio=0.0, weight_decay=0.0,
                    batch_size=a.batch_size, max_steps=1 + a.steps, max_grad_norm=1.0, seed=SEED, device=str(dev),
                    mixed_precision={"fp32": "no"}.get(prec, prec), master_weights="fp32", progress=False,
                    ref_cache=False, precompute_ref=True,  # the reference scored once, as TRL best does
                    max_length=None, max_prompt_length=None)  # the data is tokenized uncut, as TRL gets it (max_length=None)
    t = DPOTrainer(model, tok, data, cfg)
    probe.start()
    losses, ends = [], []
    for _ in range(1 + a.steps):
        losses.append(t.train_step()["loss"])
        _sync(dev); ends.append(_now())
    return dict(losses=losses, **_times(ends), ref_mode=t.ref_mode, precision_info=t.history.meta.get("precision"),
                amp_overflow_steps=t.amp_overflow_steps, loss_scale=float(t.scaler.get_scale()) if t.scaler else None)


def train_trl(model, tok, pairs, data, order, prec, a, dev, probe) -> dict:
    from datasets import Dataset
    Measured, Clock = _trl_trainer_cls()
    ds = Dataset.from_list([pairs[i] for i in order])  # dpo_nb's batch order; TRL reads it sequentially
    with tempfile.TemporaryDirectory() as d, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # "TRL best" of bench/vs_trl.py, with TRL's mixed precision switched on to match the run
        targs = dataclasses.replace(trl_config(True, a, dev, d), bf16=prec == "bf16", fp16=prec == "fp16")
        clock = Clock(dev, probe)
        t = Measured(model=model, ref_model=None, args=targs, train_dataset=ds, processing_class=tok, callbacks=[clock])
        t.bench_losses = []
        same = all(t.train_dataset[k] == [data[i][k] for i in order] for k in ("prompt_ids", "chosen_ids", "rejected_ids"))
        if not same: raise AssertionError("TRL's token ids differ from dpo_nb's")
        with contextlib.redirect_stdout(sys.stderr if os.environ.get("BENCH_VERBOSE") else _Null()):
            t.train()
    acc = t.accelerator
    scaler = getattr(acc, "scaler", None)
    # what TRL's accelerate actually did: on CPU it runs fp16=True without autocast or GradScaler, i.e. in fp32
    amp = str(acc.mixed_precision) if acc.native_amp else "none"
    return dict(losses=t.bench_losses, **_times(clock.ends), ids_equal=same, autocast=amp,
                loss_scale=float(scaler.get_scale()) if scaler is not None else None)


def measure(tool: str, folder: str, spec: dict, ctx: dict, a, dev) -> dict:
    "One tool on one run: load its model, train, measure; errors are returned, not raised; memory freed after."
    tok, pairs, data, order = ctx["tok"], ctx["pairs"], ctx["data"], ctx["order"]
    t0 = time.perf_counter()
    base = torch.cuda.memory_allocated() / 2**20 if dev.type == "cuda" else None
    try:
        model, trainable, fp = load_for(tool, folder, spec["tune"], dev)
        probe = Probe(dev, memory=True)
        r = (train_dpo_nb(model, tok, data, spec["precision"], a, dev, probe) if tool == "dpo_nb" else
             train_trl(model, tok, pairs, data, order, spec["precision"], a, dev, probe))
        del model
        r.update(probe.result(), trainable_params=trainable, init_fingerprint=fp)
        timed = sum(r["step_times"])
        r["pairs/s"] = a.batch_size * a.steps / timed
        r["tokens/s"] = ctx["timed_tokens"] / timed
        k = 6 if spec["tune"] == "full" else 4
        r["mfu"] = k * ctx["build"]["matmul_params"] * ctx["timed_tokens"] / timed / ctx["peak_flops"] if ctx["peak_flops"] else None
        # the figure shown: on GPU everything allocated during the steps (weights included), on CPU the RSS delta
        r["peak_memory_mb"] = r["peak_abs_mb"] if dev.type == "cuda" else r["peak_mb"]
    except Exception as e:  # noqa: BLE001 -- one failure (OOM, a missing kernel) must not end the check
        r = dict(error=f"{type(e).__name__}: {e}"[:2000], traceback=traceback.format_exc()[-4000:])
        log(f"    {tool} failed: {r['error'][:300]}")
    finally:
        free_memory()
    r["wall_s"] = time.perf_counter() - t0
    r["gpu_mb_allocated_before"] = base
    return r


def compare(row: dict):
    "Fill the row's agreement fields from its two tools' results."
    ours, theirs = row["dpo_nb"], row["trl"]
    tol = TOLERANCE[row["precision"]]
    row.update(tolerance=tol, loss_max_abs_diff=None, agree=False)
    if "error" in ours or "error" in theirs:
        row["status"], row["error"] = "error", "; ".join(f"{k}: {v['error']}" for k, v in (("dpo_nb", ours), ("TRL", theirs))
                                                         if "error" in v)
        return
    n = 1 + row["steps"]
    if len(ours["losses"]) != n or len(theirs["losses"]) != n:
        row["status"], row["error"] = "error", f"expected {n} losses per tool, got {len(ours['losses'])} and {len(theirs['losses'])}"
        return
    d = max(abs(x - y) for x, y in zip(ours["losses"], theirs["losses"]))
    fa, fb = ours["init_fingerprint"], theirs["init_fingerprint"]
    same_init = all(abs(x - y) <= 1e-9 * max(1.0, abs(x)) for x, y in zip(fa, fb))
    row.update(status="ok", loss_max_abs_diff=d, same_init=same_init, ids_equal=theirs["ids_equal"],
               agree=bool(math.isfinite(d) and d <= tol and same_init and theirs["ids_equal"]),
               speed_x_trl=ours["pairs/s"] / theirs["pairs/s"], memory_x_trl=ours["peak_memory_mb"] / theirs["peak_memory_mb"]
               if theirs.get("peak_memory_mb", 0) > 0 else None)


# ---------------------------------------------------------------------------------------------------------- report
def fmt(v, spec: str = ".2f", none: str = "-") -> str:
    return none if v is None else format(v, spec)


def notes(row: dict) -> str:
    if row["status"] != "ok": return f"{row['status']}: {row.get('error') or row.get('reason')}"[:160].replace("|", "/")
    o, t = row["dpo_nb"], row["trl"]
    out = [f"ref {o['ref_mode']}"]
    if row["precision"] != "fp32" and t.get("autocast") != row["precision"]:
        out.append(f"TRL autocast: {t.get('autocast')} (accelerate's choice on {row.get('device', 'this device')})")
    if row["precision"] == "fp16":
        out.append(f"overflow steps {o['amp_overflow_steps']}, scale {fmt(o['loss_scale'], 'g')} (TRL {fmt(t['loss_scale'], 'g')})")
    return "; ".join(out)


def markdown(res: dict) -> str:
    m = res["machine"]
    head = (f"**gpu_check** on {m['device_name']} ({res['device']}{', capability ' + m['capability'] if m['capability'] else ''}, "
            f"native bf16: {m['native_bf16']}){' --tiny' if res['tiny'] else ''}; {res['batch_size']} pairs per batch, "
            f"prompts ~{res['prompt_tokens']} tokens, responses ~{res['response_tokens']}, 1 warm-up + {res['steps']} timed "
            f"steps; " + ", ".join(f"{k} {v}" for k, v in res["versions"].items()) + f"; total {res['total_s']:.0f} s")
    lines = [head, "", HEADER, "|---|---|" + "---:|" * 10 + "---|---|"]
    for r in res["rows"]:
        o, t = r.get("dpo_nb") or {}, r.get("trl") or {}
        mfu = lambda x: None if x.get("mfu") is None else 100 * x["mfu"]
        mb = lambda x: None if x.get("peak_memory_mb") is None else max(0.0, x["peak_memory_mb"])  # (an RSS delta can dip below 0)
        lines.append(" | ".join([
            f"| {r['run']}", r["precision"], fmt(o.get("pairs/s")), fmt(t.get("pairs/s")), fmt(r.get("speed_x_trl")),
            fmt(o.get("tokens/s"), ".0f"), fmt(t.get("tokens/s"), ".0f"), fmt(mb(o), ".0f"), fmt(mb(t), ".0f"), fmt(mfu(o), ".1f") + ("%" if o.get("mfu") else ""),
            fmt(mfu(t), ".1f") + ("%" if t.get("mfu") else ""), fmt(r.get("loss_max_abs_diff"), ".1e"),
            {True: "yes", False: "**NO**"}.get(r.get("agree"), "-"), notes(r)]) + " |")
    lines += ["", f"Peak MB: {'torch.cuda.max_memory_allocated during the steps' if res['device'] == 'cuda' else 'RSS delta (rough)'}."
              + (f" MFU: k*N*tokens / (time * {res['peak_flops']:.3g} FLOP/s), k=6 full, 4 LoRA/QLoRA (see the JSON's"
                 " `formulas`)." if res["peak_flops"] else " MFU: not computed (no GPU, or a GPU missing from PEAK_FLOPS).")
              + f" Tolerance on losses: 2e-2 (bf16/fp16), 1e-4 (fp32). x TRL: dpo_nb pairs/s / TRL pairs/s.", ""]
    return "\n".join(lines)


def machine_info(dev) -> dict:
    from dpo_nb.models import native_bf16
    if dev.type == "cuda":
        p = torch.cuda.get_device_properties(dev)
        return dict(device_name=torch.cuda.get_device_name(dev), capability="%d.%d" % torch.cuda.get_device_capability(dev),
                    native_bf16=native_bf16(dev), memory_gb=round(p.total_memory / 2**30, 1), cuda=torch.version.cuda)
    return dict(device_name=f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores", capability=None,
                native_bf16=False, memory_gb=None, cuda=None)


def versions() -> dict:
    out = {}
    for k in ("torch", "transformers", "trl", "peft", "bitsandbytes", "accelerate"):
        try: out[k] = importlib.metadata.version(k)
        except importlib.metadata.PackageNotFoundError: out[k] = None
    return out


def peak_flops(dev):
    if dev.type != "cuda": return None
    name = torch.cuda.get_device_name(dev)
    return next((f for key, f in PEAK_FLOPS if key in name), None)


# ---------------------------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog="See the top of bench/gpu_check.py for what is "
                                "measured and how. Exit status: 0 when every run that ran agrees with TRL, else 1.")
    p.add_argument("--device", default="auto", help="cuda, cpu or auto (default: cuda when available)")
    p.add_argument("--tiny", action="store_true", help="toy-sized models and data (for CPU; what the test suite runs)")
    p.add_argument("--out", default="gpu_check_out", help="folder for gpu_check.json and gpu_check.md (default: gpu_check_out)")
    p.add_argument("--budget-s", type=float, default=420.0, help="start no run that would end after this many seconds (default: 420)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per tool after 1 warm-up (default 5; 3 with --tiny)")
    p.add_argument("--batch-size", type=int, default=None, help="pairs per batch (default 8; 4 with --tiny)")
    p.add_argument("--prompt", type=int, default=None, help="~prompt tokens (default 128; 24 with --tiny)")
    p.add_argument("--response", type=int, default=None, help="~response tokens (default 128; 24 with --tiny)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: 1 on CPU, steadier on a shared machine; torch's default on GPU)")
    p.add_argument("--only", default=None, help="comma-separated run names (e.g. smollm2-135m/full,1.5b/qlora)")
    a = p.parse_args(argv)
    a.steps = a.steps or (3 if a.tiny else 5)
    a.batch_size = a.batch_size or (4 if a.tiny else 8)
    a.prompt = a.prompt or (24 if a.tiny else 128)
    a.response = a.response or (24 if a.tiny else 128)
    dev = torch.device("cuda" if a.device == "auto" and torch.cuda.is_available() else "cpu" if a.device == "auto" else a.device)
    if dev.type == "cuda": dev = torch.device("cuda", torch.cuda.current_device() if dev.index is None else dev.index)
    if a.threads or dev.type == "cpu": torch.set_num_threads(a.threads or 1)
    import datasets, transformers
    transformers.logging.set_verbosity_error(); datasets.logging.set_verbosity_error()
    runs = RUNS + (TINY_RUNS if a.tiny else [])
    shapes = list(dict.fromkeys(r[0] for r in runs))
    runs = sorted(runs, key=lambda r: shapes.index(r[0]))  # a shape's runs together (one checkpoint on disk at a time)
    specs = [dict(run=f"{s}/{m}", shape=s, mode=m, tune=t, precision=pr) for s, m, t, pr in runs]
    if a.only:
        keep = set(a.only.split(","))
        if keep - {s["run"] for s in specs}: p.error(f"unknown runs {sorted(keep - {s['run'] for s in specs})}")
        specs = [s for s in specs if s["run"] in keep]
    has_bnb = importlib.util.find_spec("bitsandbytes") is not None
    pf = peak_flops(dev)
    log(f"gpu_check on {dev} ({machine_info(dev)['device_name']}), {len(specs)} runs, budget {a.budget_s:.0f} s")
    rows, run_s, build_s, built, sizes = [], [], [], {}, {}
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        for spec in specs:
            row = dict(spec, device=dev.type, steps=a.steps, batch_size=a.batch_size, compares_trl=True, dpo_nb=None, trl=None)
            rows.append(row)
            new_shape = spec["shape"] not in built
            size = sizes.setdefault(spec["shape"], count_params(spec["shape"], a.tiny))
            # the longest run so far, scaled by sqrt(size ratio) when this model is bigger (runs are overhead-heavy)
            need = max((d * math.sqrt(max(1.0, size / n)) for d, n in run_s), default=0.0)
            need += max(build_s, default=0.0) if new_shape else 0.0
            if spec["tune"] == "qlora" and not has_bnb:
                row.update(status="skipped", reason="bitsandbytes is not installed", compares_trl=False); continue
            if time.perf_counter() - T0 + need > a.budget_s:
                row.update(status="skipped", reason=f"budget: {time.perf_counter() - T0:.0f} s elapsed + ~{need:.0f} s "
                                                     f"> --budget-s {a.budget_s:.0f}", compares_trl=False)
                log(f"{spec['run']}: skipped ({row['reason']})"); continue
            t_run = time.perf_counter()
            if new_shape:
                for old in list(built):  # one checkpoint on disk at a time
                    if built[old].get("folder"): shutil.rmtree(built[old]["folder"], ignore_errors=True)
                log(f"building {spec['shape']}{' (tiny)' if a.tiny else ''}")
                try:
                    vocab = (TINY[spec["shape"]] if a.tiny else SHAPES[spec["shape"]][1])["vocab_size"]
                    case = dict(vocab=vocab, prompt=a.prompt, response=a.response)
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        tok, pairs, data, order = setup(case, a.batch_size, a.steps)
                    folder = os.path.join(tmp, spec["shape"].replace("/", "_"))
                    info = build_checkpoint(spec["shape"], a.tiny, tok, folder, dev)
                    timed_tokens = sum(2 * len(data[i]["prompt_ids"]) + len(data[i]["chosen_ids"]) + len(data[i]["rejected_ids"])
                                       for i in order[a.batch_size:])
                    built[spec["shape"]] = dict(folder=folder, tok=tok, pairs=pairs, data=data, order=order, build=info,
                                                timed_tokens=timed_tokens, peak_flops=pf)
                except Exception as e:  # noqa: BLE001
                    built[spec["shape"]] = dict(error=f"building {spec['shape']}: {type(e).__name__}: {e}"[:2000])
                    log(built[spec["shape"]]["error"])
                build_s.append(time.perf_counter() - t_run)
            ctx = built[spec["shape"]]
            if "error" in ctx:
                row.update(status="error", error=ctx["error"], agree=False); continue
            row.update(model=ctx["build"], timed_tokens=ctx["timed_tokens"])
            t0 = time.perf_counter()
            for tool in ("dpo_nb", "trl"):
                log(f"{spec['run']} [{spec['precision']}]: {tool}")
                row[tool] = measure(tool, ctx["folder"], spec, ctx, a, dev)
            compare(row)
            row["wall_s"] = time.perf_counter() - t0
            run_s.append((row["wall_s"], size))
            if row["status"] == "ok":
                log(f"{spec['run']}: dpo_nb {row['dpo_nb']['pairs/s']:.2f} pairs/s, TRL {row['trl']['pairs/s']:.2f}, "
                    f"max |loss diff| {row['loss_max_abs_diff']:.1e} -> {'agree' if row['agree'] else 'DISAGREE'} "
                    f"({row['wall_s']:.0f} s)")
    res = dict(device=dev.type, tiny=a.tiny, machine=machine_info(dev), versions=versions(), peak_flops=pf,
               batch_size=a.batch_size, steps=a.steps, prompt_tokens=a.prompt, response_tokens=a.response,
               budget_s=a.budget_s, lr=LR, beta=BETA, seed=SEED, lora=LORA, tolerance=TOLERANCE,
               formulas=dict(mfu="k * N * T / (timed seconds * peak_flops); N = all parameters minus the input embedding "
                                 "table (tied: counted once, as the LM head); T = non-pad prompt+response tokens of both "
                                 "sequences of every timed pair; k = 6 full fine-tuning, 4 LoRA/QLoRA; reference pass and "
                                 "attention-score FLOPs not counted",
                             peak_memory_mb="GPU: torch.cuda.max_memory_allocated() during the 1 + steps steps (peak reset at "
                                            "the first step; weights included; peak_mb: above the memory allocated "
                                            "then); CPU: peak RSS above the RSS at the first step (rough)",
                             pairs_per_s="batch_size * steps / wall time of the timed steps (the warm-up step untimed)"),
               setup={"full": "checkpoint saved in bf16; dpo_nb: loaded as stored (bf16), DPOConfig(mixed_precision='bf16', "
                              "master_weights='fp32') upcasts the trainable weights to fp32 and autocasts bf16; TRL: the same "
                              "checkpoint loaded in fp32 (the same values), TrainingArguments bf16=True (autocast)",
                      "lora": "bf16 base as stored (frozen), peft LoRA r=16 alpha=32 all-linear, adapters fp32 (peft default), "
                              "bf16 autocast; the same seeded peft model for both tools",
                      "qlora": "dpo_nb.models.load_model(load_in_4bit=True): NF4, double quant, bf16 compute (fp16 on GPUs "
                               "without native bf16) + the LoRA above; dpo_nb keeps the adapters fp32, TRL 1.16 casts them to bf16",
                      "fp16-as-on-T4": "as full, but fp16 autocast with a GradScaler (dpo_nb mixed_precision='fp16', TRL fp16=True)",
                      "full-fp32": "as full, without autocast (dpo_nb mixed_precision='no', TRL bf16=False): fp32 throughout",
                      "trl": "trl.DPOTrainer, bench/vs_trl.py's 'TRL best': precompute_ref_log_probs=True, "
                             "gradient_checkpointing=False, logging_strategy='no', max_length=None, "
                             "train_sampling_strategy='sequential' on the pairs in dpo_nb's batch order",
                      "dpo_nb": "DPOTrainer.train_step, its default reference (precomputed; adapters off for peft models), "
                                "ref_cache=False"},
               rows=rows, total_s=time.perf_counter() - T0)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(res, indent=1, default=str))
    md = markdown(res)
    (out / "gpu_check.md").write_text(md)
    print(md, flush=True)
    bad = [r["run"] for r in rows if r["status"] != "skipped" and not r.get("agree")]
    log(f"done in {res['total_s']:.0f} s; wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'}"
        + (f"; NOT agreeing or failed: {', '.join(bad)}" if bad else "; every run that ran agrees"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
