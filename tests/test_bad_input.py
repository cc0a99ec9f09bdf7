"""Bad input a careful user tries: damaged files, rows that are wrong without an error, chat templates that refuse a
row, and the record of every drop on each path from a file to the trainer, the History and the HTML report."""
import gzip, json, warnings

import pytest
import torch
from datasets import Dataset, load_from_disk
from tokenizers import normalizers
from transformers import LlamaConfig, LlamaForCausalLM

from conftest import save_tiny_model, word_tokenizer
from dpo_nb.cli import main
from dpo_nb.data import (DataWarning, PreferenceDataError, PreferenceTypeError, data_report, load_preferences, split_pairs,
                         tokenize_pairs, train_bpe_tokenizer)
from dpo_nb.history import History
from dpo_nb.report import report_from_dir
from dpo_nb.train import DPOConfig, DPOTrainer

WORDS = ["<pad>", "<bos>", "<eos>", "<unk>", "the", "film", "was", "plot", "is", "good", "bad", "very", "great", "awful",
         "<|user|>", "<|assistant|>", "<|system|>"]
CHAT = ("{% for m in messages %}{% if m['role'] not in ['user', 'assistant'] %}"
        "{{ raise_exception('unknown role ' + m['role']) }}{% endif %}<|{{ m['role'] }}|> {{ m['content'] }} <eos> {% endfor %}"
        "{% if add_generation_prompt %}<|assistant|> {% endif %}")
u = lambda t: {"role": "user", "content": t}
a = lambda t: {"role": "assistant", "content": t}


def rows(n=12):
    subj, verb, pos, neg = ("film", "plot"), ("was", "is"), ("good", "great"), ("bad", "awful")
    out = [dict(prompt=f"the {s} {v}", chosen=f" very {p}", rejected=f" {q}") for s in subj for v in verb for p in pos for q in neg]
    return out[:n]


@pytest.fixture(scope="module")
def tok():
    t = word_tokenizer(WORDS)
    t.chat_template = CHAT
    return t


def tiny_model():
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=len(WORDS), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64))


def quiet(fn, *args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kw)


# ---------------------------------------------------------------- files: each an error naming the file and the line

def write(p, data: bytes):
    p.write_bytes(data); return p


GOOD = b'{"prompt": "the film", "chosen": " good", "rejected": " bad"}\n'
FILE_CASES = {  # name: (file name, bytes, what the message must hold besides the file)
    "jsonl_bad_utf8": ("d.jsonl", GOOD + GOOD + b'{"prompt": "caf\xe9", "chosen": " a", "rejected": " b"}\n', "line 3: not valid UTF-8"),
    "jsonl_latin1_in_csv": ("d.csv", b"prompt,chosen,rejected\nthe film,good,bad\ncaf\xe9,a,b\n", "line 3: not valid UTF-8"),
    "gz_bad_utf8": ("d.jsonl.gz", gzip.compress(GOOD + b'{"prompt": "\xff"}\n'), "line 2: not valid UTF-8"),
    "csv_empty": ("d.csv", b"", "is empty: no header row"),
    "csv_blank_lines_only": ("d.csv", b"\n\n  \n", "is empty: no header row"),
    "csv_header_only": ("d.csv", b"prompt,chosen,rejected\n", "has a header (prompt, chosen, rejected) but no rows"),
    "csv_ragged_long": ("d.csv", b"prompt,chosen,rejected\na,b,c\nd,e,f,g\n", "line 3: 4 fields, but the header has 3"),
    "csv_ragged_short": ("d.csv", b"prompt,chosen,rejected\na,b,c\nd,e\n", "line 3: 2 fields, but the header has 3"),
    "csv_ragged_after_multiline_cell": ("d.csv", b'prompt,chosen,rejected\n"a\nb",c,d\ne,f\n', "line 4: 2 fields"),
    "tsv_ragged": ("d.tsv", b"prompt\tchosen\trejected\na\tb\n", "line 2: 2 fields, but the header has 3"),
    "csv_duplicate_header": ("d.csv", b"prompt,chosen,chosen\na,b,c\n", "the header names ['chosen'] more than once"),
    "jsonl_empty": ("d.jsonl", b"\n\n", "holds no rows"),
    "jsonl_bad_json": ("d.jsonl", GOOD + b'{"prompt": oops}\n', "line 2: not valid JSON"),
    "jsonl_not_an_object": ("d.jsonl", GOOD + b'["a", "b", "c"]\n', "line 2: expected a JSON object"),
    "json_truncated_array": ("d.json", b'[\n {"prompt": "a", "chosen": "b", "rejected": "c"},\n {"prompt": "d"', "line 3: not valid JSON"),
    "json_empty_list": ("d.json", b"[]", "holds no rows"),
    "json_scalar": ("d.json", b"42", "found a int"),
    "parquet_damaged": ("d.parquet", b"PAR1 this is not parquet", "not a readable Parquet file"),
    "gzip_damaged": ("d.jsonl.gz", b"\x1f\x8b\x08 truncated", "not a readable gzip file"),
}


