"Prefix sharing (the prompt run once, its KV cache serving both responses) against the concatenated forward."
import warnings

import pytest
import torch
import transformers as tf

from dpo_nb.data import PairCollator
from dpo_nb.logps import (concat_response_logps, pair_layout, prefix_sharing_ok, prefix_sharing_pays,
                          prefix_sharing_tokens, response_logps, shared_prefix_logps)

V = 211  # vocabulary of the tiny models; ids 0 (pad) .. V-1
BOS, EOS = 1, 2


def tiny(arch: str, vocab: int = V, **kw):
    "A tiny random-init causal LM of the given architecture, built from its config (no downloads)."
    torch.manual_seed(0)
    common = dict(vocab_size=vocab, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=0)
    if arch == "gpt2":
        cfg = tf.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=128, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0, **common)
        return tf.GPT2LMHeadModel(cfg)
    if arch == "opt":
        cfg = tf.OPTConfig(hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4, word_embed_proj_dim=32,
                           max_position_embeddings=128, dropout=0.0, attention_dropout=0.0, **common)
        return tf.OPTForCausalLM(cfg)
    if arch == "gpt_neox":
        cfg = tf.GPTNeoXConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                               max_position_embeddings=128, **common)
        return tf.GPTNeoXForCausalLM(cfg)
    base = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                max_position_embeddings=128, **common)
    if arch == "gemma": base["head_dim"] = 8
    cfg_cls, model_cls = {"llama": (tf.LlamaConfig, tf.LlamaForCausalLM), "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM),
                          "mistral": (tf.MistralConfig, tf.MistralForCausalLM), "gemma": (tf.GemmaConfig, tf.GemmaForCausalLM),
                          "phi3": (tf.Phi3Config, tf.Phi3ForCausalLM)}[arch]
    return model_cls(cfg_cls(**{**base, **kw}))


ARCHS = ["llama", "qwen2", "gpt2", "mistral", "gemma", "phi3", "opt", "gpt_neox"]


def rows(spec, bos=True, seed=0):
    "Pair rows from (prompt, chosen, rejected) lengths; responses end in EOS; prompts start with BOS if `bos`."
    g = torch.Generator().manual_seed(seed)
    tok = lambda n: torch.randint(3, V, (n,), generator=g).tolist()
    out = []
    for i, (p, c, r) in enumerate(spec):
        prompt = ([BOS] + tok(p - 1)) if bos else tok(p)
        out.append(dict(pair_id=i, prompt_ids=prompt, chosen_ids=tok(c - 1) + [EOS], rejected_ids=tok(r - 1) + [EOS]))
    return out


# prompts of very different lengths (left padding of 1..12 slots), a 1-token prompt (just BOS) and 1-token responses
SPEC = [(13, 4, 7), (1, 5, 2), (6, 1, 9), (2, 3, 1), (9, 8, 8)]


def loss_of(out):  # asymmetric in chosen/rejected so that swapped rows could not cancel
    return out["chosen_logps"].sum() - 2.0 * out["rejected_logps"].sum() + 0.3 * (out["chosen_token_logps"] ** 2).sum()


def run(model, batch, fn):
    model.zero_grad(set_to_none=True)
    out = fn(model, batch)
    loss_of(out).backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in out.items()}, grads


def assert_same(a, b, atol=1e-5, rtol=1e-5):
    (va, ga), (vb, gb) = a, b
    for k in va:
        if va[k].is_floating_point(): torch.testing.assert_close(va[k], vb[k], atol=atol, rtol=rtol, msg=k)
        else: assert torch.equal(va[k].cpu(), vb[k].cpu()), k
    assert ga.keys() == gb.keys()
    for n in ga: torch.testing.assert_close(ga[n], gb[n], atol=atol, rtol=rtol, msg=n)


shared = lambda m, b: response_logps(m, b, chunk_size=7, prefix_sharing=True)
concat = lambda m, b: response_logps(m, b, prefix_sharing=False)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("bos", [True, False], ids=["bos", "no_bos"])
def test_values_and_gradients_equal_the_concatenated_forward(arch, bos):
    model = tiny(arch).train()  # training mode, no dropout in these configs
    assert prefix_sharing_ok(model)
    batch = PairCollator(0)(rows(SPEC, bos=bos))
    assert len(set(batch["prompt_lengths"].tolist())) == len(SPEC)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no silent fallback: True must really share here
        s = run(model, batch, shared)
    assert_same(s, run(model, batch, concat))


