"""TRL configs that port: `DPOConfig.from_trl` maps every TRL 1.16 DPOConfig field with a counterpart (TRL's defaults
included), refuses the settings it cannot honour by name, warns about bookkeeping, and the CLI reads a TRL YAML."""
import dataclasses, json, warnings

import pytest

from conftest import save_tiny_model
from dpo_nb.cli import main
from dpo_nb.history import History
from dpo_nb.train import ConfigError, DPOConfig

trl = pytest.importorskip("trl")


def trl_cfg(tmp_path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return trl.DPOConfig(output_dir=str(tmp_path / "trl"), use_cpu=True, **kw)


def test_trls_defaults_map_over(tmp_path):
    ours = DPOConfig.from_trl(trl_cfg(tmp_path))  # an instance: its post-init forms (bf16 filled in on, ...)
    t = trl_cfg(tmp_path)
    assert (ours.beta, ours.loss_type, ours.learning_rate, ours.seed, ours.epochs) == (t.beta, "sigmoid", t.learning_rate, t.seed, t.num_train_epochs)
    assert (ours.max_length, ours.max_prompt_length, ours.gradient_checkpointing, ours.max_steps) == (t.max_length, None, True, None)
    assert (ours.batch_size, ours.grad_accum_steps, ours.max_grad_norm, ours.weight_decay) == (t.per_device_train_batch_size, 1, 1.0, 0.0)
    assert (ours.f_alpha_divergence_coef, ours.discopop_tau, ours.lr_schedule, ours.warmup_ratio) == (t.f_alpha_divergence_coef, t.discopop_tau, "linear", 0.0)
    assert ours.mixed_precision == "bf16" and ours.device == "cpu" and ours.eval_every == 0
    # a dict of fields as written (a YAML file): TRL's bf16 default (None: on where it can be) is our auto
    assert DPOConfig.from_trl({}).mixed_precision is None and DPOConfig.from_trl({"bf16": False}).mixed_precision == "no"


SET = dict(beta=0.3, loss_type=["robust", "hinge"], loss_weights=[0.8, 1.0], label_smoothing=0.1,
           f_divergence_type="js_divergence", f_alpha_divergence_coef=0.7, discopop_tau=0.1, learning_rate=5e-7,
           weight_decay=0.01, seed=7, disable_dropout=False, router_aux_loss_coef=0.01, per_device_train_batch_size=4,
           gradient_accumulation_steps=2, max_steps=100, num_train_epochs=2.0, max_length=256, max_grad_norm=0.5,
           precompute_ref_log_probs=False, precompute_ref_batch_size=32, disable_tqdm=True, lr_scheduler_type="cosine",
           warmup_steps=10, eval_strategy="steps", eval_steps=25, bf16=False, fp16=False, sync_ref_model=True,
           ref_model_mixup_alpha=0.3, ref_model_sync_steps=16, ld_alpha=0.4, use_weighting=True)
EXPECTED = dict(beta=0.3, loss_type=["robust", "hinge"], loss_weights=[0.8, 1.0], label_smoothing=0.1,
                f_divergence_type="js_divergence", f_alpha_divergence_coef=0.7, discopop_tau=0.1, learning_rate=5e-7,
                weight_decay=0.01, seed=7, disable_dropout=False, router_aux_loss_coef=0.01, batch_size=4, grad_accum_steps=2,
                max_steps=100, epochs=2.0, max_length=256, max_grad_norm=0.5, precompute_ref=False, ref_batch_size=32,
                progress=False, lr_schedule="cosine", warmup_ratio=0.1, eval_every=25, mixed_precision="no", sync_ref_model=True,
                ref_model_mixup_alpha=0.3, ref_model_sync_steps=16, ld_alpha=0.4, use_weighting=True)


@pytest.mark.parametrize("as_instance", [False, True])
def test_every_counterpart_maps_over(tmp_path, as_instance):
    src = trl_cfg(tmp_path, **SET) if as_instance else SET
    ours = DPOConfig.from_trl(src)
    assert {k: getattr(ours, k) for k in EXPECTED} == EXPECTED


@pytest.mark.parametrize("field,value", [("use_liger_kernel", True), ("padding_free", True),
                                         ("optim", "sgd"), ("adam_beta2", 0.95), ("neftune_noise_alpha", 5.0),
                                         ("pad_to_multiple_of", 8), ("train_sampling_strategy", "sequential")])
def test_settings_without_a_counterpart_are_refused_by_name(field, value):
    with pytest.raises(ConfigError, match=rf"no DPOConfig counterpart .*\['{field}'\]"):
        DPOConfig.from_trl({field: value})


def test_refusals_of_what_cannot_be_mapped():
    for d, msg in (({"truncation_mode": "keep_end"}, "truncation_mode='keep_end'"), ({"lr_scheduler_type": "polynomial"}, "polynomial"),
                   ({"warmup_steps": 10}, "needs max_steps"), ({"eval_strategy": "epoch"}, "eval_strategy='epoch'"),
                   ({"not_a_field": 1}, r"not TRL DPOConfig settings: \['not_a_field'\]"), ({"loss_type": ["dpo"]}, "unknown loss_type 'dpo'")):
        with pytest.raises(ConfigError, match=msg):
            DPOConfig.from_trl(d)


def test_what_would_train_another_objective_is_refused():
    # TRL's sigmoid ignores label_smoothing; ours applies it (cDPO): porting it would change the objective
    with pytest.raises(ConfigError, match="TRL's sigmoid ignores it"):
        DPOConfig.from_trl(dict(loss_type=["sigmoid", "aot"], label_smoothing=0.1))
    assert DPOConfig.from_trl(dict(loss_type=["aot"], label_smoothing=0.1)).label_smoothing == 0.1
    # LD-DPO's weights would reach the NLL term, which TRL computes on the plain log-probs
    with pytest.raises(ConfigError, match="ld_alpha=0.5 with loss_type"):
        DPOConfig.from_trl(dict(loss_type=["sigmoid", "sft"], ld_alpha=0.5))


def test_bookkeeping_is_named_in_a_warning_not_dropped_silently():
    with pytest.warns(UserWarning, match=r"bookkeeping .*\['logging_steps', 'output_dir', 'report_to'\]"):
        c = DPOConfig.from_trl(dict(output_dir="runs/x", logging_steps=5, report_to="wandb", beta=0.2))
    assert c.beta == 0.2


WORDS = ["<pad>", "<bos>", "<eos>", "<unk>", "the", "film", "was", "plot", "is", "good", "bad", "very", "great", "awful"]


def test_the_cli_reads_a_trl_yaml(tmp_path, capsys):
    model, data, out = tmp_path / "model", tmp_path / "pairs.jsonl", tmp_path / "run"
    save_tiny_model(model, WORDS)
    rows = [dict(prompt=f"the {s} was", chosen=f" very {p}", rejected=f" {q}") for s in ("film", "plot") for p in ("good", "great")
            for q in ("bad", "awful")]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "trl.yaml").write_text("output_dir: runs/x\nbeta: 0.2\nloss_type: [sigmoid, sft]\nlearning_rate: 1.0e-3\n"
                                       "per_device_train_batch_size: 2\nmax_steps: 2\nbf16: false\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["train", "--model", str(model), "--data", str(data), "--out", str(out), "--trl-config", str(tmp_path / "trl.yaml"),
                     "--eval-fraction", "0", "--beta", "0.3", "--progress", "false"]) == 0
    cfg = History.load(out / "history").meta["config"]
    assert (cfg["loss_type"], cfg["learning_rate"], cfg["batch_size"], cfg["max_steps"], cfg["beta"]) == (["sigmoid", "sft"], 1e-3, 2, 2, 0.3)
    (tmp_path / "bad.yaml").write_text("beta: 0.2\nuse_liger_kernel: true\n")
    assert main(["train", "--model", str(model), "--data", str(data), "--trl-config", str(tmp_path / "bad.yaml")]) == 2
    assert "['use_liger_kernel']" in capsys.readouterr().err
