"The trainer: resume, interrupt, reference modes, faults, checkpoints."
import copy, math

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from dpo_nb.train import Callback, DPOConfig, DPOTrainer, NonFiniteError

WORDS = ["<pad>", "<bos>", "<eos>", "<unk>", "the", "film", "was", "plot", "acting", "is", "good", "bad", "very", "quite",
         "great", "awful", "and", "not", "fine", "dull"]


@pytest.fixture(scope="module")
def tok():
    wl = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    wl.pre_tokenizer = pre_tokenizers.Whitespace()
    wl.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=wl, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")


def tiny(seed=0, vocab=len(WORDS), dropout=0.0):
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
                                        attention_dropout=dropout))


def make_pairs(n, seed=0):
    rng = np.random.default_rng(seed)
    subj, pos, neg = ["the film", "the plot", "the acting"], ["good", "great", "fine"], ["bad", "awful", "dull"]
    out = []
    for _ in range(n):
        s, v = rng.choice(subj), rng.choice(["was", "is"])
        extra = " ".join(rng.choice(["very", "quite", "and"], size=rng.integers(0, 4)))
        out.append(dict(prompt=f"{s} {v}", chosen=f" {extra} {rng.choice(pos)}", rejected=f" {rng.choice(neg)} {extra} and not {rng.choice(pos)}"))
    return out


TRAIN, EVAL = make_pairs(40, 0), make_pairs(8, 1)


def cfg(**kw):
    base = dict(beta=0.3, learning_rate=3e-3, batch_size=4, max_steps=10, warmup_ratio=0.2, probe_every=3, progress=False,
                eval_every=4)
    base.update(kw)
    return DPOConfig(**base)


def losses(t): return t.history.steps["loss"].to_numpy()


@pytest.mark.parametrize("kw", [dict(), dict(grad_accum_steps=2, lr_schedule="cosine")])
def test_resume_reproduces_straight_run(tok, tmp_path, kw):
    straight = DPOTrainer(tiny(), tok, TRAIN, cfg(**kw), eval_data=EVAL)
    straight.fit()
    a = DPOTrainer(tiny(), tok, TRAIN, cfg(**kw), eval_data=EVAL)
    a.fit(4)
    a.save(tmp_path / "ck")
    b = DPOTrainer.load(tmp_path / "ck")
    assert b.step == 4
    b.fit(3); b.fit()  # fit can be called again and again
    np.testing.assert_array_equal(losses(b), losses(straight))
    ev_b, ev_s = b.history.evals.set_index("step")["loss"], straight.history.evals.set_index("step")["loss"]
    assert list(ev_b.index) == [0, 4, 7, 8, 10]  # each fit call also evaluates where it stops
    np.testing.assert_array_equal(ev_b.loc[ev_s.index].to_numpy(), ev_s.to_numpy())
    for (k, v), w in zip(b.model.state_dict().items(), straight.model.state_dict().values()):
        assert torch.equal(v, w), k


def test_resume_with_frozen_reference_model(tok, tmp_path):
    c = cfg(kl_every=5, kl_prompts=4, kl_max_new_tokens=6)
    straight = DPOTrainer(tiny(), tok, TRAIN, c, ref_model=tiny(), eval_data=EVAL)
    straight.fit()
    a = DPOTrainer(tiny(), tok, TRAIN, c, ref_model=tiny(), eval_data=EVAL)
    a.fit(5); a.save(tmp_path / "ck")
    b = DPOTrainer.load(tmp_path / "ck")
    assert b.ref_mode == "model"
    b.fit()
    np.testing.assert_array_equal(losses(b), losses(straight))
    np.testing.assert_allclose(b.history.kl["value"].to_numpy(), straight.history.kl["value"].to_numpy(), rtol=1e-6)


class Boom(Exception): pass


def test_keyboard_interrupt_inside_a_step_leaves_a_consistent_trainer(tok, tmp_path):
    straight = DPOTrainer(tiny(), tok, TRAIN, cfg(), eval_data=EVAL)
    straight.fit()
    t = DPOTrainer(tiny(), tok, TRAIN, cfg(), eval_data=EVAL)
    def hook(mod, args, kwargs):  # the first policy forward of step 6 raises, as a Ctrl-C would, mid-step
        if mod.training and t.step == 5: raise KeyboardInterrupt
    h = t.model.get_decoder().register_forward_pre_hook(hook, with_kwargs=True)
    t.fit()  # returns: the interrupt ends fit at a step boundary
    h.remove()
    assert t.step == 5
    st = t.history.steps
    assert st["step"].tolist() == [1, 2, 3, 4, 5] and not st["loss"].isna().any()
    assert set(t.history.pairs.query("split == 'train'")["step"]) == {1, 2, 3, 4, 5}
    assert all(p.grad is None for p in t.model.parameters())
    t.save(tmp_path / "ck")
    r = DPOTrainer.load(tmp_path / "ck")
    r.fit()
    np.testing.assert_array_equal(losses(r), losses(straight))