class WrappedHead(torch.nn.Linear):
    "A head that is not a plain `nn.Linear` (as a peft adapter on lm_head would be): the row-chunked path."


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("head", ["plain", "wrapped"])
def test_big_logits_paths_give_the_same_gradients(arch, head, monkeypatch):
    "Logits treated as big: vocabulary tiles (plain head) or 3-row chunks recomputed in backward (other heads)."
    import dpo_nb.logps as L
    model = tiny(arch, vocab=1000).train()  # 1000 columns: 4 tiles of 256
    if head == "wrapped":
        old = model.get_output_embeddings()
        new = WrappedHead(old.in_features, old.out_features, bias=old.bias is not None)
        new.load_state_dict(old.state_dict())
        model.set_output_embeddings(new)
        if getattr(model.config, "tie_word_embeddings", False): model.tie_weights()
    batch = PairCollator(0)(rows(SPEC))
    want = run(model, batch, concat)
    monkeypatch.setattr(L, "KEEP_LOGITS", 0)
    monkeypatch.setattr(L, "LOGITS_BUDGET", 3 * 1000)  # row chunks of 3; vocabulary tiles of max(256, 3000 / n)
    calls = []
    real = L.VocabTiledLogps.apply
    monkeypatch.setattr(L.VocabTiledLogps, "apply", lambda *a: calls.append(1) or real(*a))
    assert_same(run(model, batch, shared), want)
    assert_same(run(model, batch, concat), want)
    assert bool(calls) == (head == "plain")


def test_per_token_layout_is_the_collators():
    "The log-prob of token t sits at its position in the right-padded chosen/rejected_input_ids, zeros elsewhere."
    model = tiny("llama").eval()
    batch = PairCollator(0, same_length=False)(rows(SPEC))
    assert batch["chosen_input_ids"].shape[1] != batch["rejected_input_ids"].shape[1]
    with torch.no_grad(): out = shared_prefix_logps(model, batch)
    for side in ("chosen", "rejected"):
        tl = out[f"{side}_token_logps"]
        assert tl.shape == batch[f"{side}_input_ids"].shape
        assert torch.equal(tl != 0, batch[f"{side}_response_mask"].bool())
        with torch.no_grad():  # spot-check one token against a single-sequence forward
            b, t = 0, int(batch["prompt_lengths"][0]) + 2
            ids = batch[f"{side}_input_ids"][b:b + 1, :t + 1]
            lp = model(ids).logits[0, t - 1].log_softmax(-1)[ids[0, t]]
        assert tl[b, t].item() == pytest.approx(lp.item(), abs=1e-5)
        assert torch.equal(out[f"{side}_tokens"], batch[f"{side}_response_mask"].sum(-1))


def test_one_pair_and_one_token_responses():
    model = tiny("qwen2").train()
    for spec in ([(5, 3, 4)], [(4, 1, 1), (2, 1, 1)]):
        batch = PairCollator(0)(rows(spec))
        assert_same(run(model, batch, shared), run(model, batch, concat))


