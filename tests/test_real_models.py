"""Real models on the CPU: precision (bf16 and fp16 weights, fp16 loss scaling), quantized and dispatched models left in
place, dropout off, adapters whose starting state is the reference, the MoE router loss, and random-init models of real
architectures giving the same per-step losses as the plain concatenated forward."""
import copy, math, warnings

import numpy as np
import pytest
import torch
import transformers as tf

from conftest import word_tokenizer
from dpo_nb.logps import concat_pair_batch, concat_response_logps, lean_path_ok
from dpo_nb.models import REF_ADAPTER, load_model
from dpo_nb.train import DPOConfig, DPOTrainer, NonFiniteError

WORDS = ["<pad>", "<bos>", "<eos>", "<unk>", "the", "film", "was", "plot", "acting", "is", "good", "bad", "very", "quite",
         "great", "awful", "and", "not", "fine", "dull"]
V, LN2 = len(WORDS), math.log(2)


@pytest.fixture(scope="module")
def tok(): return word_tokenizer(WORDS)


def make_pairs(n, seed=0, longer=0):
    "Sentiment pairs; `longer` adds that many filler words to every prompt (for sequences past a window or rope limit)."
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        s, v = rng.choice(["the film", "the plot", "the acting"]), rng.choice(["was", "is"])
        extra = " ".join(rng.choice(["very", "quite", "and"], size=rng.integers(0, 4)))
        pre = " ".join(rng.choice(["the", "film", "and", "plot"], size=longer))
        out.append(dict(prompt=f"{pre} {s} {v}".strip(), chosen=f" {extra} {rng.choice(['good', 'great', 'fine'])}",
                        rejected=f" {rng.choice(['bad', 'awful', 'dull'])} {extra} and not good"))
    return out


TRAIN = make_pairs(24)


def cfg(**kw):
    base = dict(beta=0.3, learning_rate=3e-3, batch_size=4, max_steps=3, warmup_ratio=0.0, progress=False, probe_pairs=0,
                ref_cache=False, lr_schedule="constant")
    return DPOConfig(**{**base, **kw})


def arch(name: str, seed: int = 0, **kw):
    "A tiny random-init causal LM of a real architecture, built from its config."
    torch.manual_seed(seed)
    common = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if name == "gpt2":
        return tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=128, **kw))
    if name == "gemma2":
        common.update(head_dim=8, sliding_window=8, final_logit_softcapping=30.0, attn_logit_softcapping=50.0)
    if name == "mistral": common.update(sliding_window=8)
    if name == "phi3":
        common.update(original_max_position_embeddings=16,
                      rope_scaling=dict(type="longrope", short_factor=[1.0] * 4, long_factor=[4.0] * 4))
    if name == "mixtral": common.update(num_local_experts=4, num_experts_per_tok=2, intermediate_size=32)
    if name == "qwen2_moe":
        common.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=32)
    classes = {"llama": (tf.LlamaConfig, tf.LlamaForCausalLM), "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM),
               "gemma2": (tf.Gemma2Config, tf.Gemma2ForCausalLM), "mistral": (tf.MistralConfig, tf.MistralForCausalLM),
               "phi3": (tf.Phi3Config, tf.Phi3ForCausalLM), "mixtral": (tf.MixtralConfig, tf.MixtralForCausalLM),
               "qwen2_moe": (tf.Qwen2MoeConfig, tf.Qwen2MoeForCausalLM)}
    c, m = classes[name]
    return m(c(**{**common, **kw}))


def params(model): return {n: p.detach().float().clone() for n, p in model.named_parameters()}


def share_changed(before: dict, model) -> float:
    now = params(model)
    return sum(int((now[n] != b).sum()) for n, b in before.items()) / sum(b.numel() for b in before.values())


def first_step_pairs(t):
    p = t.history.pairs
    return p[(p["split"] == "train") & (p["step"] == 1)]


