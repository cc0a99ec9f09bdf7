"Run every notebook in nbs/ through nbdev's own test runner, one pytest case each, so CI prints pass/fail counts."
from pathlib import Path

import pytest
from nbdev.config import get_config
from nbdev import test as nbdev_test  # a module, so pytest does not collect nbdev's `test_nb` as a test

ROOT = Path(__file__).resolve().parents[1]
NBS = sorted(p for p in (ROOT / "nbs").glob("*.ipynb") if not p.name.startswith("_"))


@pytest.mark.parametrize("nb", NBS, ids=[p.stem for p in NBS])
def test_notebook(nb, monkeypatch):
    monkeypatch.chdir(ROOT / "nbs")
    cfg = get_config(path=ROOT)
    flags = cfg.tst_flags.split() if isinstance(cfg.tst_flags, str) else list(cfg.tst_flags)
    ok, secs = nbdev_test.test_nb(nb, skip_flags=flags, basepath=ROOT, do_print=False)
    assert ok, f"{nb.name} failed under nbdev's test runner (see the traceback above)"
