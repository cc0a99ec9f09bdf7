"Tests for dpo_nb.data: loading every format from every source, validation, implicit prompts, tokenization, collation."
import gzip
import json
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from datasets import Dataset, DatasetDict

from dpo_nb.data import (DataReport, DataWarning, PairCollator, PreferenceDataError, PreferenceTypeError,
                         decode_masked, load_preferences, pad_id, split_conversation, split_implicit,
                         token_table, tokenize_pairs, train_bpe_tokenizer)

HH = Path(__file__).resolve().parents[2] / 'shared' / 'data' / 'anthropic-hh-rlhf' / 'harmless-base-test.jsonl.gz'
H, A = "\n\nHuman:", "\n\nAssistant:"
u = lambda t: {'role': 'user', 'content': t}
a = lambda t: {'role': 'assistant', 'content': t}
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")
CORPUS = ["Where is the cat? It is over there, by the door.", "There were theories about the weather there.",
          "Is the sky blue? Yes. The sky is blue. No, it is grey.", "Hello! How can I help you today?",
          "What is two plus two? Four. Five. What colour is the sky?"] * 20


@pytest.fixture(scope='module')
def tok():
    return train_bpe_tokenizer(CORPUS, vocab_size=330)


@pytest.fixture(scope='module')
def tok_pad():
    return train_bpe_tokenizer(CORPUS, vocab_size=330, pad_token='<pad>')


def quiet(fn, *args, **kw):
    "Call fn with DataWarnings silenced (for tests about something else)."
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', DataWarning)
        return fn(*args, **kw)


# ---------------------------------------------------------------- every format from every source

Q1, Q2 = 'What is two plus two?', 'What colour is the sky?'
FORMAT_ROWS = {
    'explicit': [dict(prompt=Q1, chosen=' Four.', rejected=' Five.'), dict(prompt=Q2, chosen=' Blue.', rejected=' Green.')],
    'conv_prompt_messages': [dict(prompt=[u(Q1)], chosen=[a('Four.')], rejected=[a('Five.')]),
                             dict(prompt=[u(Q2)], chosen=[a('Blue.')], rejected=[a('Green.')])],
    'conv_prompt_string': [dict(prompt=Q1, chosen=[a('Four.')], rejected=[a('Five.')]),
                           dict(prompt=Q2, chosen=[a('Blue.')], rejected=[a('Green.')])],
    'conv_whole': [dict(chosen=[u(Q1), a('Four.')], rejected=[u(Q1), a('Five.')]),
                   dict(chosen=[u(Q2), a('Blue.')], rejected=[u(Q2), a('Green.')])],
    'conv_whole_with_prompt_string': [dict(prompt=Q1, chosen=[u(Q1), a('Four.')], rejected=[u(Q1), a('Five.')]),
                                      dict(prompt=Q2, chosen=[u(Q2), a('Blue.')], rejected=[u(Q2), a('Green.')])],
    'implicit': [dict(chosen=f'{H} {Q1}{A} Four.', rejected=f'{H} {Q1}{A} Five.'),
                 dict(chosen=f'{H} {Q2}{A} Blue.', rejected=f'{H} {Q2}{A} Green.')],
}
CONV_EXPECTED = [dict(pair_id=0, prompt=[u(Q1)], chosen=[a('Four.')], rejected=[a('Five.')]),
                 dict(pair_id=1, prompt=[u(Q2)], chosen=[a('Blue.')], rejected=[a('Green.')])]
EXPECTED = {
    'explicit': ('explicit', [dict(pair_id=i, **r) for i, r in enumerate(FORMAT_ROWS['explicit'])]),
    'conv_prompt_messages': ('conversational', CONV_EXPECTED),
    'conv_prompt_string': ('conversational', CONV_EXPECTED),
    'conv_whole': ('conversational', CONV_EXPECTED),
    'conv_whole_with_prompt_string': ('conversational', CONV_EXPECTED),
    'implicit': ('implicit', [dict(pair_id=0, prompt=f'{H} {Q1}{A}', chosen=' Four.', rejected=' Five.'),
                              dict(pair_id=1, prompt=f'{H} {Q2}{A}', chosen=' Blue.', rejected=' Green.')]),
}
SOURCES = ['list', 'dataframe', 'dataset', 'datasetdict', 'json', 'json.gz', 'jsonl', 'jsonl.gz', 'csv', 'csv.gz',
           'parquet', 'hf_folder', 'hf_json_builder']


def write_jsonl(rows, path):
    op = gzip.open if str(path).endswith('.gz') else open
    with op(path, 'wt', encoding='utf-8') as f:
        for r in rows: f.write(json.dumps(r) + '\n')
    return path


def make_source(kind, rows, tmp_path):
    "(source, kwargs) for load_preferences, holding `rows` in the given kind of source."
    if kind == 'list': return rows, {}
    if kind == 'dataframe': return pd.DataFrame(rows), {}
    if kind == 'dataset': return Dataset.from_list(rows), {}
    if kind == 'datasetdict': return DatasetDict(train=Dataset.from_list(rows)), {}
    p = tmp_path / f'pairs.{kind}'
    if kind in ('json', 'json.gz'):
        op = gzip.open if kind.endswith('.gz') else open
        with op(p, 'wt', encoding='utf-8') as f: json.dump(rows, f)
        return p, {}
    if kind in ('jsonl', 'jsonl.gz'): return write_jsonl(rows, p), {}
    if kind in ('csv', 'csv.gz'): pd.DataFrame(rows).to_csv(p, index=False); return str(p), {}
    if kind == 'parquet': pd.DataFrame(rows).to_parquet(p); return p, {}
    if kind == 'hf_folder':  # a local folder of data files, read by datasets.load_dataset as a dataset name
        d = tmp_path / 'hf_data'; d.mkdir()
        write_jsonl(rows, d / 'train.jsonl')
        return str(d), dict(cache_dir=str(tmp_path / 'cache'))
    if kind == 'hf_json_builder':  # load_dataset('json', data_files=...)
        write_jsonl(rows, tmp_path / 'data.jsonl')
        return 'json', dict(data_files=str(tmp_path / 'data.jsonl'), split='train', cache_dir=str(tmp_path / 'cache'))
    raise ValueError(kind)


