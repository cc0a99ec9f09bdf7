"""The objectives beyond DPO's sigmoid, against TRL 1.16's own code on the same log-probs: f-divergences and mixtures of
loss types (its DPOTrainer), SimPO (its CPO trainer) and ORPO (its ORPO trainer); DPOP against the Smaug paper's
equation. The DPOTrainer harness is test_loss.py's: `_compute_loss` called unbound with stand-ins."""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dpo_nb.loss import F_DIVERGENCES, LOSS_TYPES, dpo_loss
from test_loss import PROMPT_LEN, DPOTrainer, _trl_stand_ins, make_pairs

cpo = pytest.importorskip("trl.experimental.cpo.cpo_trainer")
orpo = pytest.importorskip("trl.experimental.orpo.orpo_trainer")

ON_SCORES = ("sigmoid", "hinge", "ipo", "exo_pair", "robust", "discopop", "sigmoid_norm")
EPS = {"exo_pair": 1e-3, "robust": 0.1}


def trl_mean(types, weights, beta, eps, pcs, f_div="reverse_kl", alpha=1.0):
    "TRL DPOTrainer's batch loss for a list of loss types with weights and a divergence."
    pc, pr, rc, rr, nc, nr = pcs
    self, model, inputs, _ = _trl_stand_ins(types[0], beta, eps, pc, pr, nc, nr)
    self.loss_types, self.loss_weights, self.f_divergence_type, self.f_alpha_divergence_coef = types, weights, f_div, alpha
    inputs.update(ref_chosen_logps=rc, ref_rejected_logps=rr)
    return DPOTrainer._compute_loss(self, model, inputs, return_outputs=False).detach()


@pytest.mark.parametrize("alpha", [0.5, 1.5])
@pytest.mark.parametrize("f_div", F_DIVERGENCES[1:])
@pytest.mark.parametrize("loss_type", ON_SCORES)
def test_f_divergences_equal_trls(loss_type, f_div, alpha):
    for beta, scale in ((0.1, 1.0), (0.5, 5.0), (2.0, 0.3)):  # (the exponential scores overflow for big log-ratios, in TRL too)
        # float32: TRL's alpha divergence knows the clamp for float16, bfloat16 and float32 only
        pcs = make_pairs(6, scale, dtype=torch.float32, seed=hash((loss_type, f_div, beta)) % 2**31)
        eps = EPS.get(loss_type, 0.0)
        ours = dpo_loss(*pcs[:4], beta, loss_type, eps, chosen_tokens=pcs[4], rejected_tokens=pcs[5], f_divergence_type=f_div,
                        f_alpha_divergence_coef=alpha)[0]
        assert torch.isfinite(ours).all()
        torch.testing.assert_close(ours.mean(), trl_mean([loss_type], [1.0], beta, eps, pcs, f_div, alpha), rtol=1e-6, atol=1e-6)
        for i in range(6):  # per pair
            one = tuple(t[i:i + 1] for t in pcs)
            torch.testing.assert_close(ours[i], trl_mean([loss_type], [1.0], beta, eps, one, f_div, alpha), rtol=1e-6, atol=1e-6)


def test_a_divergence_is_refused_for_the_losses_it_does_not_apply_to():
    pcs = make_pairs(3, 1.0)
    for lt in sorted(set(LOSS_TYPES) - {*ON_SCORES, "sft"}):
        with pytest.raises(ValueError, match=f"do not take it"):
            dpo_loss(*pcs[:4], 0.1, lt, chosen_tokens=pcs[4], rejected_tokens=pcs[5], f_divergence_type="forward_kl")
    with pytest.raises(ValueError, match="choose one of"):
        dpo_loss(*pcs[:4], 0.1, "sigmoid", f_divergence_type="kl")


MIXES = [(["sigmoid", "bco_pair", "sft"], [0.8, 0.2, 1.0]),  # MPO
         (["sigmoid", "sft"], None),                        # RPO, TRL's default weights (1 each)
         (["ipo", "aot", "discopop"], [1.0, 0.5, 2.0]),
         (["hinge", "apo_zero", "nca_pair", "sppo_hard"], [0.1, 0.2, 0.3, 0.4])]


@pytest.mark.parametrize("types,weights", MIXES)
def test_mixtures_equal_trls_and_the_weighted_sum(types, weights):
    for beta, scale in ((0.1, 30.0), (0.5, 1.0)):
        pcs = make_pairs(8, scale, seed=len(types))
        ours = dpo_loss(*pcs[:4], beta, types, loss_weights=weights, chosen_tokens=pcs[4], rejected_tokens=pcs[5])[0]
        torch.testing.assert_close(ours.mean(), trl_mean(types, weights or [1.0] * len(types), beta, 0.0, pcs), rtol=0, atol=1e-6)
        parts = [dpo_loss(*pcs[:4], beta, t, chosen_tokens=pcs[4], rejected_tokens=pcs[5])[0] for t in types]
        torch.testing.assert_close(ours, sum(w * p for w, p in zip(weights or [1.0] * len(types), parts)), rtol=0, atol=1e-12)


