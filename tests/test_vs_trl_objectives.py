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
    "ld_dpo": dict(loss_type="sigmoid", ld_alpha=0.5),
    "ld_dpo_ipo": dict(loss_type="ipo", ld_alpha=0.2),
    "tr_dpo": dict(loss_type="sigmoid", sync_ref_model=True, ref_model_mixup_alpha=0.6, ref_model_sync_steps=2),
    "wpo": dict(loss_type="sigmoid", use_weighting=True),
    # (WPO with sft: TRL 1.16 raises, multiplying its expanded batch NLL in place; test_loss_objectives checks ours)
    "wpo_ld_ipo": dict(loss_type="ipo", use_weighting=True, ld_alpha=0.5),
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
    # (TR-DPO moves the reference, so TRL runs with a reference model of its own rather than precomputed log-probs)
    trl = vs_trl.run_tool("TRL default" if name == "tr_dpo" else "TRL best", pristine, tok, pairs, data, order, args, dev)
    assert len(ours["losses"]) == len(trl["losses"]) == 1 + args.steps
    assert max(abs(a - b) for a, b in zip(ours["losses"], trl["losses"])) < 1e-5, (ours["losses"], trl["losses"])
    assert ours["losses"][-1] != ours["losses"][0]  # it trained
    if OBJECTIVES[name].get("use_weighting"):  # WPO's weights are far enough from 1 here that the check tells them from none
        plain = argparse.Namespace(batch_size=4, steps=10, loss={k: v for k, v in OBJECTIVES[name].items() if k != "use_weighting"})
        unweighted = vs_trl.run_tool("dpo_nb", pristine, tok, pairs, data, order, plain, dev)["losses"]
        assert max(abs(a - b) for a, b in zip(ours["losses"], unweighted)) > 1e-3


def test_tr_dpo_moves_the_reference_refuses_a_fixed_one_and_resumes_exactly(tmp_path):
    from dpo_nb.train import ConfigError, DPOConfig, DPOTrainer
    import copy, warnings
    case = dict(vocab=256, prompt=16, response=12)
    tok, pairs, data, order = vs_trl.setup(case, 4, 6)
    torch.manual_seed(0)
    base = LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                        num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0, bos_token_id=1, eos_token_id=2))
    cfg = DPOConfig(batch_size=4, max_steps=6, learning_rate=1e-3, device="cpu", progress=False, sync_ref_model=True,
                    ref_model_mixup_alpha=0.5, ref_model_sync_steps=2, max_length=None, max_prompt_length=None)
    with pytest.raises(ConfigError, match="needs a reference model of its own"):
        DPOTrainer(copy.deepcopy(base), tok, data, cfg)
    with pytest.raises(ConfigError, match="precompute_ref=True"):
        DPOConfig(sync_ref_model=True, precompute_ref=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = DPOTrainer(copy.deepcopy(base), tok, data, cfg, ref_model=copy.deepcopy(base))
        ref0 = [p.clone() for p in t.ref_model.parameters()]
        t.train_step()
        assert all(torch.equal(a, b) for a, b in zip(ref0, t.ref_model.parameters()))   # step 1: not yet
        t.train_step()                                                                  # step 2: ref <- 0.5 policy + 0.5 ref
        for r0, r, p in zip(ref0, t.ref_model.parameters(), t.model.parameters()):
            torch.testing.assert_close(r, 0.5 * p.detach() + 0.5 * r0)
        t.train_step()
        t.save(tmp_path / "ckpt")
        rest = [t.train_step()["loss"] for _ in range(3)]
        for ref in (None, copy.deepcopy(base)):  # resumed with the saved reference, or with a fresh copy given: the moved one is loaded
            r = DPOTrainer.load(tmp_path / "ckpt", ref_model=ref)
            assert [r.train_step()["loss"] for _ in range(3)] == rest


def test_ld_dpo_sums_are_the_same_through_every_log_prob_path():
    from dpo_nb.data import PairCollator
    from dpo_nb.logps import response_logps
    tok, pairs, data, order = vs_trl.setup(dict(vocab=256, prompt=16, response=12), 4, 1)
    torch.manual_seed(0)
    m = LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                     num_key_value_heads=2, max_position_embeddings=128))
    batch = PairCollator(tok)([data[i] for i in range(8)])
    with torch.no_grad():
        a, b = (response_logps(m, batch, prefix_sharing=ps, ld_alpha=0.3) for ps in (True, False))
        plain = response_logps(m, batch, prefix_sharing=False)
    for k in ("chosen_logps", "rejected_logps"):
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-5)
    # by hand: the first min(|y_w|, |y_l|) tokens in full, the rest times 0.3
    n = torch.minimum(plain["chosen_tokens"], plain["rejected_tokens"])
    for side in ("chosen", "rejected"):
        lp = plain[f"{side}_token_logps"]
        resp = batch[f"{side}_response_mask"].bool()
        want = torch.stack([lp[i][resp[i]][:n[i]].sum() + 0.3 * lp[i][resp[i]][n[i]:].sum() for i in range(len(n))])
        torch.testing.assert_close(b[f"{side}_logps"], want, rtol=1e-6, atol=1e-6)
    assert (a["chosen_tokens"] != a["rejected_tokens"]).any()  # (some pairs have a tail to weight)