@pytest.mark.parametrize('source_kind', SOURCES)
@pytest.mark.parametrize('fmt', list(FORMAT_ROWS))
def test_every_format_from_every_source(fmt, source_kind, tmp_path):
    source, kw = make_source(source_kind, FORMAT_ROWS[fmt], tmp_path)
    if source_kind.startswith('csv') and fmt.startswith('conv'):
        # CSV cells are flat text: a list of messages has no standard encoding there, and reading a cell that
        # looks like a list as messages would misread real answers. So conversational CSV is refused, loudly.
        with pytest.raises(PreferenceDataError, match=r"row 0, field 'chosen' holds a list of messages.*JSONL or Parquet"):
            load_preferences(source, **kw)
        return
    with warnings.catch_warnings():
        warnings.simplefilter('error', DataWarning)  # clean data: nothing dropped or flagged
        ds = load_preferences(source, **kw)
    want_fmt, want_rows = EXPECTED[fmt]
    assert ds.format_name == want_fmt
    assert ds.column_names == ['pair_id', 'prompt', 'chosen', 'rejected']
    assert ds.to_list() == want_rows
    assert ds.report.counts == {'rows': 2, 'kept': 2, 'dropped': 0}
    assert ds.report.format_name == want_fmt


def test_csv_conversational_is_refused(tmp_path):
    p = tmp_path / 'conv.csv'
    pd.DataFrame(FORMAT_ROWS['conv_prompt_messages']).assign(
        prompt=lambda d: d.prompt.map(json.dumps), chosen=lambda d: d.chosen.map(json.dumps),
        rejected=lambda d: d.rejected.map(json.dumps)).to_csv(p, index=False)
    with pytest.raises(PreferenceDataError, match=r"row 0, field 'chosen'.*JSONL or Parquet"):
        load_preferences(p)
    # a real answer that merely starts with a bracket is text
    p2 = tmp_path / 'brackets.csv'
    pd.DataFrame([dict(prompt='Give a list.', chosen='[1, 2, 3]', rejected='{no}')]).to_csv(p2, index=False)
    assert load_preferences(p2)[0]['chosen'] == '[1, 2, 3]'


def test_csv_keeps_text_like_na(tmp_path):
    p = tmp_path / 'na.csv'
    pd.DataFrame([dict(prompt='Abbreviation for not applicable?', chosen='NA', rejected='None')]).to_csv(p, index=False)
    assert load_preferences(p)[0] == dict(pair_id=0, prompt='Abbreviation for not applicable?', chosen='NA', rejected='None')


def test_tsv_and_dict_of_columns(tmp_path):
    p = tmp_path / 'x.tsv'
    pd.DataFrame(FORMAT_ROWS['explicit']).to_csv(p, sep='\t', index=False)
    assert load_preferences(p).to_list() == EXPECTED['explicit'][1]
    cols = pd.DataFrame(FORMAT_ROWS['explicit']).to_dict(orient='list')
    assert load_preferences(cols).to_list() == EXPECTED['explicit'][1]


def test_json_variants(tmp_path):
    rows = FORMAT_ROWS['explicit']
    (tmp_path / 'lines.json').write_text('\n'.join(json.dumps(r) for r in rows))  # JSON lines in a .json file
    (tmp_path / 'wrapped.json').write_text(json.dumps({'data': rows}))
    (tmp_path / 'columns.json').write_text(json.dumps(pd.DataFrame(rows).to_dict(orient='list')))
    for name in ('lines.json', 'wrapped.json', 'columns.json'):
        assert load_preferences(tmp_path / name).to_list() == EXPECTED['explicit'][1], name


def test_bad_json_line_names_the_line(tmp_path):
    p = tmp_path / 'bad.jsonl'
    p.write_text(json.dumps(FORMAT_ROWS['explicit'][0]) + '\n{"prompt": "x", oops\n')
    with pytest.raises(PreferenceDataError, match='line 2: not valid JSON'):
        load_preferences(p)


def test_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='no such file'):
        load_preferences(tmp_path / 'missing.jsonl')
    (tmp_path / 'pairs.txt').write_text('hello')
    with pytest.raises(PreferenceDataError, match='unknown file type'):
        load_preferences(tmp_path / 'pairs.txt')
    with pytest.raises(PreferenceDataError, match='cannot read preference pairs from a int'):
        load_preferences(42)


def test_parquet_gz_and_dataframe_from_parquet(tmp_path):
    rows = FORMAT_ROWS['conv_prompt_messages']
    p = tmp_path / 'c.parquet'
    pd.DataFrame(rows).to_parquet(p)
    gz = tmp_path / 'c.parquet.gz'
    gz.write_bytes(gzip.compress(p.read_bytes()))
    assert load_preferences(gz).to_list() == CONV_EXPECTED
    # pandas reads list columns from parquet as numpy arrays of dicts
    assert load_preferences(pd.read_parquet(p)).to_list() == CONV_EXPECTED


# ---------------------------------------------------------------- splits

def test_split_selection(tmp_path):
    dd = DatasetDict(train=Dataset.from_list(FORMAT_ROWS['explicit']), test=Dataset.from_list(FORMAT_ROWS['explicit'][:1]))
    with pytest.raises(PreferenceDataError, match=r"splits \['train', 'test'\].*split="):
        load_preferences(dd)
    with pytest.raises(PreferenceDataError, match=r"no split 'valid'.*\['train', 'test'\]"):
        load_preferences(dd, split='valid')
    assert len(load_preferences(dd, split='test')) == 1
    assert "DatasetDict['test']" in load_preferences(dd, split='test').report.source
    d = tmp_path / 'hf'; d.mkdir()
    write_jsonl(FORMAT_ROWS['explicit'], d / 'train.jsonl')
    write_jsonl(FORMAT_ROWS['explicit'][:1], d / 'test.jsonl')
    with pytest.raises(PreferenceDataError, match=r"splits \['train', 'test'\]"):
        load_preferences(str(d), cache_dir=str(tmp_path / 'c'))
    assert len(load_preferences(str(d), split='test', cache_dir=str(tmp_path / 'c'))) == 1
    assert len(load_preferences(str(d), split='train[:1]', cache_dir=str(tmp_path / 'c'))) == 1