def test_bad_mixtures_are_refused():
    pcs = make_pairs(3, 1.0)
    for kw, msg in ((dict(loss_type=["sigmoid", "sft"], loss_weights=[1.0]), "one weight per loss type"),
                    (dict(loss_type=["sigmoid", "sigmoid"]), "names a loss type twice"),
                    (dict(loss_type=[]), "at least one"),
                    (dict(loss_type=["sigmoid", "dpo"]), "unknown loss_type 'dpo'"),
                    (dict(loss_type=["sigmoid", "sft"], loss_weights=[1.0, float("nan")]), "finite"),
                    (dict(loss_type=["hinge", "sft"], label_smoothing=0.1), "not used by loss_type")):
        with pytest.raises(ValueError, match=msg):
            dpo_loss(*pcs[:4], 0.1, chosen_tokens=pcs[4], rejected_tokens=pcs[5], **kw)
    # cDPO mixed with the NLL term: ε is the sigmoid's
    ok = dpo_loss(*pcs[:4], 0.1, ["sigmoid", "sft"], 0.1, chosen_tokens=pcs[4], rejected_tokens=pcs[5])[0]
    assert torch.isfinite(ok).all()


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.4])
@pytest.mark.parametrize("beta", [0.1, 2.0, 10.0])
def test_simpo_equals_trls_cpo_trainer(beta, gamma):
    pc, pr, rc, rr, nc, nr = make_pairs(6, 30.0, seed=11)
    ours = dpo_loss(pc, pr, rc, rr, beta, "simpo", chosen_tokens=nc, rejected_tokens=nr, simpo_gamma=gamma)[0]
    me = SimpleNamespace(alpha=0.0, loss_type="simpo", simpo_gamma=gamma, beta=beta, label_smoothing=0.0,
                         accelerator=SimpleNamespace(device=torch.device("cpu")))
    theirs = cpo.CPOTrainer.cpo_loss(me, pc / nc, pr / nr)[0]  # SimPO takes average log-probs
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-9)
    # reference-free: the reference's log-probs change nothing
    torch.testing.assert_close(ours, dpo_loss(pc, pr, rc * 3, rr - 5, beta, "simpo", chosen_tokens=nc, rejected_tokens=nr,
                                              simpo_gamma=gamma)[0])


