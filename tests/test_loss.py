"""Tests for dpo_nb.loss: parity with TRL's own DPO loss code, the gradient weight, and bad input.

TRL 1.16 has no standalone DPO loss function: the loss is computed inside
`DPOTrainer._compute_loss(self, model, inputs, return_outputs)`. These tests call that real method
unbound, with a stand-in `self` carrying the attributes it reads and a stand-in model whose output
carries per-token log-probs arranged so that TRL's per-sequence sums are exactly the log-probs we chose.
"""
import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from dpo_nb.loss import BATCH_LEVEL, LENGTH_NORMALISED, LOSS_TYPES, dpo_loss, gradient_weight

trl_dpo = pytest.importorskip("trl.trainer.dpo_trainer", reason="TRL (dev dependency) is needed for the parity tests")
DPOTrainer = trl_dpo.DPOTrainer

PROMPT_LEN = 3  # prompt tokens in each stand-in sequence


# ---------------------------------------------------------------------------------------------------------------
# TRL harness
# ---------------------------------------------------------------------------------------------------------------
def _trl_stand_ins(loss_type, beta, label_smoothing, pc, pr, nc, nr):
    """A stand-in `self`, model and inputs (minus reference log-probs) for `DPOTrainer._compute_loss`.

    The batch is [chosen rows; rejected rows], as TRL's collator builds it. Row i has PROMPT_LEN prompt tokens and
    n_i completion tokens (completion_mask = 1 on those). TRL sums `outputs.log_probs` over each row, so the row's
    whole log-prob sits at the position that predicts the first completion token and every other position is 0.
    """
    B = pc.shape[0]
    counts = torch.cat([nc, nr]).long()
    L = PROMPT_LEN + int(counts.max())
    completion_mask = torch.zeros(2 * B, L, dtype=torch.long)
    attention_mask = torch.zeros(2 * B, L, dtype=torch.long)
    for i, n in enumerate(counts.tolist()):
        completion_mask[i, PROMPT_LEN:PROMPT_LEN + n] = 1
        attention_mask[i, :PROMPT_LEN + n] = 1
    input_ids = torch.full((2 * B, L), 5, dtype=torch.long)

    log_probs = torch.zeros(2 * B, L - 1, dtype=pc.dtype)  # position t: log p(token t+1 | tokens <= t)
    log_probs[:, PROMPT_LEN - 1] = torch.cat([pc, pr]).detach()
    log_probs.requires_grad_(True)

    def model(**kwargs):
        assert kwargs["labels"].shape == input_ids.shape
        return SimpleNamespace(
            log_probs=log_probs,
            entropy=torch.zeros(2 * B, L - 1, dtype=pc.dtype),
            mean_logits=torch.zeros(2 * B, L - 1, dtype=pc.dtype),
            is_top1=torch.zeros(2 * B, L - 1, dtype=torch.bool),
        )

    identity = lambda t: t  # single process: gather is the identity
    self = SimpleNamespace(
        model=SimpleNamespace(training=True),
        accelerator=SimpleNamespace(device=torch.device("cpu"), gather=identity, gather_for_metrics=identity),
        aux_loss_enabled=False,
        precompute_ref_logps=True,
        ld_alpha=None,
        f_divergence_type="reverse_kl",
        loss_types=[loss_type],
        loss_weights=[1.0],
        beta=beta,
        label_smoothing=label_smoothing,
        use_weighting=False,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
        args=SimpleNamespace(discopop_tau=0.05, gradient_checkpointing_kwargs=None),
    )
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask, completion_mask=completion_mask)
    return self, model, inputs, log_probs


def trl_loss(loss_type, beta, label_smoothing, pc, pr, rc, rr, nc, nr, grad=False):
    """TRL's batch-mean loss on these log-probs; with grad=True also d loss / d (policy chosen, rejected)."""
    self, model, inputs, log_probs = _trl_stand_ins(loss_type, beta, label_smoothing, pc, pr, nc, nr)
    inputs.update(ref_chosen_logps=rc, ref_rejected_logps=rr)
    loss = DPOTrainer._compute_loss(self, model, inputs, return_outputs=False)
    if not grad:
        return loss.detach(), self._metrics["train"]
    loss.backward()
    g = log_probs.grad[:, PROMPT_LEN - 1]
    B = pc.shape[0]
    return loss.detach(), self._metrics["train"], g[:B], g[B:]


