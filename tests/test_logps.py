"score_pairs and response_logps against the plainest computation: one sequence at a time, full softmax."
import math

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from dpo_nb.data import PairCollator, load_preferences, tokenize_pairs
from dpo_nb.logps import concat_pair_batch, response_logps, score_pairs, sequence_logps, token_kl

CORPUS = ["The movie was good and the acting was great.", "The plot was boring and the ending was bad.",
          "What is the capital of France? Paris is the capital of France.", "therefore there the theatre then"] * 30


@pytest.fixture(scope="module")
def tok():
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=400, special_tokens=["<bos>", "<eos>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bpe.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<bos>", eos_token="<eos>")


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)).eval()


PAIRS = [  # very different lengths, and prompts that end mid-word so BPE merges across the boundary
    dict(prompt="What is the capital of France?", chosen=" Paris.", rejected=" The plot was boring and the ending was bad. " * 6),
    dict(prompt="The movie was good and the", chosen="re", rejected=" acting was great."),
    dict(prompt="The", chosen="atre then", rejected=" movie"),
    dict(prompt="I", chosen=" liked it.", rejected=" did not."),
    dict(prompt="The plot was boring and the ending was bad. " * 8, chosen=" Yes.", rejected=" No, the acting was great."),
]


def naive_logp(model, prompt_ids, response_ids):
    ids = torch.tensor([list(prompt_ids) + list(response_ids)])
    with torch.no_grad(): lp = model(ids).logits[0].double().log_softmax(-1)
    return sum(lp[len(prompt_ids) - 1 + i, t].item() for i, t in enumerate(response_ids))


def test_score_pairs_equals_naive(model, tok):
    data = tokenize_pairs(load_preferences(PAIRS), tok, max_length=512, max_prompt_length=256)
    assert sum(data["boundary_merge"]) >= 1, "the fixture must contain a real boundary merge"
    lens = [len(p) + len(c) for p, c in zip(data["prompt_ids"], data["chosen_ids"])]
    assert max(lens) > 4 * min(lens)
    got = score_pairs(model, tok, data, batch_size=2, chunk_size=7)
    assert got["pair_id"].tolist() == list(range(len(PAIRS)))
    for i, row in enumerate(data):
        assert got["chosen_logps"][i] == pytest.approx(naive_logp(model, row["prompt_ids"], row["chosen_ids"]), abs=1e-5 * max(1, abs(got["chosen_logps"][i])))
        assert got["rejected_logps"][i] == pytest.approx(naive_logp(model, row["prompt_ids"], row["rejected_ids"]), abs=1e-5 * max(1, abs(got["rejected_logps"][i])))
        assert got["chosen_tokens"][i] == len(row["chosen_ids"]) and got["rejected_tokens"][i] == len(row["rejected_ids"])


def test_score_pairs_takes_raw_sources_and_keeps_order(model, tok):
    import pandas as pd
    a = score_pairs(model, tok, pd.DataFrame(PAIRS), batch_size=3)
    b = score_pairs(model, tok, PAIRS[::-1], batch_size=1)
    assert a["chosen_logps"].tolist() == pytest.approx(b["chosen_logps"].tolist()[::-1], abs=1e-4)


def test_batch_size_and_chunk_size_do_not_change_results(model, tok):
    data = tokenize_pairs(load_preferences(PAIRS), tok)
    ref = score_pairs(model, tok, data, batch_size=1, chunk_size=10_000)
    for bs, cs in [(2, 1), (5, 3), (8, 64)]:
        got = score_pairs(model, tok, data, batch_size=bs, chunk_size=cs)
        assert got[["chosen_logps", "rejected_logps"]].values == pytest.approx(ref[["chosen_logps", "rejected_logps"]].values, abs=1e-5)


def test_per_token_logps_and_gradients_match_plain_forward(model, tok):
    data = tokenize_pairs(load_preferences(PAIRS), tok)
    batch = PairCollator(tok.eos_token_id)([data[i] for i in range(len(data))])
    model.zero_grad()
    out = response_logps(model, batch, chunk_size=5)
    (out["chosen_logps"].sum() - 2 * out["rejected_logps"].sum()).backward()
    g_lean = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    cat = concat_pair_batch(batch)
    lp = model(input_ids=cat["input_ids"], attention_mask=cat["attention_mask"]).logits[:, :-1].float().log_softmax(-1)
    tl = lp.gather(-1, cat["input_ids"][:, 1:, None]).squeeze(-1) * cat["response_mask"][:, 1:]
    B = batch["chosen_input_ids"].shape[0]
    (tl[:B].sum() - 2 * tl[B:].sum()).backward()
    for a, b in zip(g_lean, (p.grad for p in model.parameters())):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    model.zero_grad()
    # per-token values sit on the response tokens, zero elsewhere
    tok_lp = out["chosen_token_logps"].detach()
    assert (tok_lp[batch["chosen_response_mask"] == 0] == 0).all()
    assert (tok_lp[batch["chosen_response_mask"] == 1] < 0).all()
    torch.testing.assert_close(tok_lp.sum(-1), out["chosen_logps"].detach())


