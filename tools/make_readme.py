"""Write README.md from nbs/index.ipynb with nbconvert's markdown exporter.

`nbdev-readme` needs Quarto, which cannot be installed on every machine we build on, so the README is
rendered here instead. `python tools/make_readme.py --check` exits 1 when README.md is out of date (CI runs it).
"""
import argparse, re, sys
from pathlib import Path

import nbformat
from nbconvert import MarkdownExporter

ROOT = Path(__file__).resolve().parents[1]
NB, README = ROOT / "nbs" / "index.ipynb", ROOT / "README.md"


def render() -> str:
    "The README text: the index notebook's cells as markdown, nbdev directives and hidden cells left out."
    nb = nbformat.read(NB, as_version=4)
    keep = []
    for cell in nb.cells:
        src = cell.source
        if cell.cell_type == "code" and re.search(r"^#\|\s*(hide|export|default_exp)", src, re.M): continue
        if cell.cell_type == "code":  # drop directive lines such as `#| eval: false`
            cell.source = "\n".join(l for l in src.splitlines() if not l.startswith("#|")).strip()
        keep.append(cell)
    nb.cells = keep
    body, _ = MarkdownExporter(exclude_input_prompt=True, exclude_output_prompt=True).from_notebook_node(nb)
    body = re.sub(r"<style scoped>.*?</style>\n?", "", body, flags=re.S)  # pandas' notebook CSS means nothing on GitHub
    body = re.sub(r"\n{3,}", "\n\n", body).strip() + "\n"
    return body + "\n<!-- generated from nbs/index.ipynb by tools/make_readme.py: edit the notebook, not this file -->\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--check", action="store_true", help="exit 1 if README.md differs from the notebook")
    args = ap.parse_args()
    text = render()
    if args.check:
        if not README.exists() or README.read_text() != text:
            print("README.md is out of sync with nbs/index.ipynb: run `python tools/make_readme.py`", file=sys.stderr)
            sys.exit(1)
        print("README.md is in sync with nbs/index.ipynb")
        return
    README.write_text(text)
    print(f"wrote {README.relative_to(ROOT)}")


if __name__ == "__main__": main()