def make_pairs(B, scale, dtype=torch.float64, seed=0):
    """Random log-probs (negative, magnitude ~ scale) and token counts 1..40 for B pairs."""
    g = torch.Generator().manual_seed(seed)
    lp = lambda: -torch.rand(B, generator=g, dtype=dtype) * scale - 0.01
    nc = torch.randint(1, 41, (B,), generator=g)
    nr = torch.randint(1, 41, (B,), generator=g)
    return lp(), lp(), lp(), lp(), nc, nr


# label_smoothing values tried per loss type (0 for the types that do not use it)
EPS = {"robust": [0.0, 0.1, 0.4], "exo_pair": [1e-3, 0.1, 0.5], "aot": [0.0, 0.1, 0.4], "aot_unpaired": [0.0, 0.1, 0.4]}
BETAS = [0.01, 0.1, 0.5, 2.0]
SCALES = [1.0, 30.0, 1000.0]  # typical per-token sums up to very long responses
NOT_IN_TRL_DPO = ("simpo", "orpo", "dpop")  # checked against TRL's CPO/ORPO trainers or their papers (test_loss_objectives.py)
ALL_CASES = [(lt, eps) for lt in LOSS_TYPES for eps in EPS.get(lt, [0.0])]
CASES = [(lt, eps) for lt, eps in ALL_CASES if lt not in NOT_IN_TRL_DPO]

# Every other type in LOSS_TYPES is also a TRL 1.16 DPOTrainer loss type, so all are checked against TRL below: per
# pair, and for the types whose pair losses depend on the batch (BATCH_LEVEL: sorting, token means) per batch. The one
# behaviour TRL 1.16 lacks is conservative DPO (sigmoid with label_smoothing > 0): TRL's sigmoid ignores
# label_smoothing, so that case is checked against its equation instead (test_cdpo_matches_equation, ...).


# ---------------------------------------------------------------------------------------------------------------
# Parity with TRL
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("loss_type,eps", CASES)
def test_matches_trl(loss_type, eps, beta, scale):
    pc, pr, rc, rr, nc, nr = make_pairs(6, scale, seed=hash((loss_type, beta, scale)) % 2**31)
    losses, r_w, r_l = dpo_loss(pc, pr, rc, rr, beta, loss_type, eps, chosen_tokens=nc, rejected_tokens=nr)
    assert losses.shape == (6,) and torch.isfinite(losses).all()

    # batch mean against TRL's batch mean
    ref_mean, metrics = trl_loss(loss_type, beta, eps, pc, pr, rc, rr, nc, nr)
    if loss_type == "discopop" and not torch.isfinite(ref_mean):
        # TRL computes e^(-m)·σ(m/τ) as inf·0 = NaN for a very wrong pair; ours is exp(-m + log σ(m/τ)): compare per pair
        for i in range(6):
            one = lambda t: t[i:i + 1]
            ref_i, _ = trl_loss(loss_type, beta, eps, one(pc), one(pr), one(rc), one(rr), one(nc), one(nr))
            if torch.isfinite(ref_i): torch.testing.assert_close(losses[i], ref_i[()] if ref_i.dim() else ref_i, rtol=0, atol=1e-6)
            else: assert torch.isfinite(losses[i]) and beta * ((pc[i] - rc[i]) - (pr[i] - rr[i])) < -700  # only where e^(-m) overflows
        return
    torch.testing.assert_close(losses.mean(), ref_mean, rtol=0, atol=1e-6)

    # per pair: TRL called with one pair at a time (a batch-level loss has no per-pair value to compare)
    for i in range(6 if loss_type not in BATCH_LEVEL else 0):
        one = lambda t: t[i:i + 1]
        ref_i, _ = trl_loss(loss_type, beta, eps, one(pc), one(pr), one(rc), one(rr), one(nc), one(nr))
        torch.testing.assert_close(losses[i], ref_i, rtol=0, atol=1e-6, msg=f"{loss_type} pair {i}")

    # rewards and the metrics TRL derives from them
    assert metrics["rewards/chosen"][-1] == pytest.approx(r_w.mean().item(), rel=1e-9, abs=1e-9)
    assert metrics["rewards/rejected"][-1] == pytest.approx(r_l.mean().item(), rel=1e-9, abs=1e-9)
    assert metrics["rewards/margins"][-1] == pytest.approx((r_w - r_l).mean().item(), rel=1e-9, abs=1e-9)
    assert metrics["rewards/accuracies"][-1] == pytest.approx((r_w > r_l).double().mean().item())