def test_response_at_position_zero_is_refused(model):
    ids = torch.tensor([[5, 6, 7]])
    with pytest.raises(ValueError, match="position 0"):
        sequence_logps(model, ids, torch.ones_like(ids), torch.ones_like(ids))


def test_fallback_for_models_whose_head_is_not_plain(tok):
    def make():
        torch.manual_seed(1)
        return LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                            num_attention_heads=4, num_key_value_heads=4)).eval()
    plain = score_pairs(make(), tok, PAIRS[:3])
    m = make()
    orig = m.forward
    m.forward = lambda *a, **k: (lambda o: (setattr(o, "logits", o.logits * 0.5), o)[1])(orig(*a, **k))  # a model that scales its logits
    with pytest.warns(UserWarning, match="do not reproduce its logits"):
        scaled = score_pairs(m, tok, PAIRS[:3])
    data = tokenize_pairs(load_preferences(PAIRS[:3]), tok)
    for i, row in enumerate(data):
        assert scaled["chosen_logps"][i] == pytest.approx(naive_logp(m, row["prompt_ids"], row["chosen_ids"]), abs=1e-4)
    assert not scaled["chosen_logps"].equals(plain["chosen_logps"])


def test_token_kl_is_exact(model, tok):
    torch.manual_seed(3)
    ref = LlamaForCausalLM(model.config).eval()
    data = tokenize_pairs(load_preferences(PAIRS[:3]), tok)
    b = PairCollator(tok.eos_token_id)([data[i] for i in range(3)])
    s, n = token_kl(model, ref, b["chosen_input_ids"], b["chosen_attention_mask"], b["chosen_response_mask"], chunk_size=3)
    for i, row in enumerate(data):
        ids = torch.tensor([row["prompt_ids"] + row["chosen_ids"]])
        with torch.no_grad():
            p, q = model(ids).logits[0].double().log_softmax(-1), ref(ids).logits[0].double().log_softmax(-1)
        P = len(row["prompt_ids"])
        want = sum((p[t].exp() * (p[t] - q[t])).sum().item() for t in range(P - 1, P - 1 + len(row["chosen_ids"])))
        assert s[i].item() == pytest.approx(want, rel=1e-4)
        assert n[i].item() == len(row["chosen_ids"])


def _full_log_sum_sq(model, ids):
    "log Σ_v π(v | context)² at every position of one sequence, from the model's own full logits (no lean path)."
    with torch.no_grad():
        z = model(input_ids=ids[None]).logits[0].double().log_softmax(-1)
    return torch.logsumexp(2 * z, -1)


def test_wpo_log_sum_sq_is_the_same_through_every_path_and_equals_the_full_softmax(tok, model):
    import copy
    import transformers as tf
    pairs = tokenize_pairs(load_preferences(PAIRS), tok)
    batch = PairCollator(tok.pad_token_id or 0)([pairs[i] for i in range(len(pairs))])
    torch.manual_seed(0)
    gemma2 = tf.Gemma2ForCausalLM(tf.Gemma2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                  num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                                  final_logit_softcapping=2.0, max_position_embeddings=512)).eval()
    for m in (model, gemma2):  # (Gemma 2's soft cap changes every logit: the check sees it applied)
        plain = copy.deepcopy(m)
        plain._dpo_nb_lean_ok = False  # the full-logits path
        with torch.no_grad():
            outs = [response_logps(m, batch, chunk_size=3, prefix_sharing=True, sum_sq=True),
                    response_logps(m, batch, chunk_size=3, prefix_sharing=False, sum_sq=True),
                    response_logps(plain, batch, prefix_sharing=False, sum_sq=True)]
        for side in ("chosen", "rejected"):
            ids, resp = batch[f"{side}_input_ids"], batch[f"{side}_response_mask"].bool()
            for b in range(ids.shape[0]):
                want = _full_log_sum_sq(m, ids[b])[:-1][resp[b, 1:]]  # position t - 1 predicts token t
                for out in outs:
                    got = out[f"{side}_token_log_sum_sq"]
                    torch.testing.assert_close(got[b][resp[b]].double(), want, rtol=1e-5, atol=1e-5)
                    assert float(got[b][~resp[b]].abs().sum()) == 0.0
        assert all(not o["chosen_token_log_sum_sq"].requires_grad for o in outs)
        assert "chosen_token_log_sum_sq" not in response_logps(m, batch)  # only when asked