def test_reference_modes_agree_for_ten_steps(tok):
    c = cfg(max_steps=10, eval_every=0)
    pre = DPOTrainer(tiny(), tok, TRAIN, c)
    frozen = DPOTrainer(tiny(), tok, TRAIN, c, ref_model=tiny())
    assert (pre.ref_mode, frozen.ref_mode) == ("precomputed", "model")
    pre.fit(); frozen.fit()
    a, b = losses(pre), losses(frozen)
    assert a[0] == pytest.approx(math.log(2), abs=1e-6)
    assert len(set(np.round(a, 4))) > 5, "losses must move, or agreeing means nothing"
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_lora_reference_is_the_base_with_adapters_off(tok):
    peft = pytest.importorskip("peft")
    lc = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM", lora_dropout=0.0)
    c = cfg(max_steps=6, eval_every=0, learning_rate=1e-2)
    ad = DPOTrainer(peft.get_peft_model(tiny(), peft.LoraConfig(**lc)), tok, TRAIN, c)
    assert ad.ref_mode == "adapters"
    ad.fit()
    torch.manual_seed(0)
    with_ref = DPOTrainer(peft.get_peft_model(tiny(), peft.LoraConfig(**lc)), tok, TRAIN, c, ref_model=tiny())
    with_ref.fit()
    np.testing.assert_allclose(losses(ad), losses(with_ref), atol=1e-5)
    assert losses(ad)[-1] < losses(ad)[0]
    base_weights = [p for n, p in ad.model.named_parameters() if "lora" not in n]
    assert not any(p.requires_grad for p in base_weights)


def test_nonfinite_loss_names_the_pairs_and_leaves_weights(tok):
    t = DPOTrainer(tiny(), tok, TRAIN, cfg())
    with torch.no_grad(): t.model.lm_head.weight[5, 0] = float("nan")
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    with pytest.raises(NonFiniteError, match=r"pairs \[") as e:
        t.fit(1)
    ids = [int(x) for x in str(e.value).split("pairs [")[1].split("]")[0].split(",")]
    assert len(ids) == 4 and all(0 <= i < len(TRAIN) for i in ids)
    assert t.step == 0
    for k, v in t.model.state_dict().items(): assert torch.equal(v.nan_to_num(), before[k].nan_to_num()), k


def test_nonfinite_steps_can_be_skipped_and_counted(tok):
    t = DPOTrainer(tiny(), tok, TRAIN, cfg(on_nonfinite="skip", max_steps=3))
    with torch.no_grad(): t.model.lm_head.weight[5, 0] = float("nan")
    with pytest.warns(UserWarning, match="skipped a non-finite step"):
        t.fit()
    assert t.step == 3 and t.nonfinite_skipped == 3
    assert t.history.meta["nonfinite_skipped"] == 3


def test_tokenizer_larger_than_embeddings_is_refused(tok):
    with pytest.raises(ValueError, match="embedding table has 10 rows"):
        DPOTrainer(tiny(vocab=10), tok, TRAIN, cfg())


def test_a_kill_mid_save_never_leaves_a_half_checkpoint(tok, tmp_path, monkeypatch):
    t = DPOTrainer(tiny(), tok, TRAIN, cfg())
    t.fit(2); t.save(tmp_path / "ck")
    t.fit(2)
    monkeypatch.setattr(type(t.history), "save", lambda self, path: (_ for _ in ()).throw(Boom("killed")))
    with pytest.raises(Boom): t.save(tmp_path / "ck")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"], "no temp folder left behind"
    r = DPOTrainer.load(tmp_path / "ck")
    assert r.step == 2  # the old complete checkpoint, untouched
    with pytest.raises(FileNotFoundError, match="not a dpo_nb checkpoint"):
        DPOTrainer.load(tmp_path / "nothing")


def test_callbacks_see_every_step_and_evaluation(tok):
    seen = {"steps": [], "evals": 0, "end": 0}

    class Rec(Callback):
        def on_step_end(self, trainer, metrics): seen["steps"].append((trainer.step, metrics["loss"]))
        def on_evaluate(self, trainer, metrics): seen["evals"] += 1
        def on_fit_end(self, trainer): seen["end"] += 1
    t = DPOTrainer(tiny(), tok, TRAIN, cfg(max_steps=8, eval_every=4), eval_data=EVAL, callbacks=[Rec()])
    t.fit()
    assert [s for s, _ in seen["steps"]] == list(range(1, 9))
    assert seen["evals"] == 3 and seen["end"] == 1  # steps 0, 4, 8


def test_history_records_every_training_pair_and_probes(tok):
    t = DPOTrainer(tiny(), tok, TRAIN, cfg(max_steps=5, probe_every=2, probe_pairs=2), eval_data=EVAL)
    h = t.fit()
    tr = h.pairs.query("split == 'train'")
    assert len(tr) == 5 * 4
    np.testing.assert_allclose(tr["margin"], tr["chosen_reward"] - tr["rejected_reward"], atol=1e-6)
    np.testing.assert_allclose(tr["grad_weight"], 1 / (1 + np.exp(tr["margin"])), atol=1e-6)
    for s, g in tr.groupby("step"):
        row = h.steps.set_index("step").loc[s]
        assert row["rewards/margins"] == pytest.approx(g["margin"].mean(), abs=1e-6)
        assert row["rewards/accuracies"] == pytest.approx((g["margin"] > 0).mean())
    tk = h.tokens
    assert set(tk["step"]) == {0, 2, 4, 5} and set(tk["pair_id"]) == set(EVAL_IDS(t)[:2])
    first = tk[tk["step"] == 0].dropna(subset=["logp"])
    np.testing.assert_allclose(first["logp"], first["ref_logp"], atol=1e-6)  # at step 0 the policy is the reference


def EVAL_IDS(t): return list(t.eval_data["pair_id"])