@pytest.mark.parametrize("case", FILE_CASES)
def test_damaged_files_are_errors_naming_file_and_line(tmp_path, case):
    name, data, message = FILE_CASES[case]
    p = write(tmp_path / name, data)
    with pytest.raises(PreferenceDataError) as ei: load_preferences(p)
    assert str(p) in str(ei.value) and message in str(ei.value), str(ei.value)


def test_a_byte_order_mark_and_long_csv_cells_are_read(tmp_path):
    p = write(tmp_path / "bom.jsonl", b"\xef\xbb\xbf" + GOOD)
    assert load_preferences(p)["prompt"] == ["the film"]
    long = "x" * 300_000  # past the csv module's default field limit (128 KiB)
    p = write(tmp_path / "long.csv", f"prompt,chosen,rejected\nthe film,{long},bad\n".encode())
    assert load_preferences(p)["chosen"] == [long]
    p = write(tmp_path / "quoted.csv", b'prompt,chosen,rejected\n"a, with a comma","two\nlines",c\n')
    assert load_preferences(p)["chosen"] == ["two\nlines"]


def test_in_memory_sources_with_no_rows_are_errors():
    for src in ([], {"prompt": [], "chosen": [], "rejected": []}, Dataset.from_dict({"prompt": [], "chosen": [], "rejected": []})):
        with pytest.raises(PreferenceDataError, match="holds no rows"): load_preferences(src)


# ---------------------------------------------------------------- rows wrong without a word

INVISIBLE = {"zero-width space": "\u200b\u200b", "zero-width joiner": "\u200d", "BOM": "\ufeff", "word joiner": "\u2060",
             "no-break space": "\u00a0 ", "Hangul filler": "\u3164", "braille blank": "\u2800", "variation selector": "\ufe0f",
             "soft hyphen": "\u00ad", "mixed": " \u200b\n\u200c\t"}


@pytest.mark.parametrize("what", INVISIBLE)
def test_invisible_responses_and_prompts_are_dropped(what):
    s = INVISIBLE[what]
    ds = quiet(load_preferences, [dict(prompt="Q?", chosen=" A.", rejected=s), dict(prompt=s, chosen=" A.", rejected=" B."),
                                  dict(prompt="Q?", chosen=f" A{s}.", rejected=" B.")])  # inside visible text: kept
    assert ds["pair_id"] == [2]
    f = ds.report.to_frame().set_index("pair_id")
    assert (f.loc[0, "reason"], f.loc[0, "field"]) == ("empty_response", "rejected")
    assert f.loc[1, "reason"] == "empty_prompt"
    if s.strip(): assert f.loc[0, "detail"].startswith("only invisible characters: U+")


def test_invisible_conversational_content_is_dropped():
    ds = quiet(load_preferences, [dict(prompt=[u("Hi")], chosen=[a("\u200b")], rejected=[a("Go.")]),
                                  dict(prompt=[u("Hi")], chosen=[a("Hello.")], rejected=[a("Go.")])])
    assert ds["pair_id"] == [1] and ds.report.ids("empty_response") == [0]