# ---------------------------------------------------------------------------------------------- precision
def test_bf16_weights_move_with_fp32_master_weights(tok):
    m = arch("llama").to(torch.bfloat16)
    before = params(m)
    t = DPOTrainer(m, tok, TRAIN, cfg(learning_rate=1e-6))
    assert t.history.meta["precision"]["upcast_to_fp32"] == len(before)
    assert {p.dtype for p in t.model.parameters()} == {torch.float32}
    t.fit()
    moved = share_changed(before, t.model)
    # the same run on the bf16 weights as loaded: the warning names the floor, and almost nothing moves
    m2 = arch("llama").to(torch.bfloat16)
    with pytest.warns(UserWarning, match=r"most weights stay put at learning rates below ~\d"):
        pure = DPOTrainer(m2, tok, TRAIN, cfg(learning_rate=1e-6, master_weights="as_loaded"))
    assert {p.dtype for p in pure.model.parameters()} == {torch.bfloat16}
    pure.fit()
    stuck = share_changed(before, pure.model)
    assert moved > 0.9 and stuck < 0.1, (moved, stuck)


def test_a_bf16_reference_model_computes_in_the_policys_precision(tok):
    t = DPOTrainer(arch("llama").to(torch.bfloat16), tok, TRAIN, cfg(max_steps=1), ref_model=arch("llama").to(torch.bfloat16))
    assert {p.dtype for p in t.ref_model.parameters()} == {torch.float32}
    t.fit()
    assert np.abs(first_step_pairs(t)["margin"]).max() < 1e-6


def test_fp16_weights_are_upcast_or_refused(tok):
    with pytest.raises(ValueError, match=r"from_pretrained\(\.\.\., dtype=torch.float32\)"):
        DPOTrainer(arch("llama").half(), tok, TRAIN, cfg(master_weights="as_loaded"))
    t = DPOTrainer(arch("llama").half(), tok, TRAIN, cfg(mixed_precision="fp16"))  # a GradScaler on fp32 master weights
    t.fit()
    assert np.isfinite(t.history.steps["loss"]).all()


def test_fp16_overflows_are_skipped_counted_and_the_scaler_updated(tok):
    for on_nonfinite in ("raise", "skip"):
        t = DPOTrainer(arch("llama"), tok, TRAIN, cfg(mixed_precision="fp16", max_steps=10, on_nonfinite=on_nonfinite))
        assert t.amp_dtype == torch.float16 and t.scaler is not None
        t.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 20)  # too large: the first three steps overflow
        before, scales, moved = params(t.model), [], []
        for _ in range(10):
            w = params(t.model)
            m = t.train_step()
            scales.append(m["amp/loss_scale"]); moved.append(share_changed(w, t.model) > 0)
        steps = t.history.steps
        over = steps["amp/overflow"].to_numpy().astype(bool)
        assert over[:2].all() and not over[-1], over  # overflowed first, then trained
        assert t.amp_overflow_steps == over.sum() == t.history.meta["amp_overflow_steps"]
        assert [not x for x in moved] == list(over)  # an overflow step leaves every weight alone; the others move them
        for s in np.flatnonzero(over[:-1]): assert scales[s + 1] == scales[s] / 2  # and halves the scale
        assert np.isnan(steps["grad_norm"].to_numpy()[over]).all() and np.isfinite(steps["loss"]).all()
        assert t.nonfinite_skipped == 0 and share_changed(before, t.model) > 0.5


def test_ctrl_c_while_fp16_gradients_are_unscaled_finishes_the_step(tok, monkeypatch):
    "A real SIGINT between the scaler's unscale_ and its update waits for the step's end; the next fit goes on."
    import signal
    t = DPOTrainer(arch("llama"), tok, TRAIN, cfg(mixed_precision="fp16", max_steps=4))
    clip, sent = torch.nn.utils.clip_grad_norm_, []
    def clip_then_interrupt(*a, **k):
        if t.step == 1 and not sent: sent.append(1); signal.raise_signal(signal.SIGINT)  # (as a notebook's Stop button)
        return clip(*a, **k)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip_then_interrupt)
    t.fit()
    assert sent and t.step == 2  # step 2 completed, then fit stopped
    t.fit()
    assert t.step == 4 and np.isfinite(t.history.steps["loss"]).all()