def test_split_on_a_single_table_is_noted_not_fatal(tmp_path):
    p = write_jsonl(FORMAT_ROWS['explicit'], tmp_path / 'x.jsonl')
    ds = load_preferences(p, split='train')   # e.g. a CLI default; a file holds one table
    assert len(ds) == 2 and any("split='train' ignored" in n for n in ds.report.notes)
    with pytest.raises(PreferenceDataError, match="is split 'test', not the split='train'"):
        load_preferences(Dataset.from_list(FORMAT_ROWS['explicit'], split='test'), split='train')


def test_forced_format():
    ds = load_preferences([dict(prompt='ignored', chosen=f'{H} Q{A} yes', rejected=f'{H} Q{A} no')], format_name='implicit')
    assert ds[0]['prompt'] == f'{H} Q{A}' and any("'prompt' column is ignored" in n for n in ds.report.notes)
    with pytest.raises(ValueError, match='format_name must be one of'):
        load_preferences(FORMAT_ROWS['explicit'], format_name='chat')


# ---------------------------------------------------------------- structural errors (row + field)

def test_missing_column_names_found_and_expected():
    with pytest.raises(PreferenceDataError) as e:
        load_preferences([dict(question='Q', chosen='A', rejected='B')], format_name='explicit')
    msg = str(e.value)
    assert "missing column 'prompt'" in msg and "['question', 'chosen', 'rejected']" in msg and 'explicit' in msg
    with pytest.raises(PreferenceDataError) as e:
        load_preferences([dict(prompt='Q', chosen='A', answer='B')])
    msg = str(e.value)
    assert "missing column 'rejected'" in msg and "'answer'" in msg
    assert all(f in msg for f in ('explicit', 'conversational', 'implicit'))


def test_wrong_types_name_row_and_field():
    rows = [dict(prompt='Q', chosen='A', rejected='B'), dict(prompt='Q', chosen='A', rejected='B'),
            dict(prompt='Q', chosen=42, rejected='B'), dict(prompt=['Q'], chosen='A', rejected='B')]
    with pytest.raises(PreferenceTypeError) as e:
        load_preferences(rows)
    msg = str(e.value)
    assert '2 row(s)' in msg
    assert "row 2, field 'chosen': expected text (str), got int 42" in msg
    assert "row 3, field 'prompt'" in msg
    assert isinstance(e.value, TypeError) and isinstance(e.value, ValueError)


def test_conversational_wrong_types_name_message():
    ok = dict(prompt=[u('Q')], chosen=[a('A')], rejected=[a('B')])
    cases = [(dict(prompt=[u('Q')], chosen=[{'content': 'A'}], rejected=[a('B')]), r"row 1, field 'chosen\[0\]'.*'role' and 'content'"),
             (dict(prompt=[u('Q')], chosen=[a('A')], rejected=[{'role': 'assistant', 'content': ['x']}]), r"row 1, field 'rejected\[0\].content'"),
             (dict(prompt=[u('Q')], chosen='A', rejected=[a('B')]), "row 1, field 'chosen': expected a list of"),
             (dict(prompt=[u('Q')], chosen=[a('A'), 'oops'], rejected=[a('B')]), r"row 1, field 'chosen\[1\]'")]
    for bad, pat in cases:
        with pytest.raises(PreferenceTypeError, match=pat):
            load_preferences([ok, bad])
    with pytest.raises(PreferenceTypeError, match="row 0, field 'prompt': there is no prompt column"):
        load_preferences([dict(chosen=[a('A')], rejected=[a('B')])])


def test_bad_pair_id_column():
    with pytest.raises(PreferenceDataError, match='unique'):
        load_preferences([dict(pair_id=3, prompt='Q', chosen='A', rejected='B')] * 2)
    with pytest.raises(PreferenceTypeError, match="row 1, field 'pair_id'"):
        load_preferences([dict(pair_id=3, prompt='Q', chosen='A', rejected='B'), dict(pair_id='x', prompt='Q', chosen='A', rejected='B')])


def test_non_dict_row():
    with pytest.raises(PreferenceTypeError, match='row 1: expected a dict'):
        load_preferences([dict(prompt='Q', chosen='A', rejected='B'), 'oops'])


# ---------------------------------------------------------------- counted drops

def test_drops_are_counted_with_ids_fields_and_warned():
    rows = [dict(prompt='Q0', chosen='A', rejected='B'),
            dict(prompt='Q1', chosen='A', rejected='   '),          # empty (whitespace) response
            dict(prompt='Q2', chosen='', rejected='B'),             # empty response
            dict(prompt='Q3', chosen='Same', rejected='Same'),      # identical
            dict(prompt='Q4', chosen=None, rejected='B'),           # None
            dict(prompt='Q5', chosen='A', rejected=float('nan')),   # NaN
            dict(prompt='Q6', chosen='A'),                          # missing key
            dict(prompt=' ', chosen='A', rejected='B'),             # empty prompt
            dict(prompt='Q8', chosen='C', rejected='D')]
    with pytest.warns(DataWarning, match=r'dropped 7 of 9 pairs: .*2 empty_response \(pair_id 1, 2\).*1 identical \(pair_id 3\)'):
        ds = load_preferences(rows)
    assert ds['pair_id'] == [0, 8]
    r = ds.report
    assert r.counts == {'rows': 9, 'kept': 2, 'dropped': 7, 'dropped/empty_response': 2, 'dropped/identical': 1,
                        'dropped/non_text': 3, 'dropped/empty_prompt': 1}
    assert r.ids('non_text') == [4, 5, 6] and r.ids('empty_response') == [1, 2]
    f = r.to_frame().set_index('pair_id')
    assert list(f.columns) == ['stage', 'kind', 'reason', 'field', 'detail']
    assert f.loc[1, 'field'] == 'rejected' and f.loc[2, 'field'] == 'chosen'
    assert (f.loc[4, 'detail'], f.loc[5, 'detail'], f.loc[6, 'detail']) == ('None', 'NaN', 'missing key')
    assert (f.loc[5, 'field'], f.loc[6, 'field'], f.loc[7, 'field']) == ('rejected', 'rejected', 'prompt')
    assert len(r.warnings) == 1 and 'dropped 7 of 9' in r.warnings[0]


