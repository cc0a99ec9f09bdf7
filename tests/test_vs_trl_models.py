"""dpo_nb's trainer beside TRL's DPOTrainer on random-init models of real architectures (bench/vs_trl.py's harness: same
ids, same batches, same order): every step's loss equal, MoE router loss included."""
import argparse, sys
from pathlib import Path

import pytest
import torch
import transformers as tf

pytest.importorskip("trl")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import vs_trl  # noqa: E402

SHAPE = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2)


def model(name: str, vocab: int):
    torch.manual_seed(0)
    if name == "mixtral":
        return tf.MixtralForCausalLM(tf.MixtralConfig(vocab_size=vocab, num_local_experts=4, num_experts_per_tok=2, **SHAPE))
    if name == "qwen2_moe":
        return tf.Qwen2MoeForCausalLM(tf.Qwen2MoeConfig(vocab_size=vocab, num_experts=4, num_experts_per_tok=2,
                                                        moe_intermediate_size=32, shared_expert_intermediate_size=32, **SHAPE))
    return tf.Gemma2ForCausalLM(tf.Gemma2Config(vocab_size=vocab, head_dim=8, sliding_window=16, **SHAPE))


@pytest.mark.parametrize("name", ["mixtral", "qwen2_moe", "gemma2"])
def test_step_losses_equal_trls(name):
    case = dict(vocab=512, prompt=24, response=16)
    args = argparse.Namespace(batch_size=4, steps=3)
    tok, pairs, data, order = vs_trl.setup(case, args.batch_size, args.steps)
    pristine, dev = model(name, case["vocab"]), torch.device("cpu")
    ours = vs_trl.run_tool("dpo_nb", pristine, tok, pairs, data, order, args, dev)
    trl = vs_trl.run_tool("TRL best", pristine, tok, pairs, data, order, args, dev)
    assert len(ours["losses"]) == len(trl["losses"]) == 1 + args.steps
    assert max(abs(a - b) for a, b in zip(ours["losses"], trl["losses"])) < 1e-5, (ours["losses"], trl["losses"])
    assert ours["losses"][-1] != ours["losses"][0]  # it trained