def test_pick_dtype_reads_the_compute_capability(monkeypatch):
    from dpo_nb.models import pick_dtype
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla T4")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # what a T4 answers (emulation counts)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (7, 5))
    assert pick_dtype("cuda") == torch.float16
    with pytest.raises(ValueError, match="Tesla T4 .compute capability 7.5. has no bfloat16"): pick_dtype("cuda", "bf16")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    assert pick_dtype("cuda") == torch.bfloat16 and pick_dtype("cuda", "no") is None


def test_legacy_dtype_setting_maps_to_mixed_precision():
    assert DPOConfig.from_dict({"dtype": "fp32"}).mixed_precision == "no"
    with pytest.warns(UserWarning, match="now applies on a CPU too"):
        assert DPOConfig.from_dict({"dtype": "bf16"}).mixed_precision == "bf16"
    with pytest.raises(ValueError, match="master_weights"): DPOConfig(master_weights="bf16")


# ---------------------------------------------------------------------------------------------- placement
def _forbid_moves(model):
    def boom(*a, **k): raise AssertionError("the trainer moved a model that must stay where it was loaded")
    model.to = model.cuda = model.cpu = boom
    return model


def test_dispatched_model_is_never_moved(tok):
    m = arch("llama")
    m.hf_device_map = {"": "cpu"}
    t = DPOTrainer(_forbid_moves(m), tok, TRAIN, cfg(device="cpu"))
    t.fit()
    assert t.history.meta["precision"]["placed"] and abs(t.history.steps["loss"].iloc[0] - LN2) < 1e-6


def test_an_offloaded_model_scores_like_the_plain_one():
    "Weights offloaded behind accelerate's hooks sit on 'meta' until used: inputs go to the execution device, and the head is run as a module."
    from accelerate import cpu_offload
    from dpo_nb.data import PairCollator
    from dpo_nb.logps import model_device, response_logps
    plain = arch("llama", vocab_size=3000).eval()
    off = cpu_offload(copy.deepcopy(plain), execution_device=torch.device("cpu"))
    assert off.lm_head.weight.device.type == "meta" and model_device(off) == torch.device("cpu")
    b = PairCollator(0)([dict(pair_id=i, prompt_ids=list(range(1, 30)), chosen_ids=list(range(40 + i, 1000)),
                              rejected_ids=list(range(50, 900 - i))) for i in range(3)])  # enough logits for the tiled head
    with torch.no_grad(): a, o = response_logps(plain, b), response_logps(off, b)
    torch.testing.assert_close(o["chosen_logps"], a["chosen_logps"]); torch.testing.assert_close(o["rejected_logps"], a["rejected_logps"])


@pytest.fixture(scope="module")
def saved_llama(tmp_path_factory, tok):
    d = tmp_path_factory.mktemp("llama")
    arch("llama").save_pretrained(d); tok.save_pretrained(d)
    return d


def test_qlora_4bit_model_trains_in_place(saved_llama, tok):
    pytest.importorskip("bitsandbytes")
    from peft import LoraConfig, get_peft_model
    q, _ = load_model(str(saved_llama), load_in_4bit=True, device="cpu")
    quant = [(w, w.detach().clone()) for w in q.parameters() if w.dtype == torch.uint8]  # the packed 4-bit weights
    assert quant and q.is_quantized
    _forbid_moves(q)
    model = get_peft_model(q, LoraConfig(r=4, target_modules="all-linear", lora_dropout=0.0, task_type="CAUSAL_LM"))
    before = params(model)
    t = DPOTrainer(model, tok, TRAIN, cfg(learning_rate=1e-2))
    assert t.ref_mode == "adapters" and t.history.meta["precision"]["placed"]
    t.fit()
    assert abs(t.history.steps["loss"].iloc[0] - LN2) < 1e-6
    assert t.history.steps["loss"].iloc[-1] < LN2  # the adapters learned
    assert all(torch.equal(w.detach(), b) for w, b in quant)  # the 4-bit base is untouched
    now = dict(t.model.named_parameters())
    assert any(not torch.equal(now[n].detach().float(), b) for n, b in before.items() if "lora_B" in n)