def test_dataframe_nan_and_conversational_none_content():
    df = pd.DataFrame([dict(prompt='Q', chosen='A', rejected='B'), dict(prompt='Q', chosen=np.nan, rejected='B')])
    ds = quiet(load_preferences, df)
    assert ds.report.ids('non_text') == [1]
    rows = [dict(prompt=[u('Q')], chosen=[a('A')], rejected=[a('B')]),
            dict(prompt=[u('Q')], chosen=[a(None)], rejected=[a('B')]),
            dict(prompt=[u('Q')], chosen=[], rejected=[a('B')]),
            dict(prompt=[u('Q')], chosen=[a('A')], rejected=[a('A')])]
    with pytest.warns(DataWarning, match='dropped 3 of 4'):
        ds = load_preferences(rows)
    f = ds.report.to_frame().set_index('pair_id')
    assert f.loc[1, ['reason', 'field']].tolist() == ['non_text', 'chosen[0].content']
    assert f.loc[2, 'reason'] == 'empty_response' and f.loc[3, 'reason'] == 'identical'


def test_all_rows_dropped_is_an_error_with_report():
    with pytest.raises(PreferenceDataError, match='all 2 rows') as e:
        load_preferences([dict(prompt='Q', chosen='', rejected='B'), dict(prompt='Q', chosen='A', rejected='A')])
    assert isinstance(e.value.report, DataReport) and e.value.report.counts['dropped'] == 2


def test_report_prints_as_table():
    ds = quiet(load_preferences, [dict(prompt='Q', chosen='A', rejected='B'), dict(prompt='Q', chosen='', rejected='B')])
    s = str(ds.report)
    assert s == repr(ds.report)
    assert 'rows 2 | kept 1 | dropped 1' in s
    assert re.search(r'load\s+drop\s+empty_response\s+1\s+1', s)
    md = ds.report._repr_markdown_()
    assert '| stage | kind | reason | pairs | pair_ids | meaning |' in md and '| load | drop | empty_response | 1 | 1 |' in md
    assert 'no row dropped or flagged' in str(load_preferences(FORMAT_ROWS['explicit']).report)


# ---------------------------------------------------------------- options

def test_columns_mapping_keep_columns_and_pair_id():
    rows = [dict(id=7, question='Q', good='A', bad='B', score=0.5), dict(id=8, question='R', good='C', bad='D', score=0.25)]
    ds = load_preferences(rows, columns={'prompt': 'question', 'chosen': 'good', 'rejected': 'bad'}, keep_columns=['score'])
    assert ds.to_list() == [dict(pair_id=0, prompt='Q', chosen='A', rejected='B', score=0.5),
                            dict(pair_id=1, prompt='R', chosen='C', rejected='D', score=0.25)]
    # swapped names work (mapping is applied at once)
    sw = load_preferences([dict(prompt='Q', chosen='B', rejected='A')], columns={'chosen': 'rejected', 'rejected': 'chosen'})
    assert (sw[0]['chosen'], sw[0]['rejected']) == ('A', 'B')
    # a source pair_id column is kept, so ids stay stable when a loaded set is filtered and re-loaded
    first = quiet(load_preferences, [dict(prompt='Q', chosen='', rejected='B')] + FORMAT_ROWS['explicit'])
    again = load_preferences(first.select([1]))
    assert again['pair_id'] == [2]
    with pytest.raises(PreferenceDataError, match="no column 'nope'"):
        load_preferences(rows, columns={'prompt': 'question', 'chosen': 'good', 'rejected': 'bad'}, keep_columns=['nope'])


def test_sharegpt_keys_and_single_message():
    ds = load_preferences([dict(prompt=[{'from': 'human', 'value': 'Q'}], chosen={'from': 'gpt', 'value': 'A'},
                                rejected=[{'from': 'gpt', 'value': 'B'}])])
    assert ds[0] == dict(pair_id=0, prompt=[u('Q')], chosen=[a('A')], rejected=[a('B')])


def test_conversational_prompt_repeated_in_responses_is_removed():
    ds = load_preferences([dict(prompt=[u('Q')], chosen=[u('Q'), a('A')], rejected=[u('Q'), a('B')])])
    assert ds[0] == dict(pair_id=0, prompt=[u('Q')], chosen=[a('A')], rejected=[a('B')])


# ---------------------------------------------------------------- implicit prompt extraction

def test_implicit_shared_first_word_stays_in_responses():
    s = split_implicit(f'{H} Is it safe?{A} I think so.', f'{H} Is it safe?{A} I don\'t know.')
    assert s['prompt'] == f'{H} Is it safe?{A}'
    assert (s['chosen'], s['rejected']) == (' I think so.', " I don't know.")
    assert not s['later_turns'] and not s['parted_early']
    # the shared first word can even be a whole sentence
    s = split_implicit(f'{H} Q{A} Sure. Here it is.', f'{H} Q{A} Sure. No.')
    assert (s['prompt'], s['chosen']) == (f'{H} Q{A}', ' Sure. Here it is.')


def test_implicit_multi_turn():
    ch = f'{H} Hi{A} Hello!{H} How are you?{A} Fine, thanks.'
    rj = f'{H} Hi{A} Hello!{H} How are you?{A} Fine, go away.'
    s = split_implicit(ch, rj)
    assert s['prompt'] == f'{H} Hi{A} Hello!{H} How are you?{A}'
    assert (s['chosen'], s['rejected']) == (' Fine, thanks.', ' Fine, go away.')
    assert not s['later_turns']


