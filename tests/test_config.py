"""Settings are checked when a DPOConfig is made (or read with from_dict): the wrong type or a value out of range is a
ConfigError naming the field, never a silent run of the wrong thing."""
import math

import pytest

from conftest import word_tokenizer
from dpo_nb.train import ConfigError, DPOConfig, DPOTrainer

BAD = [  # (settings, what the message must say)
    (dict(beta=0), "DPOConfig.beta=0: must be a positive finite number"),
    (dict(beta=-0.1), "DPOConfig.beta=-0.1"),
    (dict(beta=math.nan), "DPOConfig.beta=nan"),
    (dict(beta=math.inf), "DPOConfig.beta=inf"),
    (dict(beta="0.1"), "DPOConfig.beta='0.1': expected float, got str"),
    (dict(beta=True), "DPOConfig.beta=True: expected float, got bool"),
    (dict(loss_type="robust", label_smoothing=0.6), "DPOConfig.label_smoothing: label_smoothing=0.6 is outside"),
    (dict(label_smoothing=-0.1), "DPOConfig.label_smoothing"),
    (dict(loss_type="ipo", label_smoothing=0.1), "is not used by loss_type='ipo'"),
    (dict(max_steps=0), "DPOConfig.max_steps=0: must be None (the epochs decide) or >= 1"),
    (dict(max_steps=-3), "DPOConfig.max_steps=-3"),
    (dict(max_steps=2.5), "DPOConfig.max_steps=2.5: expected int | None, got float"),
    (dict(max_steps="10"), "DPOConfig.max_steps='10': expected int | None, got str"),
    (dict(max_grad_norm=-1.0), "a negative one would reverse every update"),
    (dict(max_grad_norm=0.0), "DPOConfig.max_grad_norm=0.0"),
    (dict(max_grad_norm=math.nan), "DPOConfig.max_grad_norm=nan"),
    (dict(learning_rate=0.0), "DPOConfig.learning_rate=0.0"),
    (dict(learning_rate=-1e-6), "DPOConfig.learning_rate=-1e-06"),
    (dict(warmup_ratio=1.0), "DPOConfig.warmup_ratio=1.0: must be in [0, 1)"),
    (dict(warmup_ratio=-0.1), "DPOConfig.warmup_ratio=-0.1"),
    (dict(epochs=0.0), "DPOConfig.epochs=0.0"),
    (dict(batch_size=0), "DPOConfig.batch_size=0: must be >= 1"),
    (dict(batch_size=4.0), "DPOConfig.batch_size=4.0: expected int, got float"),
    (dict(grad_accum_steps=0), "DPOConfig.grad_accum_steps=0"),
    (dict(max_length=256, max_prompt_length=256), "leaves no room for a response"),
    (dict(max_length=0), "DPOConfig.max_length=0"),
    (dict(eval_every=-1), "DPOConfig.eval_every=-1: must be >= 0"),
    (dict(kl_prompts=0), "DPOConfig.kl_prompts=0"),
    (dict(router_aux_loss_coef=-0.01), "DPOConfig.router_aux_loss_coef=-0.01"),
    (dict(loss_type="sigmoidd"), "DPOConfig.loss_type: unknown loss_type 'sigmoidd'; valid loss types: sigmoid"),
    (dict(mixed_precision="fp64"), "DPOConfig.mixed_precision='fp64': choose one of"),
    (dict(master_weights="bf16"), "DPOConfig.master_weights='bf16'"),
    (dict(lr_schedule="step"), "DPOConfig.lr_schedule='step'"),
    (dict(progress="yes"), "DPOConfig.progress='yes': expected bool, got str"),
]


@pytest.mark.parametrize("settings,message", BAD, ids=[next(iter(s)) + "=" + repr(v) for s, _ in BAD for v in [s[next(iter(s))]]])
def test_bad_settings_are_refused_naming_the_field(settings, message):
    with pytest.raises(ConfigError) as made: DPOConfig(**settings)
    assert message in str(made.value)
    with pytest.raises(ConfigError) as read: DPOConfig.from_dict(settings)  # the same from a JSON or YAML file
    assert str(read.value) == str(made.value)


def test_good_settings_pass():
    c = DPOConfig(beta=1, learning_rate=1, max_steps=None, max_grad_norm=None, max_length=None, max_prompt_length=None)
    assert c.beta == 1 and DPOConfig.from_dict({"beta": 0.25, "max_steps": 3}).max_steps == 3


def test_kl_every_without_a_reference_is_refused():
    import torch, transformers as tf
    words = ["<pad>", "<bos>", "<eos>", "<unk>", "good", "bad", "it", "was"]
    tok = word_tokenizer(words)
    model = lambda: (torch.manual_seed(0), tf.LlamaForCausalLM(tf.LlamaConfig(vocab_size=len(words), hidden_size=16, intermediate_size=32,
                                                                              num_hidden_layers=1, num_attention_heads=2)))[1]
    pairs = [dict(prompt="it was", chosen=" good", rejected=" bad")] * 4
    cfg = lambda **kw: DPOConfig(batch_size=2, max_steps=1, progress=False, ref_cache=False, **kw)
    with pytest.raises(ConfigError, match="DPOConfig.kl_every=2: KL needs a reference model"):
        DPOTrainer(model(), tok, pairs, cfg(kl_every=2))
    DPOTrainer(model(), tok, pairs, cfg(kl_every=2), ref_model=model())  # with a reference at hand it is fine
    DPOTrainer(model(), tok, pairs, cfg(kl_every=0))  # and without one, no periodic KL asked for