def test_qlora_resumes_on_a_4bit_base(saved_llama, tok, tmp_path):
    "A QLoRA checkpoint resumes on the same 4-bit, kbit-prepared base (not on a full-precision one)."
    pytest.importorskip("bitsandbytes")
    def start():
        q, _ = load_model(str(saved_llama), load_in_4bit=True, device="cpu")
        torch.manual_seed(0)  # the LoRA init
        return lora(q)
    straight = DPOTrainer(start(), tok, TRAIN, cfg(max_steps=4, learning_rate=1e-2))
    straight.fit()
    a = DPOTrainer(start(), tok, TRAIN, cfg(max_steps=4, learning_rate=1e-2))
    a.fit(2); a.save(tmp_path / "ck")
    b = DPOTrainer.load(tmp_path / "ck")
    base = b.model.get_base_model()
    assert base.is_quantized and {type(m).__name__ for m in base.modules()} >= {"Linear4bit"}
    assert b.history.meta["precision"]["placed"] and b.ref_mode == "adapters"
    b.fit()
    np.testing.assert_allclose(b.history.steps["loss"], straight.history.steps["loss"], atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------- dropout
@pytest.mark.parametrize("name,kw", [("llama", dict(attention_dropout=0.5)),  # a rate the attention reads at run time
                                     ("gpt2", dict(resid_pdrop=0.3, embd_pdrop=0.3, attn_pdrop=0.3))])  # nn.Dropout modules
def test_a_dropout_model_starts_at_exactly_ln2(tok, name, kw):
    t = DPOTrainer(arch(name, **kw), tok, TRAIN, cfg(max_steps=1))
    assert t.history.meta["precision"]["dropouts_disabled"] > 0
    t.fit()
    assert abs(t.history.steps["loss"].iloc[0] - LN2) < 1e-6
    assert np.abs(first_step_pairs(t)["margin"]).max() < 1e-6
    on = DPOTrainer(arch(name, **kw), tok, TRAIN, cfg(max_steps=1, disable_dropout=False))
    on.fit()
    assert abs(on.history.steps["loss"].iloc[0] - LN2) > 1e-4  # with dropout on, step 0 is already noise


# ---------------------------------------------------------------------------------------------- adapters
def lora(model, **kw):
    from peft import LoraConfig, get_peft_model
    return get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", lora_dropout=0.0, task_type="CAUSAL_LM", **kw))


def sft_adapter(seed=1, base=None):
    "A LoRA model whose adapter has been 'trained' (B != 0): the SFT-with-LoRA, then DPO recipe."
    base = base if base is not None else arch("llama")
    torch.manual_seed(seed)  # the LoRA init
    m = lora(base)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "lora_B" in n: p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return m


def test_fresh_lora_reference_is_adapters_off(tok):
    t = DPOTrainer(lora(arch("llama")), tok, TRAIN, cfg())
    assert t.ref_mode == "adapters" and REF_ADAPTER not in t.model.peft_config
    t.fit()
    assert abs(t.history.steps["loss"].iloc[0] - LN2) < 1e-6


@pytest.mark.parametrize("make", [sft_adapter, lambda: lora(arch("llama"), init_lora_weights="pissa")], ids=["sft_adapter", "pissa"])
def test_adapter_carrying_model_starts_with_zero_margins(tok, make):
    model = make()
    t = DPOTrainer(model, tok, TRAIN, cfg())
    assert t.ref_mode == "adapter_copy"
    opt = {id(p) for g in t.optimizer.param_groups for p in g["params"]}
    ref_params = {n: p for n, p in t.model.named_parameters() if f".{REF_ADAPTER}." in n}
    assert ref_params and not any(id(p) in opt or p.requires_grad for p in ref_params.values())
    start = {n: p.detach().clone() for n, p in ref_params.items()}
    # what the old rule (adapters off) would have used as the reference: not the starting policy
    b = t.collate([t.train_data[i] for i in range(4)])
    with torch.no_grad():
        t.model.eval()
        on = concat_response_logps(t.model, b)["chosen_logps"]
        with t.model.disable_adapter(): off = concat_response_logps(t.model, b)["chosen_logps"]
    assert (on - off).abs().max() > 1e-2
    t.fit()
    assert np.abs(first_step_pairs(t)["margin"]).max() < 1e-6 and abs(t.history.steps["loss"].iloc[0] - LN2) < 1e-6
    assert all(torch.equal(p.detach(), start[n]) for n, p in t.model.named_parameters() if n in start)  # the copy stays frozen
    assert [n for n, p in t.model.named_parameters() if p.requires_grad] == [
        n for n, p in t.model.named_parameters() if ".default." in n]  # and only the trained adapter learns


@pytest.mark.parametrize("how", ["adapters", "adapter_copy"])
def test_token_kl_against_the_adapter_reference(tok, how):
    "The exact token KL of a peft policy from its reference equals the KL from a separate copy of the starting model."
    model = lora(arch("llama")) if how == "adapters" else sft_adapter()
    start = copy.deepcopy(model).eval()
    t = DPOTrainer(model, tok, TRAIN, cfg(max_steps=6, learning_rate=3e-2, kl_prompts=4, kl_max_new_tokens=4))
    t.fit()
    from dpo_nb.logps import token_kl
    b = t.collate([t.train_data[i] for i in range(4)])
    with torch.no_grad():
        t.model.eval()
        ours = token_kl(t.model, None, b["chosen_input_ids"], b["chosen_attention_mask"], b["chosen_response_mask"],
                        ref_context=t._reference)
        theirs = token_kl(t.model, start, b["chosen_input_ids"], b["chosen_attention_mask"], b["chosen_response_mask"])
    assert float(ours[0].sum()) > 1e-3
    torch.testing.assert_close(ours[0], theirs[0], atol=1e-5, rtol=1e-4)
    kl = t.history.kl
    assert (kl[(kl["method"] == "token_exact") & (kl["step"] == 6)]["value"] > 1e-4).all()


@pytest.mark.parametrize("how", ["adapters", "adapter_copy", "model"])
def test_precompute_ref_gives_the_same_losses_without_a_reference_forward_per_step(tok, how):
    make = {"adapters": lambda: (lora(arch("llama")), None), "adapter_copy": lambda: (sft_adapter(), None),
            "model": lambda: (arch("llama"), arch("llama", seed=5))}[how]  # (a reference other than the start: scored as given)
    runs = []
    for pre in (False, True):
        model, ref = make()
        t = DPOTrainer(model, tok, TRAIN, cfg(max_steps=4, precompute_ref=pre), ref_model=ref)
        calls = []
        real = t._reference
        t._reference = lambda: calls.append(1) or real()
        for _ in range(4): t.train_step()  # (fit would also estimate KL, which uses the reference by design)
        assert t.ref_mode == how and ("train" in t.ref_logps) == pre and (len(calls) == 0) == pre
        runs.append(t.history.steps["loss"].to_numpy())
    np.testing.assert_allclose(runs[1], runs[0], atol=1e-6, rtol=0)


def test_widgets_rescore_against_the_starting_adapter(tok):
    "A widget's Run on an adapter_copy trainer scores the reference through the frozen copy, not with the adapters off."
    from dpo_nb.widgets import Run
    t = DPOTrainer(sft_adapter(), tok, TRAIN, cfg(max_steps=3, learning_rate=3e-2))
    b = t.collate([t.train_data[i] for i in range(4)])
    t.model.eval()
    with torch.no_grad(): start = concat_response_logps(t.model, b)["chosen_logps"]
    t.fit()
    t.model.eval()
    with torch.no_grad(), Run(t).reference() as ref: got = concat_response_logps(ref, b)["chosen_logps"]
    torch.testing.assert_close(got, start)


def test_adapter_copy_resumes_exactly(tok, tmp_path, saved_llama):
    base = lambda: tf.AutoModelForCausalLM.from_pretrained(saved_llama, attn_implementation="eager")  # a named base, as from the Hub
    straight = DPOTrainer(sft_adapter(base=base()), tok, TRAIN, cfg(max_steps=6))
    straight.fit()
    a = DPOTrainer(sft_adapter(base=base()), tok, TRAIN, cfg(max_steps=6))
    a.fit(3); a.save(tmp_path / "ck")
    b = DPOTrainer.load(tmp_path / "ck")
    assert b.ref_mode == "adapter_copy" and b.model.get_base_model().config._attn_implementation == "eager"
    c = DPOTrainer.load(tmp_path / "ck", precompute_ref=True)  # asked for on resume: scored with the restored starting adapter
    assert "train" in c.ref_logps
    c.fit()
    np.testing.assert_allclose(c.history.steps["loss"], straight.history.steps["loss"], atol=1e-6, rtol=0)
    b.fit()
    np.testing.assert_allclose(b.history.steps["loss"], straight.history.steps["loss"], atol=1e-6, rtol=0)
    ref_b = {n: p for n, p in b.model.named_parameters() if f".{REF_ADAPTER}." in n}
    ref_s = {n: p for n, p in straight.model.named_parameters() if f".{REF_ADAPTER}." in n}
    assert ref_b.keys() == ref_s.keys() and all(torch.equal(ref_b[n], ref_s[n]) for n in ref_s)  # the starting adapter, not step 3's


# ---------------------------------------------------------------------------------------------- MoE
@pytest.mark.parametrize("name", ["mixtral", "qwen2_moe"])
def test_moe_router_loss_is_added_and_logged(tok, name):
    t = DPOTrainer(arch(name), tok, TRAIN, cfg(), eval_data=make_pairs(8, seed=1))
    assert t.aux_coef == 0.001
    t.fit()
    s, p = t.history.steps, t.history.pairs.query("split == 'train'")
    assert (s["aux_loss"] > 0).all()
    dpo_part = p.groupby("step")["loss"].mean().to_numpy()
    np.testing.assert_allclose(s["loss"], dpo_part + 0.001 * s["aux_loss"], atol=1e-6, rtol=0)
    ev, pe = t.history.evals, t.history.pairs.query("split == 'eval'")  # evaluation too, as TRL's
    assert (ev["aux_loss"] > 0).all()
    np.testing.assert_allclose(ev["loss"], pe.groupby("step")["loss"].mean().to_numpy() + 0.001 * ev["aux_loss"], atol=1e-6, rtol=0)
    # the same router loss the model's own forward computes, on the same concatenated batch
    b = t.collate([t.train_data[i] for i in range(4)])
    cat = concat_pair_batch(b)
    with torch.no_grad():
        ours = concat_response_logps(t.model, b, router_aux=True)["aux_loss"]
        own = t.model(input_ids=cat["input_ids"], attention_mask=cat["attention_mask"], output_router_logits=True).aux_loss
    torch.testing.assert_close(ours, own)
    # and it is in the gradient: a larger weight gives other router weights after one step
    gate = lambda m: torch.cat([p.detach().reshape(-1) for n, p in m.named_parameters() if "gate" in n and "proj" not in n])
    a, b2 = (DPOTrainer(arch(name), tok, TRAIN, cfg(max_steps=1, router_aux_loss_coef=c)) for c in (0.0, 1.0))
    a.fit(); b2.fit()
    assert "aux_loss" not in a.history.steps and not torch.allclose(gate(a.model), gate(b2.model))


def test_router_loss_weight_on_a_dense_model_is_refused(tok):
    with pytest.raises(ValueError, match="not a mixture-of-experts model"):
        DPOTrainer(arch("llama"), tok, TRAIN, cfg(router_aux_loss_coef=0.01))


# ---------------------------------------------------------------------------------------------- architectures
LONG = make_pairs(16, seed=3, longer=12)  # prompts of ~15 tokens: past Mistral's and Gemma 2's window of 8, past Phi-3's 16


@pytest.mark.parametrize("name", ["llama", "qwen2", "gemma2", "mistral", "phi3", "mixtral", "qwen2_moe"])
def test_lean_path_gives_the_plain_forwards_losses(tok, name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (prefix_sharing=True warns where a model or batch must fall back)
        lean = DPOTrainer(arch(name), tok, LONG, cfg(max_steps=4, prefix_sharing=True))
        lean.fit()
    assert lean_path_ok(lean.model)
    plain_model = arch(name)
    plain_model._dpo_nb_lean_ok = False  # the model's own forward, full logits, concatenated chosen + rejected
    plain = DPOTrainer(plain_model, tok, LONG, cfg(max_steps=4, prefix_sharing=False))
    plain.fit()
    a, b = lean.history.steps["loss"].to_numpy(), plain.history.steps["loss"].to_numpy()
    assert a[-1] < a[0] - 1e-3  # it trains, so equal losses mean something
    np.testing.assert_allclose(a, b, atol=2e-5, rtol=0)