def test_implicit_parting_early_and_later_turns():
    ch = f'{H} Hi{A} Hello!{H} Bye{A} Bye!'
    rj = f'{H} Hi{A} Go away.'
    s = split_implicit(ch, rj)
    assert s['prompt'] == f'{H} Hi{A}'
    assert s['chosen'] == f' Hello!{H} Bye{A} Bye!' and s['rejected'] == ' Go away.'
    assert s['later_turns'] and s['parted_early']
    # a response that goes on with a human turn but no new assistant marker: later turns, not parted early
    s = split_implicit(f'{H} Q{A} A.{H} thanks', f'{H} Q{A} B.')
    assert s['later_turns'] and not s['parted_early']
    # parted before the last *shared* marker: the divergent marker text is not used
    s = split_implicit(f'{H} Q{A} one{A} two', f'{H} Q{A} one{A}x three')
    assert s['prompt'] == f'{H} Q{A} one{A}'


def test_implicit_load_flags_and_drops():
    rows = [dict(chosen=f'{H} Hi{A} Hello!{H} Bye{A} Bye!', rejected=f'{H} Hi{A} Go away.'),
            dict(chosen=f'{H} Q{A} Yes.', rejected=f'{H} Q{A} No.'),
            dict(chosen=f'{H} A{A} x', rejected=f'{H} B{A} x'),        # no shared assistant marker
            dict(chosen='plain text', rejected='other text'),           # not a transcript
            dict(chosen=f'{H} Q{A} ', rejected=f'{H} Q{A} No.'),        # empty chosen response
            dict(chosen=f'{H} Q{A} Same', rejected=f'{H} Q{A} Same')]
    with pytest.warns(DataWarning) as w:
        ds = load_preferences(rows)
    msgs = [str(x.message) for x in w]
    assert any('dropped 4 of 6' in m and '2 no_shared_prompt (pair_id 2, 3)' in m for m in msgs)
    assert any('flagged: 1 later_turns (pair_id 0); 1 parted_early (pair_id 0)' in m for m in msgs)
    assert ds['pair_id'] == [0, 1]
    assert ds.report.ids('empty_response') == [4] and ds.report.ids('identical') == [5]
    dropped = quiet(load_preferences, rows, later_turns='drop')
    assert dropped['pair_id'] == [1] and dropped.report.ids('later_turns', kind='drop') == [0]
    custom = load_preferences([dict(chosen='USER: Q\nBOT: yes', rejected='USER: Q\nBOT: no')],
                              human_marker='USER:', assistant_marker='\nBOT:')
    assert custom[0]['prompt'] == 'USER: Q\nBOT:' and custom[0]['chosen'] == ' yes'


def test_conversational_whole_shapes():
    s = split_conversation([u('Q'), a('A'), u('Q2'), a('yes')], [u('Q'), a('A'), u('Q2'), a('no')])
    assert s['prompt'] == [u('Q'), a('A'), u('Q2')] and s['chosen'] == [a('yes')]
    assert not s['later_turns'] and not s['parted_early']
    s = split_conversation([u('Q'), a('A'), u('Q2'), a('yes')], [u('Q'), a('A'), u('Other'), a('no')])
    assert s['prompt'] == [u('Q')] and s['chosen'] == [a('A'), u('Q2'), a('yes')]
    assert s['later_turns'] and s['parted_early']
    # chosen is a prefix of rejected: same rule as transcripts, prompt ends before the last shared assistant turn
    s = split_conversation([u('Q'), a('A')], [u('Q'), a('A'), u('more'), a('B')])
    assert s['prompt'] == [u('Q')] and s['chosen'] == [a('A')] and s['rejected'] == [a('A'), u('more'), a('B')]
    assert split_conversation([u('Q')], [u('R'), a('x')]) is None
    sys_ = {'role': 'system', 'content': 'Be brief.'}
    ds = load_preferences([dict(chosen=[sys_, u('Q'), a('A')], rejected=[sys_, u('Q'), a('B')])])
    assert ds[0]['prompt'] == [sys_, u('Q')]


@pytest.fixture(scope='module')
def hh_rows():
    if not HH.exists(): pytest.skip(f'{HH} not present')
    with gzip.open(HH, 'rt', encoding='utf-8') as f:
        return [json.loads(l) for l in f]


@pytest.fixture(scope='module')
def hh(hh_rows):
    with pytest.warns(DataWarning) as w:
        ds = load_preferences(HH)
    return ds, [str(x.message) for x in w]


def test_real_hh_every_row_kept_or_counted(hh, hh_rows):
    ds, msgs = hh
    r = ds.report
    assert ds.format_name == 'implicit' and r.n_rows == len(hh_rows) == 2312
    kept, dropped = set(ds['pair_id']), set(r.dropped_ids)
    assert kept.isdisjoint(dropped) and kept | dropped == set(range(2312))
    assert r.counts['kept'] + r.counts['dropped'] == 2312
    assert r.ids('empty_response') == [86, 516, 925, 1103]   # "Assistant: " with nothing after it
    assert r.ids('later_turns') == r.ids('parted_early') == [1254, 1688, 1950, 1952, 2036]
    assert any('dropped 4 of 2312' in m for m in msgs) and any('5 later_turns' in m for m in msgs)


def test_real_hh_splits_are_exact(hh, hh_rows):
    ds, _ = hh
    flagged = set(ds.report.ids('later_turns'))
    for row in ds:
        src = hh_rows[row['pair_id']]
        assert row['prompt'] + row['chosen'] == src['chosen'] and row['prompt'] + row['rejected'] == src['rejected']
        assert row['prompt'].endswith(A) and row['chosen'] != row['rejected']
        if row['pair_id'] not in flagged:
            assert not any(m in row[k] for k in ('chosen', 'rejected') for m in (H, A))


def test_real_hh_tokenizes(hh, hh_rows):
    ds, _ = hh
    sub = ds.select(range(300))
    tk = train_bpe_tokenizer([r['chosen'] for r in hh_rows[:200]], vocab_size=600)
    t = tokenize_pairs(sub, tk, max_length=128, max_prompt_length=64)
    assert len(t) == 300 and t.report.n_kept == 300
    for r in t:
        assert len(r['prompt_ids']) <= 64 and len(r['prompt_ids']) + max(len(r['chosen_ids']), len(r['rejected_ids'])) <= 128
        for s in ('chosen', 'rejected'):
            assert (r[f'{s}_ids'][-1] == tk.eos_token_id) == (r[f'{s}_truncated'] == 0)
    assert t.report.counts['flagged/prompt_truncated'] == sum(x > 0 for x in t['prompt_truncated'])


