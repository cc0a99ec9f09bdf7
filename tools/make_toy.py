#!/usr/bin/env python
"""Regenerate the bundled toy task, dpo_nb/assets/toy/, from a seed.

    python tools/make_toy.py                       # the shipped assets (seed 0)
    python tools/make_toy.py --quick --out /tmp/t  # a tiny smoke version (a few SFT steps, a few pairs)

What it does (the pieces are defined in nbs/07_toy.ipynb, exported to dpo_nb/toy.py; run `nbdev-export` first):
  1. builds the word-level tokenizer (`build_toy_tokenizer`) and a tiny random `LlamaForCausalLM` (`toy_config`);
  2. SFT: next-token training on 30,000 synthetic reviews (`toy_corpus`), 1,000 AdamW steps of 64 reviews;
  3. splits the review openings (`toy_prompts`) into test prompts (240) and train prompts (the rest), samples
     six completions per prompt from the SFT model (`sample_completions`) and pairs them (`pairs_from_samples`:
     chosen = higher `toy_reward`, ties dropped), keeping 3,000 train and 400 test pairs;
  4. writes model/ (safetensors, config, generation config, tokenizer), train.jsonl, test.jsonl, meta.json.

Time: 2.5 to 3.5 minutes on one CPU thread, the default (SFT 2-3 min, sampling ~20 s, start-up ~5 s); --quick ~10 s.
(`--threads 2` is ~1.5x faster on an idle 2-core machine but many times slower when other processes compete.)
Deterministic: the same seed and thread count on the same machine give byte-identical files (tests/test_toy.py checks this on
--quick). Floating-point results may differ across CPUs, thread counts or torch versions, so regenerating
elsewhere can change the weights and the sampled pairs, not their recipe.
"""
import argparse, hashlib, json, random, sys, time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path: sys.path.insert(0, str(ROOT))

import torch
from transformers import LlamaForCausalLM, GenerationConfig
from transformers.utils import logging as hf_logging

from dpo_nb.toy import (build_toy_tokenizer, toy_config, toy_corpus, toy_prompts, sample_completions,
                        pairs_from_samples, toy_reward, mean_reward)

FULL = dict(corpus=30_000, steps=1_000, batch_size=64, lr=3e-3, warmup=50, n_test_prompts=240, n_train_prompts=None,
            samples_per_prompt=6, max_new_tokens=32, n_train_pairs=3_000, n_test_pairs=400)
QUICK = dict(FULL, corpus=1_000, steps=30, warmup=5, n_test_prompts=12, n_train_prompts=40, n_train_pairs=None, n_test_pairs=None)


def sft(model, tokenizer, corpus, steps, batch_size, lr, warmup, seed, log=print):
    "Next-token training on `<bos> review <eos>` sequences; returns the mean loss of the last 50 steps."
    ids = [tokenizer(r)["input_ids"] + [tokenizer.eos_token_id] for r in corpus]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * max(0.05, 1 - s / steps))
    rng, losses = random.Random(seed), []
    model.train()
    for step in range(steps):
        batch = rng.sample(ids, batch_size)
        n = max(map(len, batch))
        x = torch.full((batch_size, n), tokenizer.pad_token_id)
        att = torch.zeros(batch_size, n, dtype=torch.long)
        for i, s in enumerate(batch): x[i, :len(s)] = torch.tensor(s); att[i, :len(s)] = 1
        loss = model(input_ids=x, attention_mask=att, labels=x.masked_fill(att == 0, -100)).loss
        opt.zero_grad(); loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step(); sched.step()
        losses.append(loss.item())
        if step % 200 == 0 or step == steps - 1: log(f"  sft step {step + 1}/{steps} loss {loss.item():.3f}")
    model.eval()
    tail = losses[-50:]
    return sum(tail) / len(tail)


def make_pairs(model, tokenizer, prompts, k, max_new_tokens, seed, cap):
    "Sample `k` completions per prompt, pair them, drop ties; shuffle with `seed` and keep at most `cap`."
    rep = [p for p in prompts for _ in range(k)]
    texts, ended = sample_completions(model, tokenizer, rep, max_new_tokens=max_new_tokens, seed=seed, return_ended=True)
    pairs, counts = [], Counter()
    for j, p in enumerate(prompts):
        ps, c = pairs_from_samples(p, texts[j * k:(j + 1) * k], ended[j * k:(j + 1) * k])
        pairs += ps; counts.update(c)
    random.Random(seed).shuffle(pairs)
    kept = pairs if cap is None else pairs[:cap]
    stats = dict(prompts=len(prompts), samples=len(texts), candidate_pairs=len(texts) // 2,
                 dropped_tie=counts["dropped_tie"], dropped_no_eos=counts["dropped_no_eos"],
                 dropped_empty=counts["dropped_empty"], dropped_over_cap=len(pairs) - len(kept), kept=len(kept),
                 prompts_used=len({r["prompt"] for r in kept}),
                 sample_mean_reward=round(mean_reward(texts), 4))
    return kept, stats


