"""Real tokenizer families as offline fixtures: `FAMILIES` and `load_family(name)`.

The folders in tests/fixtures/tokenizers/<family>/ are built by tools/make_tokenizer_fixtures.py from the vocabularies
the npm packages llama-tokenizer-js, mistral-tokenizer-js and llama3-tokenizer-js carry (see the README there for what
is real and what is a stand-in). They are kept small in git: a big tokenizer.json is stored as tokenizer.json.gz, and
a stand-in family stores tokenizer.shared.json (everything but the vocab and merges, which come from the family named
in its "vocab_from"). `load_family` assembles a plain Hugging Face folder once, in a cache folder named after the
fixture's content hash, and returns `AutoTokenizer.from_pretrained(folder)` -- nothing is downloaded.

    from tokenizer_families import FAMILIES, load_family
    tok = load_family("llama3")
"""
from __future__ import annotations

import gzip, hashlib, json, os, shutil, tempfile
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "tokenizers"
FAMILIES = ("llama2", "mistral", "llama3", "qwen2.5", "smollm2", "gemma")
REAL_VOCAB = ("llama2", "mistral", "llama3")  # the families whose expected_ids.json come from the JS encoders
CONFIG_FILES = ("tokenizer_config.json", "special_tokens_map.json")


def _cache_root() -> Path:
    base = os.environ.get("DPO_NB_TOKENIZER_CACHE")
    if base: return Path(base)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dpo_nb" / "tokenizers"


def _sources(name: str) -> list[Path]:
    "The fixture files folder `name` is assembled from (its own, and its vocab donor's tokenizer file)."
    folder = FIXTURES / name
    files = [folder / f for f in CONFIG_FILES if (folder / f).exists()]
    shared = folder / "tokenizer.shared.json"
    if shared.exists():
        donor = json.loads(shared.read_text(encoding="utf-8"))["vocab_from"]
        return files + [shared] + [p for p in _sources(donor) if p.name.startswith("tokenizer.json")]
    return files + [p for p in (folder / "tokenizer.json", folder / "tokenizer.json.gz") if p.exists()]


def _tokenizer_json(name: str) -> dict:
    folder = FIXTURES / name
    shared = folder / "tokenizer.shared.json"
    if shared.exists():
        spec = json.loads(shared.read_text(encoding="utf-8"))
        donor = _tokenizer_json(spec["vocab_from"])
        tok = spec["tokenizer"]
        tok["model"]["vocab"], tok["model"]["merges"] = donor["model"]["vocab"], donor["model"]["merges"]
        return tok
    if (folder / "tokenizer.json").exists():
        return json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    return json.loads(gzip.decompress((folder / "tokenizer.json.gz").read_bytes()).decode("utf-8"))


def family_folder(name: str) -> Path:
    "The assembled Hugging Face folder of family `name` (built on first use; rebuilt when the fixture changes)."
    if name not in FAMILIES:
        raise ValueError(f"unknown tokenizer family {name!r}; the families are {', '.join(FAMILIES)}")
    h = hashlib.sha256()
    for p in _sources(name):
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    out = _cache_root() / f"{name}-{h.hexdigest()[:8]}"
    if (out / "tokenizer.json").exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=out.parent))
    try:
        for f in CONFIG_FILES:
            if (FIXTURES / name / f).exists(): shutil.copyfile(FIXTURES / name / f, tmp / f)
        (tmp / "tokenizer.json").write_text(json.dumps(_tokenizer_json(name), ensure_ascii=False), encoding="utf-8")
        try:
            tmp.rename(out)  # atomic: a concurrent loader sees a complete folder or none
        except OSError:
            if not (out / "tokenizer.json").exists(): raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def load_family(name: str):
    "`AutoTokenizer.from_pretrained` of family `name`'s fixture folder (offline)."
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(family_folder(name)))


def expected_ids(name: str) -> dict:
    "expected_ids.json of a real-vocab family: {'source', 'encode_call', 'hf_equivalent', 'cases': [{'text', 'ids'}]}."
    return json.loads((FIXTURES / name / "expected_ids.json").read_text(encoding="utf-8"))