# ---------------------------------------------------------------- tokenization

CONTRACT_COLUMNS = ['pair_id', 'prompt_ids', 'chosen_ids', 'rejected_ids', 'prompt_truncated', 'chosen_truncated',
                    'rejected_truncated', 'boundary_merge', 'prompt_text', 'chosen_text', 'rejected_text']


def enc(tok, text): return tok(text, add_special_tokens=False)['input_ids']


def test_tokenize_explicit_bos_and_one_eos(tok):
    t = tokenize_pairs(FORMAT_ROWS['explicit'], tok)  # raw rows are loaded first
    assert t.column_names == CONTRACT_COLUMNS
    for src, r in zip(FORMAT_ROWS['explicit'], t):
        assert r['prompt_ids'] == [tok.bos_token_id] + enc(tok, src['prompt'])
        assert r['chosen_ids'] == enc(tok, src['chosen']) + [tok.eos_token_id]
        for s in ('chosen', 'rejected'):
            assert r[f'{s}_ids'].count(tok.eos_token_id) == 1 and r[f'{s}_ids'][-1] == tok.eos_token_id
            assert r[f'{s}_ids'].count(tok.bos_token_id) == 0
        assert r['prompt_ids'].count(tok.bos_token_id) == 1
        assert (r['prompt_text'], r['chosen_text']) == (src['prompt'], src['chosen'])


def test_eos_not_doubled_when_text_ends_with_it(tok):
    t = tokenize_pairs([dict(prompt='Q?', chosen=' Yes.</s>', rejected=' No.')], tok)
    assert t[0]['chosen_ids'] == enc(tok, ' Yes.') + [tok.eos_token_id]
    assert t[0]['rejected_ids'] == enc(tok, ' No.') + [tok.eos_token_id]


def test_no_bos_tokenizer():
    tk = train_bpe_tokenizer(CORPUS, vocab_size=330, add_bos=False)
    t = tokenize_pairs(FORMAT_ROWS['explicit'], tk)
    assert t[0]['prompt_ids'] == enc(tk, Q1)


def whole_ids(tk, msgs, tmpl=None, **kw):
    "What the model is trained and prompted with: apply_chat_template's own ids."
    return tk.apply_chat_template(msgs, chat_template=tmpl, tokenize=True, return_dict=False, **kw)


def test_chat_pairs_are_exactly_the_templates_whole_conversation(tok):
    t = tokenize_pairs(FORMAT_ROWS['conv_whole'], tok, chat_template=CHAT_TEMPLATE)
    r = t[0]
    assert r['prompt_text'] == f'<|user|>{Q1}</s>\n<|assistant|>'
    assert r['chosen_text'] == 'Four.</s>\n'  # the turn as the template ends it, its newline included
    loaded = load_preferences(FORMAT_ROWS['conv_whole'])
    for row, src in zip(t, loaded):
        assert row['prompt_ids'] == whole_ids(tok, src['prompt'], CHAT_TEMPLATE, add_generation_prompt=True)
        assert tok.bos_token_id not in row['prompt_ids']  # the template renders no BOS, so there is none
        for s in ('chosen', 'rejected'):
            assert row['prompt_ids'] + row[f'{s}_ids'] == whole_ids(tok, src['prompt'] + src[s], CHAT_TEMPLATE)
            assert row[f'{s}_ids'].count(tok.eos_token_id) == 1  # the template's own: none added, none removed
    assert any('no EOS added' in n and repr('</s>\n') in n for n in t.report.notes)
    # the template set on the tokenizer is used when none is passed
    tk = train_bpe_tokenizer(CORPUS, vocab_size=330, chat_template=CHAT_TEMPLATE)
    assert tokenize_pairs(FORMAT_ROWS['conv_whole'], tk)['chosen_ids'] == t['chosen_ids']


def test_template_rendering_bos_text_is_not_doubled(tok):
    tmpl = "{{ bos_token }}" + CHAT_TEMPLATE
    t = tokenize_pairs(FORMAT_ROWS['conv_prompt_messages'], tok, chat_template=tmpl)
    assert t[0]['prompt_text'].startswith('<s>')
    assert t[0]['prompt_ids'][:2] != [tok.bos_token_id] * 2 and t[0]['prompt_ids'].count(tok.bos_token_id) == 1


def test_left_truncation_keeps_a_template_rendered_bos():
    tk = train_bpe_tokenizer(CORPUS, vocab_size=330, add_bos=False, chat_template="{{ bos_token }}" + CHAT_TEMPLATE)
    t = tokenize_pairs(FORMAT_ROWS['conv_prompt_messages'], tk, max_length=20, max_prompt_length=8)
    full = enc(tk, t[0]['prompt_text'])
    assert full[0] == tk.bos_token_id and t[0]['prompt_ids'] == full[:1] + full[-7:]
    assert t[0]['prompt_truncated'] == len(full) - 8


def test_a_template_that_closes_no_turn_gets_nothing_added_and_a_note(tok):
    tmpl = ("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}[assistant] {% endif %}")
    t = tokenize_pairs(FORMAT_ROWS['conv_prompt_messages'], tok, chat_template=tmpl)
    src = load_preferences(FORMAT_ROWS['conv_prompt_messages'])[0]
    assert t[0]['prompt_ids'] + t[0]['chosen_ids'] == whole_ids(tok, src['prompt'] + src['chosen'], tmpl)
    assert tok.eos_token_id not in t[0]['chosen_ids'] and t[0]['chosen_text'].endswith('Four.\n')
    assert any('end in no special token' in n and 'not taught where to stop' in n for n in t.report.notes)