@pytest.mark.parametrize("loss_type,eps", CASES)
def test_gradient_matches_trl(loss_type, eps):
    """Same gradient as TRL w.r.t. the policy log-probs (what actually trains the model)."""
    pc, pr, rc, rr, nc, nr = make_pairs(5, 30.0, seed=7)
    pc_, pr_ = pc.clone().requires_grad_(), pr.clone().requires_grad_()
    losses, _, _ = dpo_loss(pc_, pr_, rc, rr, 0.1, loss_type, eps, chosen_tokens=nc, rejected_tokens=nr)
    losses.mean().backward()
    _, _, g_w, g_l = trl_loss(loss_type, 0.1, eps, pc, pr, rc, rr, nc, nr, grad=True)
    # rtol 1e-6 rather than ~1e-12 only for exo_pair: TRL builds its epsilon as a float32 tensor, so its log(eps)
    # and log(1 - eps) carry float32 rounding even on float64 inputs
    zero_if_unused = lambda g, like: torch.zeros_like(like) if g is None else g  # (sft does not look at the rejected side)
    torch.testing.assert_close(zero_if_unused(pc_.grad, pc), g_w, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(zero_if_unused(pr_.grad, pr), g_l, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("loss_type,eps", CASES)
def test_matches_trl_float32(loss_type, eps):
    """Also in float32, the dtype log-probs usually arrive in: same dtype out, same numbers as TRL."""
    pc, pr, rc, rr, nc, nr = make_pairs(8, 30.0, dtype=torch.float32, seed=3)
    losses, r_w, _ = dpo_loss(pc, pr, rc, rr, 0.1, loss_type, eps, chosen_tokens=nc, rejected_tokens=nr)
    assert losses.dtype == torch.float32 and r_w.dtype == torch.float32
    ref_mean, _ = trl_loss(loss_type, 0.1, eps, pc, pr, rc, rr, nc, nr)
    torch.testing.assert_close(losses.mean(), ref_mean, rtol=1e-6, atol=1e-6)


def test_trl_sigmoid_ignores_label_smoothing():
    """Documents why cDPO is tested against its equation: TRL 1.16's sigmoid loss does not use label_smoothing."""
    pc, pr, rc, rr, nc, nr = make_pairs(4, 30.0, seed=1)
    trl_smoothed, _ = trl_loss("sigmoid", 0.1, 0.2, pc, pr, rc, rr, nc, nr)
    plain = dpo_loss(pc, pr, rc, rr, 0.1, "sigmoid", 0.0)[0].mean()
    torch.testing.assert_close(trl_smoothed, plain, rtol=0, atol=1e-12)


@pytest.mark.parametrize("eps", [0.05, 0.2, 0.45])
@pytest.mark.parametrize("beta", BETAS)
def test_cdpo_matches_equation(beta, eps):
    pc, pr, rc, rr, _, _ = make_pairs(6, 100.0, seed=2)
    losses, _, _ = dpo_loss(pc, pr, rc, rr, beta, "sigmoid", eps)
    m = beta * ((pc - rc) - (pr - rr))
    expected = -(1 - eps) * torch.log(torch.sigmoid(m)) - eps * torch.log(torch.sigmoid(-m))
    ok = torch.isfinite(expected)  # the naive form underflows for large |m|; compare where it does not
    torch.testing.assert_close(losses[ok], expected[ok], rtol=0, atol=1e-6)
    # and the minimum over the margin sits at log((1 - eps) / eps)
    ms = torch.linspace(-10, 10, 40001, dtype=torch.float64)  # spacing 5e-4
    z = torch.zeros_like(ms)
    best = ms[dpo_loss(ms / beta, z, z, z, beta, "sigmoid", eps)[0].argmin()]
    assert best.item() == pytest.approx(math.log((1 - eps) / eps), abs=1e-3)


@pytest.mark.parametrize("loss_type", LENGTH_NORMALISED)
def test_length_normalised_use_token_averages(loss_type):
    """ipo and sigmoid_norm divide each log-ratio by its own response's token count."""
    pc, pr, rc, rr, nc, nr = make_pairs(5, 30.0, seed=4)
    beta = 0.1
    losses, _, _ = dpo_loss(pc, pr, rc, rr, beta, loss_type, chosen_tokens=nc, rejected_tokens=nr)
    d = (pc - rc) / nc - (pr - rr) / nr
    expected = (d - 1 / (2 * beta)) ** 2 if loss_type == "ipo" else -F.logsigmoid(beta * d)
    torch.testing.assert_close(losses, expected, rtol=0, atol=1e-12)
    # counts as a list, a long tensor or a float tensor give the same losses
    for counts in ((nc.tolist(), nr.tolist()), (nc.double(), nr.double())):
        again, _, _ = dpo_loss(pc, pr, rc, rr, beta, loss_type, chosen_tokens=counts[0], rejected_tokens=counts[1])
        torch.testing.assert_close(again, losses, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------------------
# Rewards and the gradient weight
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("loss_type,eps", ALL_CASES)
def test_rewards_are_detached_beta_log_ratios(loss_type, eps):
    pc, pr, rc, rr, nc, nr = make_pairs(4, 30.0, seed=5)
    pc, pr = pc.requires_grad_(), pr.requires_grad_()
    losses, r_w, r_l = dpo_loss(pc, pr, rc, rr, 0.3, loss_type, eps, chosen_tokens=nc, rejected_tokens=nr)
    assert losses.requires_grad and not r_w.requires_grad and not r_l.requires_grad
    torch.testing.assert_close(r_w, 0.3 * (pc - rc).detach())
    torch.testing.assert_close(r_l, 0.3 * (pr - rr).detach())


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("beta", BETAS)
def test_sigmoid_gradient_is_beta_times_weight(beta, scale):
    """d loss / d log pi(y_w) = -beta * w and d loss / d log pi(y_l) = +beta * w, w = sigmoid(r_l - r_w)."""
    pc, pr, rc, rr, _, _ = make_pairs(8, scale, seed=6)
    pc, pr = pc.requires_grad_(), pr.requires_grad_()
    losses, r_w, r_l = dpo_loss(pc, pr, rc, rr, beta, "sigmoid")
    losses.sum().backward()
    w = gradient_weight(r_w, r_l)
    torch.testing.assert_close(pc.grad, -beta * w, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(pr.grad, beta * w, rtol=1e-12, atol=1e-15)


def test_gradient_weight_values():
    r_w = torch.tensor([0.0, 2.0, -3.0, 10.0])
    r_l = torch.tensor([0.0, -1.0, 1.0, -10.0])
    w = gradient_weight(r_w, r_l)
    torch.testing.assert_close(w, torch.sigmoid(r_l - r_w))
    assert w[0] == 0.5 and w[2] > 0.98 and 0 < w[3] < 1e-8  # right by a wide margin: almost no pull
    assert w[1] < 0.5 < w[2]  # a correctly ranked pair pulls less than a wrongly ranked one
    with pytest.raises(ValueError, match="shape mismatch"):
        gradient_weight(torch.zeros(3), torch.zeros(4))


# ---------------------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------------------
def _four(B=3):
    return [torch.full((B,), -10.0) for _ in range(4)]


def test_unknown_loss_type_lists_valid_names():
    with pytest.raises(ValueError) as e:
        dpo_loss(*_four(), loss_type="dpo")
    msg = str(e.value)
    assert "'dpo'" in msg
    for name in LOSS_TYPES:
        assert name in msg


@pytest.mark.parametrize("which", range(4))
def test_shape_mismatch_names_the_argument(which):
    args = _four()
    args[which] = torch.full((4,), -10.0)
    name = ["policy_chosen_logps", "policy_rejected_logps", "ref_chosen_logps", "ref_rejected_logps"][which]
    with pytest.raises(ValueError, match=rf"shape mismatch: .*{name} \[4\]"):
        dpo_loss(*args)


def test_not_one_value_per_pair():
    args = _four()
    args[0] = torch.full((3, 5), -1.0)  # per-token log-probs instead of per-pair sums
    with pytest.raises(ValueError, match=r"policy_chosen_logps must have shape \[B\]"):
        dpo_loss(*args)


def test_not_a_float_tensor():
    args = _four()
    args[1] = [-10.0, -10.0, -10.0]
    with pytest.raises(TypeError, match="policy_rejected_logps must be a torch.Tensor"):
        dpo_loss(*args)
    args[1] = torch.tensor([-10, -10, -10])
    with pytest.raises(TypeError, match="policy_rejected_logps must be a floating-point"):
        dpo_loss(*args)


@pytest.mark.parametrize("loss_type", LENGTH_NORMALISED)
def test_missing_token_counts(loss_type):
    n = torch.tensor([3, 4, 5])
    with pytest.raises(ValueError, match=f"loss_type='{loss_type}'.*pass chosen_tokens"):
        dpo_loss(*_four(), loss_type=loss_type, rejected_tokens=n)
    with pytest.raises(ValueError, match=f"loss_type='{loss_type}'.*pass rejected_tokens"):
        dpo_loss(*_four(), loss_type=loss_type, chosen_tokens=n)
    with pytest.raises(ValueError, match="pass chosen_tokens"):
        dpo_loss(*_four(), loss_type=loss_type)


@pytest.mark.parametrize("loss_type", LENGTH_NORMALISED)
def test_bad_token_counts(loss_type):
    n = torch.tensor([3, 4, 5])
    with pytest.raises(ValueError, match=r"shape mismatch: rejected_tokens \[2\]"):
        dpo_loss(*_four(), loss_type=loss_type, chosen_tokens=n, rejected_tokens=n[:2])
    with pytest.raises(ValueError, match=r"chosen_tokens\[1\] is 0.0.*positive"):
        dpo_loss(*_four(), loss_type=loss_type, chosen_tokens=torch.tensor([3, 0, 5]), rejected_tokens=n)


@pytest.mark.parametrize("loss_type,eps,expect", [
    ("robust", 0.5, r"outside \[0.0, 0.5\)"),     # TRL only warns; the loss divides by zero
    ("robust", 0.7, r"outside \[0.0, 0.5\)"),
    ("robust", -0.1, r"outside \[0.0, 0.5\)"),
    ("exo_pair", 0.0, r"outside \(0.0, 1.0\)"),   # log(0): TRL raises too
    ("exo_pair", 1.0, r"outside \(0.0, 1.0\)"),   # log1p(-1)
    ("sigmoid", 0.5, r"outside \[0.0, 0.5\)"),
    ("hinge", 0.1, "not used by loss_type='hinge'"),
    ("ipo", 0.1, "not used by loss_type='ipo'"),
])
def test_label_smoothing_ranges(loss_type, eps, expect):
    n = torch.tensor([3, 4, 5])
    with pytest.raises(ValueError, match=expect):
        dpo_loss(*_four(), loss_type=loss_type, label_smoothing=eps, chosen_tokens=n, rejected_tokens=n)


def test_edges_of_label_smoothing_ranges_are_finite():
    for lt, eps in [("robust", 0.0), ("robust", 0.499), ("exo_pair", 1e-12), ("exo_pair", 0.999), ("sigmoid", 0.499)]:
        losses, _, _ = dpo_loss(torch.tensor([-5.0, -500.0]), torch.tensor([-9.0, -1.0]), torch.tensor([-6.0, -6.0]),
                                torch.tensor([-6.0, -6.0]), 0.1, lt, eps)
        assert torch.isfinite(losses).all(), (lt, eps)


@pytest.mark.parametrize("beta", [0, -0.1, float("nan"), float("inf")])
def test_bad_beta(beta):
    with pytest.raises(ValueError, match="beta must be a positive finite number"):
        dpo_loss(*_four(), beta=beta)


def test_non_finite_logps_name_the_pair():
    args = _four()
    args[2] = torch.tensor([-10.0, -10.0, -math.inf])
    with pytest.raises(ValueError, match=r"ref_chosen_logps\[2\] is -inf"):
        dpo_loss(*args)
    args[2] = torch.tensor([float("nan"), -10.0, -10.0])
    with pytest.raises(ValueError, match=r"ref_chosen_logps\[0\] is nan"):
        dpo_loss(*args)
