"Length-grouped batches and the on-disk cache of reference log-probs."
import numpy as np
import pytest
import torch

from dpo_nb.train import DPOConfig, DPOTrainer, batch_rows, epoch_batches, model_fingerprint, data_fingerprint
from test_train import EVAL, TRAIN, cfg, losses, tiny, tok  # noqa: F401  (tok is a fixture)


def padding(batches, lengths):
    return sum(max(lengths[r] for r in b) * len(b) - sum(lengths[r] for r in b) for b in batches)


def test_plain_batches_are_slices_of_the_epoch_permutation():
    for e in range(3):
        bs = epoch_batches(103, 8, 5, e)
        assert len(bs) == 12 and all(len(b) == 8 for b in bs)
        assert sum(bs, []) == torch.randperm(103, generator=torch.Generator().manual_seed(5 * 100_003 + e)).tolist()[:96]
        assert [batch_rows(103, 8, 5, 12 * e + i) for i in range(12)] == [(b, e) for b in bs]


def test_length_grouped_batches_cover_the_epoch_and_cut_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(10, 500, size=1000).tolist()
    plain, grouped = epoch_batches(1000, 16, 0, 0), epoch_batches(1000, 16, 0, 0, lengths)
    assert len(grouped) == 62 and all(len(b) == 16 for b in grouped)
    assert len(set(sum(grouped, []))) == 992 and set(sum(grouped, [])) == set(sum(plain, []))  # the same rows, once each
    assert padding(grouped, lengths) < 0.1 * padding(plain, lengths)
    assert grouped == epoch_batches(1000, 16, 0, 0, lengths)  # a pure function of seed and epoch
    assert grouped != epoch_batches(1000, 16, 0, 1, lengths)
    firsts = [max(lengths[r] for r in b) for b in grouped[:10]]
    assert firsts != sorted(firsts, reverse=True)  # batch order shuffled, not longest first


def test_grouped_training_resumes_exactly(tok, tmp_path):
    straight = DPOTrainer(tiny(), tok, TRAIN, cfg(group_by_length=True), eval_data=EVAL)
    straight.fit()
    a = DPOTrainer(tiny(), tok, TRAIN, cfg(group_by_length=True), eval_data=EVAL)
    a.fit(4); a.save(tmp_path / "ck")
    b = DPOTrainer.load(tmp_path / "ck")
    b.fit()
    np.testing.assert_array_equal(losses(b), losses(straight))
    plain = DPOTrainer(tiny(), tok, TRAIN, cfg(), eval_data=EVAL)
    plain.fit()
    assert not np.array_equal(losses(plain)[1:], losses(straight)[1:])  # other batches: the flag did something


def counting(monkeypatch):
    calls = []
    real = DPOTrainer._score_rows
    monkeypatch.setattr(DPOTrainer, "_score_rows", lambda self, *a, **k: calls.append(k.get("desc")) or real(self, *a, **k))
    return calls


def test_second_run_reads_the_reference_from_the_cache(tok, tmp_path, monkeypatch):
    c = cfg(cache_dir=str(tmp_path), probe_pairs=0)
    calls = counting(monkeypatch)
    a = DPOTrainer(tiny(), tok, TRAIN, c, eval_data=EVAL)
    assert [x[0] for x in a.ref_cache_log.values()] == ["written", "written"] and len(calls) == 2
    files = sorted((tmp_path / "ref_logps").glob("*.npy"))
    assert len(files) == 2
    calls.clear()
    b = DPOTrainer(tiny(), tok, TRAIN, c, eval_data=EVAL)
    assert calls == [] and {k: v[0] for k, v in b.ref_cache_log.items()} == {"train": "read", "eval": "read"}
    for split in ("train", "eval"): np.testing.assert_array_equal(a.ref_logps[split], b.ref_logps[split])
    assert b.history.meta["ref_cache"] == {"train": "read", "eval": "read"}
    b.fit()  # and training from cached numbers is training from computed ones
    a.fit()
    np.testing.assert_array_equal(losses(a), losses(b))


def test_any_change_to_weights_or_tokens_misses(tok, tmp_path, monkeypatch):
    c = cfg(cache_dir=str(tmp_path), probe_pairs=0)
    DPOTrainer(tiny(), tok, TRAIN, c, eval_data=EVAL)
    m = tiny()
    with torch.no_grad(): m.model.norm.weight[3] += 1e-4
    assert model_fingerprint(m) != model_fingerprint(tiny())
    t = DPOTrainer(m, tok, TRAIN, c, eval_data=EVAL)
    assert t.ref_cache_log["train"][0] == "written"
    edited = [dict(p) for p in TRAIN]
    edited[7]["chosen"] += " good"
    t = DPOTrainer(tiny(), tok, edited, c, eval_data=EVAL)
    assert t.ref_cache_log["train"][0] == "written" and t.ref_cache_log["eval"][0] == "read"  # eval data unchanged
    assert data_fingerprint(t.train_data) != data_fingerprint(DPOTrainer(tiny(), tok, TRAIN, c).train_data)
    assert len(list((tmp_path / "ref_logps").glob("*.npy"))) == 5  # 2 + 2 for the moved weight + 1 for the edited train data


def test_a_broken_cache_file_is_recomputed_with_a_warning(tok, tmp_path):
    c = cfg(cache_dir=str(tmp_path), probe_pairs=0)
    a = DPOTrainer(tiny(), tok, TRAIN, c)
    path = a.ref_cache_log["train"][1]
    open(path, "wb").write(b"not numpy")
    with pytest.warns(UserWarning, match="unreadable reference cache"):
        b = DPOTrainer(tiny(), tok, TRAIN, c)
    np.testing.assert_array_equal(a.ref_logps["train"], b.ref_logps["train"])
    np.save(path, np.zeros((3, 2)))
    with pytest.warns(UserWarning, match="holds 3 rows"):
        DPOTrainer(tiny(), tok, TRAIN, c)


def test_cache_off_writes_nothing(tok, tmp_path, monkeypatch):
    calls = counting(monkeypatch)
    for _ in range(2): t = DPOTrainer(tiny(), tok, TRAIN, cfg(cache_dir=str(tmp_path), ref_cache=False, probe_pairs=0))
    assert len(calls) == 2 and not (tmp_path / "ref_logps").exists()
    assert t.ref_cache_log == {"train": ("computed", None)}