def test_a_template_rendering_the_prompt_otherwise_keeps_the_whole_conversation_and_flags(tok):
    # renders the generation header differently from an assistant turn inside a conversation: '<assistant-start>' is
    # not how the whole conversation goes on. As TRL does, the prompt is cut to what both share and the response is the
    # rest of the whole conversation's ids; the pair is flagged. A prompt ending with an assistant turn is dropped at load.
    tmpl = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<assistant-start>{% endif %}")
    with pytest.warns(DataWarning, match='1 prompt_ends_with_assistant'):
        loaded = load_preferences(FORMAT_ROWS['conv_prompt_messages'][:1] + [
            dict(prompt=[u(Q2), a('Hm.')], chosen=[a('Blue.')], rejected=[a('Green.')])])
    t = tokenize_pairs(loaded, tok, chat_template=tmpl)
    src, r = loaded[0], t[0]
    for s in ('chosen', 'rejected'):
        assert r['prompt_ids'] + r[f'{s}_ids'] == whole_ids(tok, src['prompt'] + src[s], tmpl)
    alone = whole_ids(tok, src['prompt'], tmpl, add_generation_prompt=True)
    assert alone[:len(r['prompt_ids'])] == r['prompt_ids'] and len(r['prompt_ids']) < len(alone)
    assert t.report.ids('template_mismatch', 'flag') == [0] and t.report.ids('prompt_ends_with_assistant') == [1]
    f = t.report.to_frame().set_index('pair_id')
    assert f.loc[0, 'field'] == 'prompt' and 'not in the whole conversation' in f.loc[0, 'detail']
    assert f.loc[1, 'stage'] == 'load' and f.loc[1, 'field'] == 'prompt[1]'
    # a generation prompt that shares no token with the conversation: nothing to train on, dropped
    first = "{% if add_generation_prompt %}#{% endif %}" + tmpl
    with pytest.raises(PreferenceDataError, match='tokenize_pairs dropped all 1 pairs') as ei:
        tokenize_pairs(loaded, tok, chat_template=first, warn=False)
    assert ei.value.report.ids('template_mismatch', 'drop') == [0]
    with pytest.raises(PreferenceDataError, match='chat template'):
        tokenize_pairs(FORMAT_ROWS['conv_whole'], tok)


def test_truncation_counts(tok):
    prompt = 'Where is the cat? It is over there, by the door. ' * 5
    resp = ' There were theories about the weather there.' * 3
    full_p, full_r = [tok.bos_token_id] + enc(tok, prompt), enc(tok, resp) + [tok.eos_token_id]
    Lp, L = 10, 30
    t = tokenize_pairs([dict(prompt=prompt, chosen=resp, rejected=' No.')], tok, max_length=L, max_prompt_length=Lp)
    r = t[0]
    # prompt: from the left, BOS kept
    assert r['prompt_ids'] == [tok.bos_token_id] + full_p[-(Lp - 1):]
    assert r['prompt_truncated'] == len(full_p) - Lp
    # chosen: from the right, its EOS goes with the tail
    assert r['chosen_ids'] == full_r[:L - Lp] and r['chosen_ids'][-1] != tok.eos_token_id
    assert r['chosen_truncated'] == len(full_r) - (L - Lp)
    assert r['rejected_truncated'] == 0 and r['rejected_ids'][-1] == tok.eos_token_id
    c = t.report.counts
    assert (c['flagged/prompt_truncated'], c['flagged/chosen_truncated']) == (1, 1) and 'flagged/rejected_truncated' not in c
    assert t.report.stats['prompt_tokens_removed'] == r['prompt_truncated']
    assert t.report.stats['chosen_tokens_removed'] == r['chosen_truncated']
    # no limits: nothing cut
    u_ = tokenize_pairs([dict(prompt=prompt, chosen=resp, rejected=' No.')], tok, max_length=None, max_prompt_length=None)
    assert u_[0]['prompt_ids'] == full_p and u_[0]['chosen_ids'] == full_r


def test_truncated_to_empty_is_a_counted_drop(tok):
    long = 'Where is the cat? It is over there. ' * 5
    rows = [dict(prompt=long, chosen=' Yes.', rejected=' No.'), dict(prompt='Q?', chosen=' Yes.', rejected=' No.')]
    with pytest.warns(DataWarning, match=r'dropped 1 of 2 pairs: 1 truncated_to_empty \(pair_id 0\)'):
        t = tokenize_pairs(rows, tok, max_length=8, max_prompt_length=8)
    assert t['pair_id'] == [1] and t.report.ids('truncated_to_empty') == [0]
    assert t.report.counts['kept'] == 1 and t.report.counts['rows'] == 2
    with pytest.raises(ValueError, match='must not exceed'):
        tokenize_pairs(rows, tok, max_length=8, max_prompt_length=9)
    with pytest.raises(ValueError, match='positive int'):
        tokenize_pairs(rows, tok, max_length=0)


def test_boundary_merge_flagged_on_constructed_case_not_clean(tok):
    rows = [dict(prompt='Where is the cat? It is over the', chosen='re, by the door.', rejected='m.'),  # the|re vs there
            dict(prompt='Is the sky blue? ', chosen='Yes.', rejected='No.'),                            # trailing space
            dict(prompt='Is the sky blue?', chosen=' Yes.', rejected=' No.')]                           # clean
    t = tokenize_pairs(rows, tok)
    assert t['boundary_merge'] == [True, True, False]
    # the flag means what it says: the joint tokenization differs from the concatenation
    for r, src in zip(t, rows):
        differs = [enc(tok, src['prompt'] + src[s]) != enc(tok, src['prompt']) + enc(tok, src[s]) for s in ('chosen', 'rejected')]
        assert any(differs) == r['boundary_merge']
    assert 'Ġthere' in tok.convert_ids_to_tokens(enc(tok, rows[0]['prompt'] + rows[0]['chosen']))
    assert tok.convert_ids_to_tokens(t[0]['prompt_ids'][-1:] + t[0]['chosen_ids'][:1]) == ['Ġthe', 're']
    assert t.report.ids('boundary_merge') == [0, 1] and t.report.counts['flagged/boundary_merge'] == 2
    # which side merged: pair 0 only chosen ('the'+'re'; 'the'+'m.' does not merge here), pair 1 both (trailing space)
    f = t.report.to_frame().query("reason == 'boundary_merge'").set_index('pair_id')
    assert f.field.tolist() == ['chosen', 'chosen,rejected']
    sep, joint = f.loc[0, 'detail'].removeprefix('chosen: separate ').split(' vs joint ')
    assert 'Ġthe|re' in sep and 'Ġthere' in joint.split('|')