def test_lora_gradients_flow_through_the_cache():
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(tiny("llama"), peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj", "k_proj"], lora_dropout=0.0))
    batch = PairCollator(0)(rows(SPEC))
    s, c = run(model, batch, shared), run(model, batch, concat)
    assert any("lora_B" in n and "k_proj" in n for n in s[1])  # k/v adapters: gradient through the cached prompt keys too
    assert_same(s, c)


def test_automatic_rule_shares_only_where_it_pays(monkeypatch):
    model = tiny("llama").eval()
    long_prompts = PairCollator(0)(rows([(40, 4, 6), (36, 5, 3)]))
    short_prompts = PairCollator(0)(rows([(1, 30, 28), (2, 25, 31)]))
    t = prefix_sharing_tokens(long_prompts)
    assert t["shared"] == 2 * 40 + 4 * (6 - 1) and t["concatenated"] == 4 * 46
    assert prefix_sharing_pays(long_prompts) and not prefix_sharing_pays(short_prompts)
    assert prefix_sharing_ok(model)  # (its one-time check runs the shared path too: before we count)
    calls = []
    import dpo_nb.logps as L
    real = L.shared_prefix_logps
    monkeypatch.setattr(L, "shared_prefix_logps", lambda *a, **k: calls.append(1) or real(*a, **k))
    with torch.no_grad():
        L.response_logps(model, long_prompts); L.response_logps(model, short_prompts)
        L.response_logps(model, long_prompts, prefix_sharing=False)
    assert calls == [1]


def test_fallbacks_are_clear_and_correct():
    batch = PairCollator(0)(rows(SPEC))
    # gradient checkpointing while training: the concatenated forward, with a warning when sharing was asked for
    model = tiny("llama").train()
    if hasattr(model, "activation_checkpointing_enable"): model.activation_checkpointing_enable()  # transformers >= 5.x
    else: model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    with pytest.warns(UserWarning, match="checkpointing"):
        s = run(model, batch, shared)
    assert_same(s, run(model, batch, concat))
    # a sliding window shorter than prompt + response
    model = tiny("mistral", sliding_window=8).eval()
    with pytest.warns(UserWarning, match="sliding window"):
        with torch.no_grad(): response_logps(model, batch, prefix_sharing=True)
    # a batch whose response mask has a hole: not prompt + one response
    odd = {k: v.clone() for k, v in batch.items()}
    odd["chosen_response_mask"][0, int(odd["prompt_lengths"][0]) + 1] = 0
    assert pair_layout(odd) is None
    with pytest.warns(UserWarning, match="concatenated forward"):
        with torch.no_grad(): got = response_logps(tiny("llama").eval(), odd, prefix_sharing=True)
    with torch.no_grad(): want = concat_response_logps(tiny("llama").eval(), odd)
    torch.testing.assert_close(got["chosen_logps"], want["chosen_logps"])
    # chosen and rejected with different prompt tokens
    odd = {k: v.clone() for k, v in batch.items()}
    odd["rejected_input_ids"][0, 1] = (odd["rejected_input_ids"][0, 1] + 1) % V
    assert pair_layout(odd) is None
    # no automatic warning spam: the automatic rule falls back silently on a batch that does not fit
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.no_grad(): response_logps(tiny("llama").eval(), odd)


def test_prompt_learning_peft_model_falls_back():
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(tiny("llama"), peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3))
    with pytest.warns(UserWarning, match="prefix sharing is off"):
        assert not prefix_sharing_ok(model)


def test_trainer_steps_agree_with_and_without_sharing(monkeypatch):
    "Five DPO steps with the prompt shared give the same losses and weights as with the concatenated forward."
    import numpy as np
    import dpo_nb.train as T
    from datasets import Dataset
    data = Dataset.from_list([dict(r, boundary_merge=False) for r in rows([(20 + 3 * i, 4 + i % 5, 3 + i % 4) for i in range(16)], seed=1)])

    class Tok:  # just enough of a tokenizer for the trainer: ids are given
        pad_token_id, eos_token_id, bos_token_id = 0, EOS, BOS
        def __len__(self): return V
        def decode(self, ids): return " ".join(map(str, ids))

    used = []  # which forward every training step of the policy took
    real_shared = T.response_logps.__globals__["shared_prefix_logps"]
    def spy(*a, **k): used.append(torch.is_grad_enabled()); return real_shared(*a, **k)
    monkeypatch.setitem(T.response_logps.__globals__, "shared_prefix_logps", spy)

    def train(sharing):
        used.clear()
        cfg = T.DPOConfig(batch_size=4, max_steps=5, learning_rate=1e-3, warmup_ratio=0.0, lr_schedule="constant",
                          probe_pairs=0, progress=False, device="cpu", prefix_sharing=sharing, ref_cache=False)
        t = T.DPOTrainer(tiny("llama"), Tok(), data, cfg)
        t.fit()
        return t.history.steps["loss"].to_numpy(), t.model.state_dict(), sum(used)

    (la, wa, na), (lb, wb, nb) = train(True), train(False)
    assert (na, nb) == (5, 0)  # the config flag turns sharing on for every training step, and off

    np.testing.assert_allclose(la, lb, atol=1e-5, rtol=0)
    assert la[0] != la[-1]
    for k in wa: torch.testing.assert_close(wa[k], wb[k], atol=1e-5, rtol=1e-4, msg=k)