def test_prompts_ending_with_an_assistant_turn_are_dropped_in_every_shape(tok):
    with pytest.warns(DataWarning, match="2 prompt_ends_with_assistant"):
        ds = load_preferences([
            dict(prompt=[u("the film"), a("very")], chosen=[a("good")], rejected=[a("bad")]),       # explicit prompt messages
            dict(chosen=[u("the plot"), a("very"), a("good")], rejected=[u("the plot"), a("very"), a("bad")]),  # whole conversations
            dict(prompt=[u("the film")], chosen=[a("good")], rejected=[a("bad")])])
    assert ds["pair_id"] == [2]
    f = ds.report.to_frame().set_index("pair_id")
    assert f.loc[0, "field"] == "prompt[1]" and "move it into the responses" in f.loc[0, "detail"]
    # a hand-made Dataset (no report: never checked) is checked by tokenize_pairs; no response holds two EOS
    raw = Dataset.from_dict(dict(pair_id=[0, 1], prompt=[[u("the film"), a("very")], [u("the plot")]],
                                 chosen=[[a("good")], [a("great")]], rejected=[[a("bad")], [a("awful")]]))
    t = quiet(tokenize_pairs, raw, tok)
    assert t["pair_id"] == [1] and t.report.ids("prompt_ends_with_assistant") == [0]
    eos = tok.eos_token_id
    assert all(r.count(eos) == 1 and r[0] != eos for side in ("chosen_ids", "rejected_ids") for r in t[side])


def test_pairs_that_tokenize_alike_are_dropped():
    # unknown words: both responses are <unk> <eos>
    t = word_tokenizer(WORDS)
    with pytest.warns(DataWarning, match="1 identical_tokens"):
        ds = tokenize_pairs([dict(prompt="the film", chosen=" zebra", rejected=" quokka"), *rows(2)], t)
    f = ds.report.to_frame().set_index("pair_id")
    assert ds["pair_id"] == [1, 2] and f.loc[0, "reason"] == "identical_tokens" and "tokenize alike" in f.loc[0, "detail"]
    # case folding: a lower-casing tokenizer sees 'Good' and 'good' as one
    low = train_bpe_tokenizer(["good bad Good Bad the film"], vocab_size=300)
    low.backend_tokenizer.normalizer = normalizers.Lowercase()
    ds = quiet(tokenize_pairs, [dict(prompt="the film", chosen=" Good", rejected=" good"), dict(prompt="the film", chosen=" good", rejected=" bad")], low)
    assert ds["pair_id"] == [1] and ds.report.ids("identical_tokens") == [0]
    # truncation: the responses differ only after what max_length keeps
    ds = quiet(tokenize_pairs, [dict(prompt="the film", chosen=" very very very good", rejected=" very very very bad"), *rows(1)],
               t, max_length=5, max_prompt_length=3)
    f = ds.report.to_frame().set_index("pair_id")
    assert ds.report.ids("identical_tokens") == [0] and "max_length=5" in f.loc[0, "detail"]


def test_duplicates_are_flagged_or_dropped_and_reversals_flagged():
    src = rows(3) + [rows(1)[0], dict(prompt=rows(1)[0]["prompt"], chosen=rows(1)[0]["rejected"], rejected=rows(1)[0]["chosen"])]
    with pytest.warns(DataWarning, match=r"kept but flagged: 1 duplicate \(pair_id 3\); 1 reversed_duplicate \(pair_id 4\)"):
        kept = load_preferences(src)
    assert len(kept) == 5 and kept.report.counts["flagged/duplicate"] == 1
    f = kept.report.to_frame().set_index("pair_id")
    assert f.loc[3, "detail"] == "same as pair_id 0" and f.loc[4, "detail"] == "pair_id 0 swaps them"
    dropped = quiet(load_preferences, src, duplicates="drop")
    assert dropped["pair_id"] == [0, 1, 2, 4] and dropped.report.ids("duplicate", "drop") == [3]
    conv = quiet(load_preferences, [dict(prompt=[u("Hi")], chosen=[a("A")], rejected=[a("B")])] * 3, duplicates="drop")
    assert conv["pair_id"] == [0] and conv.report.counts["dropped/duplicate"] == 2
    hh = ["\n\nHuman: Hi\n\nAssistant: Hello.", "\n\nHuman: Hi\n\nAssistant: Go."]
    imp = quiet(load_preferences, [dict(chosen=hh[0], rejected=hh[1])] * 2)
    assert imp.report.ids("duplicate", "flag") == [1]
    with pytest.raises(ValueError, match="duplicates must be"): load_preferences(src, duplicates="yes")


