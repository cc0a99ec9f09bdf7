"""Each objective TRL 1.16's DPOTrainer has beyond DPO, trained for 10 steps by dpo_nb and by TRL on the same pairs,
in the same batches and order (bench/vs_trl.py's harness): every step's loss equal."""
import argparse, sys
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

pytest.importorskip("trl")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import vs_trl  # noqa: E402

OBJECTIVES = {  # name: the settings, as both DPOConfigs spell them
    "discopop": dict(loss_type="discopop", discopop_tau=0.05),
    "aot": dict(loss_type="aot"),
    "aot_unpaired": dict(loss_type="aot_unpaired", label_smoothing=0.1),
    "rpo": dict(loss_type=["sigmoid", "sft"]),
    "mpo": dict(loss_type=["sigmoid", "bco_pair", "sft"], loss_weights=[0.8, 0.2, 1.0]),
    "js": dict(loss_type="sigmoid", f_divergence_type="js_divergence"),
    "alpha": dict(loss_type="hinge", f_divergence_type="alpha_divergence", f_alpha_divergence_coef=0.5),
}


@pytest.mark.parametrize("name", OBJECTIVES)
def test_ten_steps_equal_trls(name):
    case = dict(vocab=256, prompt=16, response=12)
    args = argparse.Namespace(batch_size=4, steps=10, loss=OBJECTIVES[name])
    tok, pairs, data, order = vs_trl.setup(case, args.batch_size, args.steps)
    torch.manual_seed(0)
    pristine = LlamaForCausalLM(LlamaConfig(vocab_size=case["vocab"], hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                            pad_token_id=0, bos_token_id=1, eos_token_id=2))
    dev = torch.device("cpu")
    ours = vs_trl.run_tool("dpo_nb", pristine, tok, pairs, data, order, args, dev)
    trl = vs_trl.run_tool("TRL best", pristine, tok, pairs, data, order, args, dev)
    assert len(ours["losses"]) == len(trl["losses"]) == 1 + args.steps
    assert max(abs(a - b) for a, b in zip(ours["losses"], trl["losses"])) < 1e-5, (ours["losses"], trl["losses"])
    assert ours["losses"][-1] != ours["losses"][0]  # it trained