@pytest.mark.parametrize("beta", [0.1, 0.5, 1.0])
def test_orpo_equals_trls_orpo_trainer(beta):
    pc, pr, rc, rr, nc, nr = make_pairs(6, 30.0, seed=12)
    ours = dpo_loss(pc, pr, rc, rr, beta, "orpo", chosen_tokens=nc, rejected_tokens=nr)[0]
    me = SimpleNamespace(beta=beta, accelerator=SimpleNamespace(device=torch.device("cpu")))
    ratio_term = orpo.ORPOTrainer.odds_ratio_loss(me, pc / nc, pr / nr)[0]   # β log σ(log odds), on average log-probs
    nll = -pc.sum() / nc.sum()                                              # its NLL: cross-entropy over the chosen tokens
    # (1e-6, not 1e-12: TRL's log1p(-exp(x)) cancels digits where P is near 1; ours is log(-expm1(x)))
    torch.testing.assert_close(ours.mean(), nll - ratio_term.mean(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("lam", [0.0, 5.0, 50.0])
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpop_is_smaugs_equation(beta, lam):
    pc, pr, rc, rr, _, _ = make_pairs(8, 30.0, seed=13)
    ours = dpo_loss(pc, pr, rc, rr, beta, "dpop", dpop_lambda=lam)[0]
    # Pal et al. 2024, Eq. 3: -log σ(β (log πθ(yw)/πref(yw) - log πθ(yl)/πref(yl) - λ max(0, log πref(yw)/πθ(yw))))
    expected = -F.logsigmoid(beta * ((pc - rc) - (pr - rr) - lam * torch.clamp(rc - pc, min=0)))
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-12)
    if lam == 0: torch.testing.assert_close(ours, dpo_loss(pc, pr, rc, rr, beta, "sigmoid")[0])
    # the penalty's gradient: a pair whose chosen log-ratio is below 0 pulls its chosen log-prob up harder than DPO does
    pc_ = pc.clone().requires_grad_()
    dpo_loss(pc_, pr, rc, rr, beta, "dpop", dpop_lambda=lam)[0].sum().backward()
    pc2 = pc.clone().requires_grad_()
    dpo_loss(pc2, pr, rc, rr, beta, "sigmoid")[0].sum().backward()
    below = pc < rc
    assert below.any() and ((pc_.grad[below] <= pc2.grad[below]) if lam else (pc_.grad[below] == pc2.grad[below])).all()


def test_batch_level_losses_are_evaluated_in_training_sized_batches():
    from dpo_nb.train import DPOConfig, _pair_metrics
    pc, pr, rc, rr, nc, nr = make_pairs(10, 30.0, seed=21)
    for lt in ("aot", ["sigmoid", "sft"], "sigmoid"):
        cfg = DPOConfig(loss_type=lt, batch_size=4)
        got = _pair_metrics(pc, pr, rc, rr, cfg, nc, nr)[0]
        want = torch.cat([dpo_loss(pc[s:s + 4], pr[s:s + 4], rc[s:s + 4], rr[s:s + 4], 0.1, lt, chosen_tokens=nc[s:s + 4],
                                   rejected_tokens=nr[s:s + 4])[0] for s in range(0, 10, 4)])
        torch.testing.assert_close(torch.as_tensor(got), want)
    assert _pair_metrics(pc, pr, rc, rr, DPOConfig(loss_type="aot", batch_size=4), nc, nr)[5].tolist() == [0] * 4 + [1] * 4 + [2] * 2


def wpo_tokens(B, seed):
    """Per-token log-probs and log Σ_v π(v)² of B pairs, as TRL's model output lays them out ([chosen rows; rejected rows],
    position t predicting token t + 1) and as dpo_nb's response_logps does (position t holding token t's value)."""
    g = torch.Generator().manual_seed(seed)
    n = torch.randint(1, 9, (2 * B,), generator=g)
    L = PROMPT_LEN + int(n.max())
    tok, sq = torch.zeros(2 * B, L, dtype=torch.float64), torch.zeros(2 * B, L, dtype=torch.float64)
    for i, k in enumerate(n.tolist()):
        tok[i, PROMPT_LEN:PROMPT_LEN + k] = -torch.rand(k, generator=g, dtype=torch.float64) * 4 - 0.05
        sq[i, PROMPT_LEN:PROMPT_LEN + k] = -torch.rand(k, generator=g, dtype=torch.float64) * 2 - 0.1
    return tok, sq, n


def trl_wpo_mean(types, beta, tok, sq, n, rc, rr):
    "TRL DPOTrainer's batch loss with use_weighting=True, from per-token log-probs and log Σ p²."
    B = len(rc)
    pc, pr = tok.sum(-1).chunk(2)
    self, _, inputs, _ = _trl_stand_ins(types[0], beta, 0.0, pc, pr, n[:B], n[B:])
    self.loss_types, self.loss_weights, self.use_weighting = types, [1.0] * len(types), True
    L = inputs["input_ids"].shape[1]
    shifted = lambda x: x[:, 1:L].clone()  # position t holds token t + 1's value
    model = lambda **kw: SimpleNamespace(log_probs=shifted(tok).requires_grad_(True), log_sum_sq_probs=shifted(sq),
                                         entropy=torch.zeros(2 * B, L - 1), mean_logits=torch.zeros(2 * B, L - 1),
                                         is_top1=torch.zeros(2 * B, L - 1, dtype=torch.bool))
    inputs.update(ref_chosen_logps=rc, ref_rejected_logps=rr)
    return DPOTrainer._compute_loss(self, model, inputs, return_outputs=False).detach()


@pytest.mark.parametrize("types", [["sigmoid"], ["ipo"], ["hinge", "bco_pair"], ["sigmoid_norm", "discopop", "apo_zero"]])
def test_wpo_weights_equal_trls(types):
    from dpo_nb.loss import wpo_pair_weights
    B = 6
    tok, sq, n = wpo_tokens(B, seed=len(types))
    _, _, rc, rr, _, _ = make_pairs(B, 10.0, seed=5)
    out = dict(chosen_token_logps=tok[:B], rejected_token_logps=tok[B:], chosen_token_log_sum_sq=sq[:B],
               rejected_token_log_sum_sq=sq[B:], chosen_tokens=n[:B], rejected_tokens=n[B:])
    w = wpo_pair_weights(out)
    assert w.min() < 0.5 and w.max() > 0.5  # (weights far from 1: the check can tell weighting from none)
    pc, pr = tok.sum(-1).chunk(2)
    for beta in (0.1, 0.5):
        ours = dpo_loss(pc, pr, rc, rr, beta, types, chosen_tokens=n[:B], rejected_tokens=n[B:], pair_weights=w)[0]
        torch.testing.assert_close(ours.mean(), trl_wpo_mean(types, beta, tok, sq, n, rc, rr), rtol=1e-6, atol=1e-6)
        for i in range(B):  # per pair
            rows = torch.tensor([i, B + i])
            torch.testing.assert_close(ours[i], trl_wpo_mean(types, beta, tok[rows], sq[rows], n[rows], rc[i:i + 1], rr[i:i + 1]),
                                       rtol=1e-6, atol=1e-6)
        plain = dpo_loss(pc, pr, rc, rr, beta, types, chosen_tokens=n[:B], rejected_tokens=n[B:])[0]
        torch.testing.assert_close(ours, plain * w)


def test_wpo_weight_is_the_papers_equation():
    from dpo_nb.loss import wpo_weight
    tok, sq, n = wpo_tokens(4, seed=9)
    got = wpo_weight(tok, sq, n)
    for i in range(len(n)):  # exp of the per-token mean of log π(y_t) − log Σ_v π(v)², over the response alone
        resp = slice(PROMPT_LEN, PROMPT_LEN + int(n[i]))
        want = math.exp(sum(float(a - b) for a, b in zip(tok[i, resp], sq[i, resp])) / int(n[i]))
        assert abs(float(got[i]) - want) < 1e-6 * max(1.0, want)


def test_wpo_with_the_nll_term_takes_the_batch_mean_weight_and_aot_refuses_it():
    pc, pr, rc, rr, nc, nr = make_pairs(5, 20.0, seed=4)
    w = torch.tensor([1.0, 0.2, 0.5, 0.05, 0.9], dtype=torch.float64)
    for lt in (["sigmoid", "sft"], "orpo"):
        got = dpo_loss(pc, pr, rc, rr, 0.1, lt, chosen_tokens=nc, rejected_tokens=nr, pair_weights=w)[0]
        nll = -pc.sum() / nc.sum()  # the batch's token-mean NLL; each pair's share of it is -pc_i * B / Σ n
        rest = (dpo_loss(pc, pr, rc, rr, 0.1, "sigmoid")[0] if lt != "orpo" else
                dpo_loss(pc, pr, rc, rr, 0.1, "orpo", chosen_tokens=nc, rejected_tokens=nr)[0] + pc * len(pc) / nc.sum())
        torch.testing.assert_close(got.mean(), (rest * w).mean() + nll * w.mean())
    for lt in ("aot", "aot_unpaired", ["sigmoid", "aot"]):
        with pytest.raises(ValueError, match="sort the pairs"):
            dpo_loss(pc, pr, rc, rr, 0.1, lt, pair_weights=w)
    for bad, msg in ((w[:3], "shape mismatch"), (torch.tensor([1.0, float("nan"), 1, 1, 1]), r"pair_weights\[1\]")):
        with pytest.raises(ValueError, match=msg):
            dpo_loss(pc, pr, rc, rr, 0.1, pair_weights=bad)


# --- each pair's pulls, for every loss type, against finite differences of the loss itself ----------------------------

def _finite_difference_pulls(pc, pr, rc, rr, beta, h=1e-6, **kw):
    "−(1/β)∂L/∂log π(y_w) and (1/β)∂L/∂log π(y_l) per pair by central differences of the summed losses (no autograd)"
    from dpo_nb.loss import dpo_loss
    def total(a, b): return float(dpo_loss(a, b, rc, rr, beta=beta, **kw)[0].sum())
    wc, wr = np.zeros(len(pc)), np.zeros(len(pc))
    for i in range(len(pc)):
        e = torch.zeros_like(pc); e[i] = h
        wc[i] = -(total(pc + e, pr) - total(pc - e, pr)) / (2 * h) / beta
        wr[i] = (total(pc, pr + e) - total(pc, pr - e)) / (2 * h) / beta
    return wc, wr


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_every_loss_types_pulls_equal_finite_differences(loss_type):
    from dpo_nb.loss import gradient_weights
    g = torch.Generator().manual_seed(3)
    B = 12
    rc, rr = -20 - 5 * torch.rand(B, generator=g, dtype=torch.float64), -20 - 5 * torch.rand(B, generator=g, dtype=torch.float64)
    pc, pr = rc + torch.randn(B, generator=g, dtype=torch.float64), rr + torch.randn(B, generator=g, dtype=torch.float64)
    kw = dict(chosen_tokens=torch.randint(3, 30, (B,), generator=g).double(), rejected_tokens=torch.randint(3, 30, (B,), generator=g).double())
    if loss_type in ("sigmoid", "robust", "exo_pair", "aot", "aot_unpaired"): kw["label_smoothing"] = 0.1
    wc, wr = gradient_weights(pc, pr, rc, rr, beta=0.3, loss_type=loss_type, **kw)
    fc, fr = _finite_difference_pulls(pc, pr, rc, rr, 0.3, loss_type=loss_type, **kw)
    assert np.abs(fc).max() + np.abs(fr).max() > 1e-3, "the loss should pull on these pairs"
    np.testing.assert_allclose(wc.numpy(), fc, atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(wr.numpy(), fr, atol=2e-5, rtol=1e-4)