# ---------------------------------------------------------------- chat templates that refuse a row

def test_a_template_refusing_rows_drops_each_naming_the_pair_its_roles_and_the_message(tok):
    data = [dict(prompt=[u("the film")], chosen=[a("good")], rejected=[a("bad")]),
            dict(prompt=[{"role": "tool", "content": "the plot"}], chosen=[a("good")], rejected=[a("bad")]),
            dict(prompt=[{"role": "system", "content": "very"}, u("the film")], chosen=[a("great")], rejected=[a("awful")])]
    with pytest.warns(DataWarning, match=r"dropped 2 of 3 pairs: 2 template_error \(pair_id 1, 2\)"):
        t = tokenize_pairs(data, tok)
    assert t["pair_id"] == [0]
    f = t.report.to_frame().query("kind == 'drop'").set_index("pair_id")
    assert list(f.reason) == ["template_error"] * 2 and set(f.stage) == {"tokenize"}
    assert f.loc[1, "detail"].startswith("prompt [tool], chosen [assistant], rejected [assistant]: TemplateError") and "unknown role tool" in f.loc[1, "detail"]
    assert f.loc[2, "detail"].startswith("prompt [system, user]") and "unknown role system" in f.loc[2, "detail"]
    # the tool turn with no assistant turn before it is out of order: flagged when loaded, with the turn named
    assert t.report.to_frame().query("reason == 'not_alternating'")[["pair_id", "field", "stage"]].values.tolist() == [[1, "prompt[0]", "load"]]


def test_the_trainer_checks_the_data_before_any_model_work(tok):
    data = [dict(prompt=[{"role": "tool", "content": r["prompt"]}], chosen=[a(r["chosen"])], rejected=[a(r["rejected"])]) for r in rows(4)]
    small_ref = LlamaForCausalLM(LlamaConfig(vocab_size=4, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                             num_attention_heads=2, num_key_value_heads=2))  # would be refused by the model checks
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(PreferenceDataError, match="tokenize_pairs dropped all 4 pairs") as ei:
        DPOTrainer(model, tok, data, DPOConfig(batch_size=2, max_steps=1, device="cpu", progress=False, master_weights="fp32"),
                   ref_model=small_ref)
    assert ei.value.report.ids("template_error") == [0, 1, 2, 3]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# ---------------------------------------------------------------- the drop record on every path

def bad_rows():
    return rows(12) + [dict(prompt="the film", chosen=" good", rejected=" good"), dict(prompt="", chosen=" good", rejected=" bad"),
                       dict(prompt="the plot", chosen="\u200b", rejected=" bad")]


def cfg(**kw):
    return DPOConfig(**{**dict(batch_size=4, max_steps=2, device="cpu", progress=False, eval_every=0, probe_every=0), **kw})


def test_load_preferences_output_keeps_its_drops_in_the_trainer_and_history(tok):
    loaded = quiet(load_preferences, bad_rows())
    assert loaded.report.dropped_ids == [12, 13, 14]
    for data in (loaded, loaded.shuffle(seed=1), loaded.select(range(10)), quiet(tokenize_pairs, loaded, tok)):
        t = quiet(DPOTrainer, tiny_model(), tok, data, cfg())
        assert t.data_report.dropped_ids == [12, 13, 14], type(data)
        kept = t.history.meta["data"]["train"]
        assert sorted({i[3] for i in kept["issues"] if i[1] == "drop"}) == [12, 13, 14]
        assert {i[2] for i in kept["issues"]} >= {"identical", "empty_prompt", "empty_response"}