def test_report_extends_load_report(tok):
    loaded = quiet(load_preferences, [dict(prompt='Q', chosen='', rejected='B')] + FORMAT_ROWS['explicit'])
    t = tokenize_pairs(loaded, tok, max_length=64, max_prompt_length=32)
    assert t.report.ids('empty_response') == [0]            # load drop still there
    assert t.report.n_rows == 3 and t.report.n_kept == 2
    assert loaded.report.stats == {} and 'prompt_tokens_max' in t.report.stats  # the load report is not mutated
    s = str(t.report)
    assert 'tokens (mean/max): prompt' in s and 'limit 32' in s
    assert t.report.stats['max_length'] == 64 and t.report.stats['pad_token_id'] == tok.eos_token_id


def test_no_pad_tokenizer_uses_eos(tok, tok_pad):
    assert tok.pad_token_id is None
    t = tokenize_pairs(FORMAT_ROWS['explicit'], tok)
    assert t.pad_token_id == tok.eos_token_id == pad_id(tok)
    assert any('no pad token' in n and 'EOS' in n for n in t.report.notes)
    b = PairCollator(tok)([t[0], t[1]])
    assert PairCollator(tok).pad_token_id == tok.eos_token_id
    padded = b['chosen_attention_mask'] == 0
    assert padded.any() and (b['chosen_input_ids'][padded] == tok.eos_token_id).all()
    tp = tokenize_pairs(FORMAT_ROWS['explicit'], tok_pad)
    assert tp.pad_token_id == tok_pad.pad_token_id != tok_pad.eos_token_id
    assert not any('no pad token' in n for n in tp.report.notes)
    assert PairCollator(tok_pad).pad_token_id == tok_pad.pad_token_id


# ---------------------------------------------------------------- collation

@pytest.fixture(scope='module')
def tokenized(tok):
    rows = FORMAT_ROWS['explicit'] + [dict(prompt='Where is the cat?', chosen=' It is over there, by the door.', rejected=' Gone.')]
    return tokenize_pairs(rows, tok, max_length=64, max_prompt_length=32)


def test_collator_masks_select_exactly_response_tokens(tokenized, tok):
    rows = [tokenized[i] for i in range(len(tokenized))]
    b = PairCollator(tok)(rows)
    B = len(rows)
    for s in ('chosen', 'rejected'):
        ids, att, resp = b[f'{s}_input_ids'], b[f'{s}_attention_mask'], b[f'{s}_response_mask']
        assert ids.dtype == att.dtype == resp.dtype == torch.long and ids.shape[0] == B
        for i, r in enumerate(rows):
            n_p, n_r = len(r['prompt_ids']), len(r[f'{s}_ids'])
            assert ids[i][resp[i].bool()].tolist() == r[f'{s}_ids']
            assert ids[i][att[i].bool()].tolist() == r['prompt_ids'] + r[f'{s}_ids']
            assert resp[i].tolist() == [0] * n_p + [1] * n_r + [0] * (ids.shape[1] - n_p - n_r)
            assert att[i].tolist() == [1] * (n_p + n_r) + [0] * (ids.shape[1] - n_p - n_r)
            assert (resp[i] <= att[i]).all()
    assert b['chosen_input_ids'].shape == b['rejected_input_ids'].shape  # ready for one concatenated forward
    assert b['pair_id'].tolist() == tokenized['pair_id'] and b['pair_id'].dtype == torch.long
    assert b['prompt_lengths'].tolist() == [len(r['prompt_ids']) for r in rows]
    assert set(b) == {'chosen_input_ids', 'chosen_attention_mask', 'chosen_response_mask', 'rejected_input_ids',
                      'rejected_attention_mask', 'rejected_response_mask', 'pair_id', 'prompt_lengths'}


def test_collator_options_and_inputs(tokenized, tok):
    rows = [tokenized[i] for i in range(len(tokenized))]
    b = PairCollator(tok.eos_token_id, same_length=False)(rows)
    assert b['chosen_input_ids'].shape[1] == max(len(r['prompt_ids']) + len(r['chosen_ids']) for r in rows)
    assert b['rejected_input_ids'].shape[1] == max(len(r['prompt_ids']) + len(r['rejected_ids']) for r in rows)
    b8 = PairCollator(tok, pad_to_multiple_of=8)(rows)
    assert b8['chosen_input_ids'].shape[1] % 8 == 0
    sliced = PairCollator(tok)(tokenized[:3])   # a Dataset slice (dict of lists) works too
    assert torch.equal(sliced['chosen_response_mask'], PairCollator(tok)(rows)['chosen_response_mask'])
    loader = torch.utils.data.DataLoader(tokenized, batch_size=2, collate_fn=PairCollator(tok))
    assert [x['pair_id'].tolist() for x in loader] == [[0, 1], [2]]
    with pytest.raises(PreferenceDataError, match='pad_token_id is None.*tokenizer itself'):
        PairCollator(None)
    with pytest.raises(KeyError, match="row 0 lacks \\['prompt_ids'"):
        PairCollator(0)([dict(pair_id=0, chosen_ids=[1], rejected_ids=[2])])


def test_decode_through_masks(tokenized, tok):
    b = PairCollator(tok)([tokenized[2]])
    d = decode_masked(b, tok, 0, 'chosen')
    assert d['response'] == ' It is over there, by the door.</s>'
    assert d['text'] == '<s>Where is the cat? It is over there, by the door.</s>'
    assert d['marked'] == '<s>Where is the cat?⟦ It is over there, by the door.</s>⟧'
    tt = token_table(b, tok, 0, 'rejected')
    assert tt.response.sum() == len(tokenized[2]['rejected_ids']) and list(tt.columns) == ['position', 'token_id', 'token', 'attention', 'response']
