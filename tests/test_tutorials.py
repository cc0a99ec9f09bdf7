"""Run every tutorial in tutorials/ top to bottom, one pytest case each, so CI counts them.

Cells whose first line is a test flag (`#| gpu`, `#| slow`, `#| hub`) are skipped (their outputs left empty), the way
nbdev skips them in nbs/; nbdev's own flags do not reach tutorials/, so this runner does it.
`python tests/test_tutorials.py tutorials/01_dpo_from_scratch.ipynb` executes a tutorial in place (for committing it).
"""
import copy, os, sys, time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = sorted(p for p in (ROOT / "tutorials").glob("[0-9]*.ipynb"))
SKIP_FLAGS = ("gpu", "slow", "hub")
MAX_BYTES = 1_000_000  # each tutorial file stays under 1 MB


def flagged(cell) -> bool:
    "Is this a code cell whose first line is a skipped test flag (`#| gpu`)?"
    if cell.cell_type != "code" or not cell.source.strip(): return False
    first = cell.source.lstrip().splitlines()[0].replace(" ", "")
    return first.startswith("#|") and first[2:] in SKIP_FLAGS


def execute(path: Path, timeout: int = 1200) -> nbformat.NotebookNode:
    "Execute the tutorial at `path` in its folder, skipping flagged cells; returns the executed notebook."
    nb = nbformat.read(path, as_version=4)
    run = copy.deepcopy(nb)
    skipped = [i for i, c in enumerate(run.cells) if flagged(c)]
    for i in skipped: run.cells[i].source = ""  # run nothing; keep the cell in place
    env = dict(os.environ, IN_TEST="1", TOKENIZERS_PARALLELISM="false")
    os.environ.update(IN_TEST="1", TOKENIZERS_PARALLELISM="false")
    NotebookClient(run, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    for i in skipped:
        run.cells[i].source = nb.cells[i].source
        run.cells[i].outputs, run.cells[i].execution_count = [], None
    return run


def clean(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    "Drop widget state and execution-time metadata, so the committed file is small and stable."
    nb.metadata.pop("widgets", None)
    for c in nb.cells:
        c.metadata.pop("execution", None)
    return nb


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial(path):
    assert path.stat().st_size < MAX_BYTES, f"{path.name} is {path.stat().st_size:,} bytes: keep it under 1 MB"
    t0 = time.perf_counter()
    nb = execute(path)  # raises CellExecutionError, naming the cell, if any cell fails
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"{path.name}: {errors[0].get('ename')}: {errors[0].get('evalue')}"
    print(f"{path.name}: ran in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":  # execute tutorials in place, outputs kept
    os.environ.setdefault("DPO_NB_STATIC_IMAGES", "1")  # saved for readers: a static image beside each figure (06_display)
    for p in map(Path, sys.argv[1:] or TUTORIALS):
        t0 = time.perf_counter()
        nb = clean(execute(p.resolve()))
        nbformat.write(nb, p)
        print(f"{p}: executed in {time.perf_counter() - t0:.0f} s, {p.stat().st_size:,} bytes")