def test_the_report_survives_save_to_disk_and_a_resume(tok, tmp_path):
    loaded = quiet(load_preferences, bad_rows())
    loaded.save_to_disk(str(tmp_path / "pairs"))
    again = load_from_disk(str(tmp_path / "pairs"))
    assert not hasattr(again, "report") and data_report(again).dropped_ids == [12, 13, 14]
    t = quiet(DPOTrainer, tiny_model(), tok, again, cfg())
    t.fit(); t.save(tmp_path / "ckpt")
    r = quiet(DPOTrainer.load, tmp_path / "ckpt")
    assert r.data_report.dropped_ids == [12, 13, 14]
    assert r.history.meta["data"]["train"]["issues"] == t.history.meta["data"]["train"]["issues"]


def test_split_pairs_gives_each_part_its_report():
    loaded = quiet(load_preferences, bad_rows() + [rows(1)[0]])  # + a duplicate, flagged
    tr, ev = split_pairs(loaded, test_size=4, seed=0)
    assert (len(tr), len(ev)) == (9, 4) and sorted([*tr["pair_id"], *ev["pair_id"]]) == sorted(loaded["pair_id"])
    assert tr.report.dropped_ids == [12, 13, 14] and ev.report.dropped_ids == []
    dup_in = "tr" if 15 in tr["pair_id"] else "ev"
    assert {"tr": tr, "ev": ev}[dup_in].report.ids("duplicate") == [15]
    assert {"tr": ev, "ev": tr}[dup_in].report.ids("duplicate") == []
    assert "held out for evaluation" in ev.report.source and any("4 of the 13 pairs held out" in n for n in tr.report.notes)
    assert data_report(tr.select(range(2))).dropped_ids == [12, 13, 14]
    with pytest.raises(PreferenceDataError, match="carry no DataReport"): split_pairs(Dataset.from_dict({"a": [1, 2]}))


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    d = tmp_path_factory.mktemp("local")
    save_tiny_model(d / "model", WORDS)
    def jsonl(name, rs):
        with open(d / name, "w") as f:
            for r in rs: f.write(json.dumps(r, ensure_ascii=False) + "\n")
    jsonl("train.jsonl", rows(16) * 2 + bad_rows()[12:])  # 32 good rows (16 of them repeats) and 3 bad
    jsonl("eval.jsonl", rows(6) + [dict(prompt="the film", chosen=" \ufeff", rejected=" bad"), dict(prompt="the film", chosen=None, rejected=" bad")])
    return d


def report_text(out):
    return (out / "report.html").read_text()


def test_cli_train_with_an_eval_split_reports_train_and_eval(local, tmp_path):
    out = tmp_path / "run"
    assert quiet(main, ["train", "--model", str(local / "model"), "--data", str(local / "train.jsonl"), "--out", str(out),
                        "--max-steps", "2", "--batch-size", "4", "--eval-fraction", "0.2"]) == 0
    h = History.load(out / "history")
    tr, ev = h.meta["data"]["train"], h.meta["data"]["eval"]
    assert sorted({i[3] for i in tr["issues"] if i[1] == "drop"}) == [32, 33, 34] and ev["n_kept"] == 7
    assert "held out for evaluation" in ev["source"]
    html = report_text(out)
    for needed in ("Training pairs", "Evaluation pairs", "empty_prompt", "only invisible characters: U+200B x1", "identical",
                   "duplicate", "Pairs no batch holds"):
        assert needed in html, needed
    assert quiet(report_from_dir, out) and "only invisible characters: U+200B x1" in report_text(out)  # re-rendered from the History


def test_cli_train_with_an_eval_file_reports_its_drops(local, tmp_path):
    out = tmp_path / "run"
    assert quiet(main, ["train", "--model", str(local / "model"), "--data", str(local / "train.jsonl"), "--eval-data",
                        str(local / "eval.jsonl"), "--out", str(out), "--max-steps", "2", "--batch-size", "4"]) == 0
    ev = History.load(out / "history").meta["data"]["eval"]
    assert sorted((i[3], i[2]) for i in ev["issues"] if i[1] == "drop") == [(6, "empty_response"), (7, "non_text")]
    html = report_text(out)
    i = html.index("Evaluation pairs")
    assert "eval.jsonl" in html[i:] and "U+FEFF" in html[i:] and "non_text" in html[i:]