def write_jsonl(path, rows):
    with open(path, "w") as f:
        for r in rows: f.write(json.dumps({k: r[k] for k in ("prompt", "chosen", "rejected")}) + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0, help="seeds everything (default 0: the shipped assets)")
    ap.add_argument("--out", type=Path, default=ROOT / "dpo_nb" / "assets" / "toy", help="output folder")
    ap.add_argument("--quick", action="store_true", help="tiny smoke version: few SFT steps, few pairs")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (default 1: the same bits on any core count, and no slowdown on a busy machine)")
    a = ap.parse_args(argv)
    cfg = QUICK if a.quick else FULL
    hf_logging.disable_progress_bar(); hf_logging.set_verbosity_error()
    torch.set_num_threads(a.threads)
    t0 = time.time()
    log = lambda m: print(f"[{time.time() - t0:5.1f}s] {m}", flush=True)

    # 1. tokenizer and model
    tok = build_toy_tokenizer()
    torch.manual_seed(a.seed)
    model = LlamaForCausalLM(toy_config(tok))
    n_params = sum(p.numel() for p in model.parameters())
    log(f"vocab {len(tok)}, model {n_params:,} params")

    # 2. SFT
    corpus = toy_corpus(cfg["corpus"], seed=a.seed)
    sft_loss = sft(model, tok, corpus, cfg["steps"], cfg["batch_size"], cfg["lr"], cfg["warmup"], a.seed, log)
    log(f"sft done, final loss {sft_loss:.3f}")

    # 3. pairs: disjoint train/test prompts
    prompts = toy_prompts()
    random.Random(a.seed).shuffle(prompts)
    test_p = prompts[:cfg["n_test_prompts"]]
    train_p = prompts[cfg["n_test_prompts"]:]
    if cfg["n_train_prompts"]: train_p = train_p[:cfg["n_train_prompts"]]
    k, mnt = cfg["samples_per_prompt"], cfg["max_new_tokens"]
    train, s_train = make_pairs(model, tok, train_p, k, mnt, a.seed + 1, cfg["n_train_pairs"])
    test, s_test = make_pairs(model, tok, test_p, k, mnt, a.seed + 2, cfg["n_test_pairs"])
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in test}
    assert all(toy_reward(r["chosen"]) > toy_reward(r["rejected"]) for r in train + test)
    log(f"pairs: train {s_train}\n        test {s_test}")

    # 4. write
    mdir = a.out / "model"
    mdir.mkdir(parents=True, exist_ok=True)
    model.generation_config = GenerationConfig(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=mnt,
                                               bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                               pad_token_id=tok.pad_token_id)
    model.save_pretrained(mdir)
    tok.save_pretrained(mdir)
    tc = mdir / "tokenizer_config.json"  # name the class transformers 4.x and 5.x both know
    tc.write_text(json.dumps(dict(json.loads(tc.read_text()), tokenizer_class="PreTrainedTokenizerFast"), indent=2) + "\n")
    write_jsonl(a.out / "train.jsonl", train)
    write_jsonl(a.out / "test.jsonl", test)
    meta = dict(generated_by="tools/make_toy.py" + (" --quick" if a.quick else ""), seed=a.seed, threads=a.threads,
                torch=torch.__version__.split("+")[0],
                model=dict(params=n_params, **{k: getattr(model.config, k) for k in
                           ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                            "max_position_embeddings", "vocab_size")}),
                sft=dict(corpus_reviews=cfg["corpus"], steps=cfg["steps"], batch_size=cfg["batch_size"], lr=cfg["lr"],
                         final_loss=round(sft_loss, 4)),
                sampling=dict(samples_per_prompt=k, max_new_tokens=mnt, temperature=1.0, top_k=0, top_p=1.0),
                pairs=dict(train=s_train, test=s_test))
    (a.out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    for p in sorted(a.out.rglob("*")):
        if p.is_file(): log(f"  {p.relative_to(a.out)}  {p.stat().st_size:,} B  {hashlib.sha256(p.read_bytes()).hexdigest()[:12]}")
    log("done")


if __name__ == "__main__":
    main()