def test_cli_train_checks_the_template_before_loading_the_model(local, tmp_path, capsys):
    bad = tmp_path / "conv.jsonl"
    with open(bad, "w") as f:
        for r in rows(6): f.write(json.dumps(dict(prompt=[{"role": "tool", "content": r["prompt"]}], chosen=[a(r["chosen"])], rejected=[a(r["rejected"])])) + "\n")
    model = tmp_path / "model"
    save_tiny_model(model, WORDS)
    tk = json.loads((model / "tokenizer_config.json").read_text())
    (model / "tokenizer_config.json").write_text(json.dumps({**tk, "chat_template": CHAT}))
    (model / "model.safetensors").write_bytes(b"not weights")  # loading the model would fail: the data error must come first
    assert main(["train", "--model", str(model), "--data", str(bad), "--out", str(tmp_path / "run"), "--max-steps", "1"]) == 2
    err = capsys.readouterr().err
    err = err[err.index("dpo-nb train: error:"):]  # (after any progress bars)
    assert err.startswith("dpo-nb train: error: tokenize_pairs dropped all 6 pairs") and "template_error" in err
    assert "Traceback" not in err


# ---------------------------------------------------------------- pairs the batches leave out

def test_left_out_pairs_are_warned_recorded_and_reported(tok, tmp_path):
    with pytest.warns(DataWarning, match=r"batch_size=4 leaves 2 of the 10 training pairs out of every epoch"):
        t = DPOTrainer(tiny_model(), tok, rows(10), cfg(max_steps=2))
    lo = t.history.meta["left_out"]
    trained = {int(p) for b in range(2) for p in t.train_data.select(t._batch(b)[0])["pair_id"]}
    assert lo["never_trained"] == 2 and set(lo["never_trained_ids"]) == set(range(10)) - trained
    assert lo["left_out_by_epoch"]["0"] == lo["never_trained_ids"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        even = DPOTrainer(tiny_model(), tok, rows(8), cfg(max_steps=2))  # 8 = 2 x 4: no remainder, no warning
    assert even.history.meta["left_out"]["never_trained"] == 0
    short = quiet(DPOTrainer, tiny_model(), tok, rows(12), cfg(max_steps=1))  # one step of three: 8 pairs not reached
    assert short.history.meta["left_out"]["never_trained"] == 8 and short.history.meta["left_out"]["per_epoch"] == 0
    from dpo_nb.report import write_report
    t.fit()
    html = write_report(t.history, tmp_path / "r").read_text()
    assert "leave 2 out of every epoch" in html and ", ".join(map(str, lo["never_trained_ids"])) in html


# ---------------------------------------------------------------- more rows and sources that were silently wrong

def test_text_that_spells_a_special_token_is_flagged_or_dropped():
    t = word_tokenizer(WORDS)
    ds = quiet(tokenize_pairs, [dict(prompt="the film", chosen="<eos>", rejected=" bad"),            # nothing but EOS: dropped
                                dict(prompt="the film", chosen=" good <eos> very bad", rejected=" bad"),  # EOS mid-response
                                dict(prompt="the <bos> film", chosen=" good", rejected=" bad"),          # BOS mid-prompt
                                dict(prompt="<bos> the film", chosen=" good <eos>", rejected=" bad")], t)  # where they belong
    f = ds.report.to_frame()
    assert ds["pair_id"] == [1, 2, 3]
    assert f[(f.pair_id == 0)].iloc[0][["reason", "field"]].tolist() == ["empty_response", "chosen"]
    flags = {(r.pair_id, r.field): r.detail for r in f[f.reason == "special_token_text"].itertuples()}
    assert flags == {(1, "chosen"): "spells <eos>", (2, "prompt"): "spells <bos>"}
    conv = quiet(tokenize_pairs, [dict(prompt=[u("the film")], chosen=[a("<eos>")], rejected=[a("bad")]),
                                  dict(prompt=[u("the film")], chosen=[a("good")], rejected=[a("bad")])], tok_with_chat())
    assert conv["pair_id"] == [1] and conv.report.ids("empty_response") == [0]


def tok_with_chat():
    t = word_tokenizer(WORDS); t.chat_template = CHAT
    return t


def test_rows_changed_after_loading_are_checked_again(tok):
    ds = quiet(load_preferences, rows(4)).map(lambda r: dict(chosen="" if r["pair_id"] == 0 else r["chosen"],
                                                             rejected=r["chosen"] if r["pair_id"] == 1 else r["rejected"]))
    with pytest.warns(DataWarning, match="dropped 2 of 4"):
        t = tokenize_pairs(ds, word_tokenizer(WORDS))
    f = t.report.to_frame().set_index("pair_id")
    assert t["pair_id"] == [2, 3] and f.loc[0, "reason"] == "empty_response" and f.loc[1, "reason"] == "identical"
    assert (f.stage == "tokenize").all() and f.detail.str.startswith("changed after loading").all()


@pytest.mark.parametrize("src,message", [
    ([dict(prompt="p", chosen="\ud800", rejected="b")], "row 0, field 'chosen': holds a lone surrogate"),
    ([dict(prompt=[u("hi\udfff")], chosen=[a("a")], rejected=[a("b")])], "field 'prompt[0].content': holds a lone surrogate"),
    ([dict(pair_id=2**70, prompt="p", chosen="a", rejected="b")], "row 0, field 'pair_id': expected an int (64-bit)"),
    ([dict(pair_id=1, prompt="p", chosen="a", rejected="b"), dict(prompt="q", chosen="a", rejected="b")], "row 1, field 'pair_id': expected an int (64-bit), got missing"),
    (dict(prompt="hello", chosen="great", rejected="awful"), "'prompt' holds a str; for one pair pass a list of one dict"),
    ({"prompt": ["a", "b"], "chosen": ["c"], "rejected": ["d", "e"]}, "columns have different lengths"),
])
def test_sources_wrong_in_their_shape_are_errors_naming_row_and_field(src, message):
    with pytest.raises(PreferenceDataError) as ei: load_preferences(src)
    assert message in str(ei.value), str(ei.value)


def test_file_errors_name_the_file_for_columns_ids_and_keys(tmp_path):
    cases = {"semi.csv": (b"prompt;chosen;rejected\na;b;c\n", "missing column 'chosen'"),
             "ids.jsonl": (b'{"pair_id": 0, "prompt": "a", "chosen": "b", "rejected": "c"}\n{"pair_id": "x", "prompt": "a", "chosen": "b", "rejected": "c"}\n',
                           "row 1, field 'pair_id': expected an int (64-bit), got str 'x'"),
             "missing_id.jsonl": (GOOD + b'{"pair_id": 3, "prompt": "a", "chosen": "b", "rejected": "c"}\n', "row 0, field 'pair_id': expected an int (64-bit), got missing"),
             "super_id.csv": ("pair_id,prompt,chosen,rejected\n\u00b2,a,b,c\n".encode(), "row 0, field 'pair_id': expected an int (64-bit), got str"),
             "bom_bad.csv": (b"\xef\xbb\xbfprompt,chosen,rejected\na,b,c\n\xe9,b,c\n", "line 3: not valid UTF-8 (byte b'\\xe9' at column 1)"),
             "broken_object.json": (b'{"data": [\n  {"prompt": "a", "chosen": "b", "rejected": "c"},\n  {"prompt": oops}\n]}', "line 3: not valid JSON"),
             "rows.json": (b'[["a", "b", "c"]]', "row 0: expected a dict"),
             "dupkey.jsonl": (b'{"prompt": "p", "chosen": "good", "chosen": "bad", "rejected": "bad"}\n', "line 1: the key 'chosen' appears twice"),
             "dupkey.json": (b'[{"prompt": "p", "prompt": "q", "chosen": "a", "rejected": "b"}]', "the key 'prompt' appears twice")}
    for name, (data, message) in cases.items():
        p = write(tmp_path / name, data)
        with pytest.raises(PreferenceDataError) as ei: load_preferences(p)
        assert p.name in str(ei.value) and message in str(ei.value), (name, str(ei.value))
    p = write(tmp_path / "ids.csv", b"pair_id,prompt,chosen,rejected\n7,a,b,c\n-3,d,e,f\n")  # CSV cells of digits are ids
    assert load_preferences(p)["pair_id"] == [7, -3]


def test_bad_options_are_refused(tmp_path):
    import pandas as pd
    r = rows(2)
    for kw, message in ((dict(columns={"promtp": "prompt"}), "unknown key(s) ['promtp']"),
                        (dict(columns={"prompt": "chosen", "chosen": "chosen"}), "mapped to more than one field"),
                        (dict(keep_columns=["chosen"]), "kept anyway"),
                        (dict(human_marker="", assistant_marker="\n\nAssistant:"), "two different, non-blank markers"),
                        (dict(human_marker="X:", assistant_marker="X:"), "two different, non-blank markers")):
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")):
            load_preferences(r, **kw)
    with pytest.raises(TypeError, match="not the str 'score'"): load_preferences(r, keep_columns="score")
    with pytest.raises(PreferenceDataError, match="the column 's' cannot be stored"):
        load_preferences([dict(r[0], s=1), dict(r[1], s="x")], keep_columns=["s"])
    with pytest.raises(PreferenceDataError, match=r"the DataFrame has the column\(s\) \['chosen'\] more than once"):
        load_preferences(pd.DataFrame([["p", "a", "b", "c"]], columns=["prompt", "chosen", "rejected", "chosen"]))
    t = word_tokenizer(WORDS)
    for kw in (dict(max_prompt_length=True), dict(max_length=False), dict(max_length=0)):
        with pytest.raises(ValueError, match="must be a positive int or None"): tokenize_pairs(r, t, **kw)
    with pytest.raises(TypeError, match="pass a tokenizer"): tokenize_pairs(r, "gpt2")
    with pytest.raises(TypeError, match="not True"): split_pairs(quiet(load_preferences, rows(12)), True)
    model_dir = tmp_path / "model"; save_tiny_model(model_dir, WORDS)
    with pytest.raises(PreferenceDataError, match="failed"): load_preferences(str(model_dir))  # a folder of no data


def test_roles_are_read_in_any_case_and_combining_marks_alone_are_blank():
    d = load_preferences([dict(chosen=[{"from": "Human", "value": "hi"}, {"from": "GPT", "value": "g"}],
                               rejected=[{"from": "HUMAN", "value": "hi"}, {"from": "gpt", "value": "b"}]),
                          dict(prompt=[{"role": "User", "content": "hi"}], chosen=[{"role": "Assistant", "content": "a"}],
                               rejected=[{"role": "assistant", "content": "b"}])])
    assert d[0]["prompt"] == [u("hi")] and d[0]["chosen"] == [a("g")] and d[1]["chosen"] == [a("a")]
    assert len(d.report.flags) == 0
    z = quiet(load_preferences, [dict(prompt="Q", chosen="\u0301\u0301", rejected="b"), dict(prompt="Q", chosen="e\u0301", rejected="b")])
    assert z["pair_id"] == [1] and z.report.to_frame().detail[0] == "only invisible characters: U+0301 x2"


def test_a_split_then_tokenized_keeps_only_the_first_loads_findings(tok):
    loaded = quiet(load_preferences, rows(16) + rows(4))  # 4 repeats, flagged once each at load
    tr, ev = split_pairs(loaded, test_size=0.25, seed=1)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        t = tokenize_pairs(tr, word_tokenizer(WORDS))
    assert not any("changed after loading" in i.detail for i in t.report.issues)
    assert not any("duplicate" in str(x.message) for x in w)  # warned once, at load
    assert set(t.report.ids("duplicate")) == set(tr.report.ids("duplicate"))


def test_a_dict_of_series_or_arrays_is_columns():
    import numpy as np, pandas as pd
    d = load_preferences({"prompt": pd.Series(["a", "b"]), "chosen": np.array(["c", "d"]), "rejected": ("e", "f")})
    assert d["chosen"] == ["c", "d"]


def test_the_report_lists_every_drop_and_counts_the_flags_past_its_limit():
    from dpo_nb.report import data_report_html
    rep = quiet(load_preferences, [dict(prompt=f"q{i}", chosen="a", rejected="b") for i in range(5)] * 2
                + [dict(prompt="q", chosen="a", rejected="a")]).report  # 5 duplicates flagged, 1 drop
    html = data_report_html(rep, max_rows=2)
    assert html.count("<tr>") == 1 + 2 and "3 more flags are counted above" in html and "identical" in html
