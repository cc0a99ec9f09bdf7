"""Real tokenizer families (tests/fixtures/tokenizers: real Llama 2, Mistral and Llama 3 vocabularies; real templates of
Llama 2, Mistral, Llama 3, Qwen2.5, SmolLM2 and Gemma 2): for each, the ids of a chat pair are `apply_chat_template` of
the whole conversation and TRL 1.16 gets the same ids for the same row; a template's refusal is a named drop; with a
SentencePiece tokenizer a plain-text response is tokenized as a model generating after the prompt emits it."""
import copy, tempfile, warnings

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from dpo_nb.data import load_preferences, tokenize_pairs
from tokenizer_families import FAMILIES, load_family

trl = pytest.importorskip("trl")
u = lambda t: {"role": "user", "content": t}
a = lambda t: {"role": "assistant", "content": t}
ROWS = [dict(prompt=[u("What is the capital of France?")], chosen=[a("Paris.")], rejected=[a("Lyon, I think.")]),
        dict(prompt=[u("Hi!"), a("Hello! How can I help?"), u("Name a fruit.")], chosen=[a("An apple.")], rejected=[a("A carrot.")]),
        dict(prompt=[u("Write 2+2 in code.")], chosen=[a("```python\nprint(2 + 2)\n```")], rejected=[a("  four  ")]),
        dict(prompt=[{"role": "system", "content": "Answer in French."}, u("Thank you?")], chosen=[a("Merci !")], rejected=[a("Thanks!")])]
REFUSES_SYSTEM = {"gemma": "System role not supported", "mistral": "Conversation roles must alternate"}


def quiet(fn, *a, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*a, **kw)


def trl_ids(tok, rows):
    "The ids TRL 1.16's DPOTrainer tokenizes `rows` into (its own dataset preparation, on a tiny model of the vocab size)."
    from datasets import Dataset
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    with tempfile.TemporaryDirectory() as d:
        args = trl.DPOConfig(output_dir=d, report_to="none", use_cpu=True, max_length=None, per_device_train_batch_size=2)
        t = quiet(trl.DPOTrainer, model=model, ref_model=copy.deepcopy(model), args=args, train_dataset=Dataset.from_list(rows),
                  processing_class=tok)
    return [[r[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")] for r in t.train_dataset]


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    return request.param, load_family(request.param)


def test_chat_pair_ids_are_the_whole_conversation_and_trls(family):
    name, tok = family
    t = quiet(tokenize_pairs, ROWS, tok, max_length=None, max_prompt_length=None)
    if name in REFUSES_SYSTEM:
        assert t.report.ids("template_error") == [3] and REFUSES_SYSTEM[name] in t.report.to_frame().query("pair_id == 3").detail.iloc[0]
    else:
        assert t.report.ids("template_error") == []
    kept = [ROWS[i] for i in t["pair_id"]]
    for row, src in zip(t, kept):
        assert row["prompt_ids"] == tok.apply_chat_template(src["prompt"], add_generation_prompt=True, tokenize=True, return_dict=False)
        for s in ("chosen", "rejected"):
            assert row["prompt_ids"] + row[f"{s}_ids"] == tok.apply_chat_template(src["prompt"] + src[s], tokenize=True, return_dict=False)
        assert not row["boundary_merge"]
    ours = [[r["prompt_ids"], r["chosen_ids"], r["rejected_ids"]] for r in t]
    assert trl_ids(tok, kept) == ours
    # the BOS is the template's: there if it renders one, never added, never doubled
    rendered = tok.apply_chat_template(ROWS[0]["prompt"], add_generation_prompt=True, tokenize=False)
    if tok.bos_token_id is not None:
        assert (t[0]["prompt_ids"][0] == tok.bos_token_id) == rendered.startswith(tok.bos_token)
        assert t[0]["prompt_ids"][:2] != [tok.bos_token_id] * 2


def test_the_turn_ends_as_each_template_ends_it(family):
    name, tok = family
    t = quiet(tokenize_pairs, ROWS[:1], tok)
    end = tok.convert_ids_to_tokens(t[0]["chosen_ids"])[-2:]
    # (Mistral v0.1's template writes a space after the EOS that ends an answer: trained on, as the template renders it)
    expected = {"llama2": ["▁", "</s>"], "mistral": ["</s>", "▁▁"], "llama3": [".", "<|eot_id|>"], "qwen2.5": ["<|im_end|>", "Ċ"],
                "smollm2": ["<|im_end|>", "Ċ"], "gemma": ["<end_of_turn>", "<0x0A>"]}[name]
    assert end == expected, (name, end)


@pytest.mark.parametrize("name", ["llama2", "mistral"])
def test_sentencepiece_plain_text_response_is_what_the_model_emits_after_the_prompt(name):
    tok = load_family(name)
    q = "Question: What is the capital of France?\nAnswer:"
    rows = [dict(prompt=q, chosen=" Paris", rejected=" Lyon"), dict(prompt=q + " ", chosen="Paris", rejected="Lyon")]
    t = quiet(tokenize_pairs, rows, tok)
    eos = tok.eos_token_id
    # 1. the prompt ends at a word: the response is the tail of the whole text's ids, '▁Paris' as a model writes it;
    #    the response tokenized alone would start with a spurious '▁' (SentencePiece's marker for a text of its own)
    r = t[0]
    assert r["prompt_ids"] == tok(q)["input_ids"] and r["prompt_ids"] + r["chosen_ids"] == tok(q + " Paris")["input_ids"] + [eos]
    assert tok.convert_ids_to_tokens(r["chosen_ids"]) == ["▁Paris", "</s>"] and not r["boundary_merge"]
    assert tok.convert_ids_to_tokens(tok(" Paris", add_special_tokens=False)["input_ids"])[:2] != ["▁Paris"]
    assert trl_ids(tok, rows[:1]) == [[r["prompt_ids"], r["chosen_ids"], r["rejected_ids"]]]  # TRL agrees
    # 2. the prompt ends with a space: prompted with the prompt's own ids (its last token '▁'), the model writes 'Paris'
    #    with no marker; flagged, since the whole text would tokenize otherwise ('▁Paris')
    r = t[1]
    assert r["boundary_merge"] and t.report.ids("boundary_merge") == [1]
    assert r["prompt_ids"] == tok(q + " ")["input_ids"] and tok.convert_ids_to_tokens(r["prompt_ids"][-1:]) == ["▁"]
    toks = tok.convert_ids_to_tokens(r["chosen_ids"])
    assert toks[-1] == "</s>" and not toks[0].startswith("▁") and "".join(toks[:-1]) == "Paris"  # 'Par|is' in this vocab
    assert tok.decode(r["prompt_ids"] + r["chosen_ids"], skip_special_tokens=True) == q + " Paris"


def test_qwen_template_renders_tool_calls_and_tools():
    tok = load_family("qwen2.5")
    weather = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
    call = {"role": "assistant", "content": None,
            "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}
    rows = [dict(prompt=[u("Weather in Paris?")], chosen=[call], rejected=[a("No idea.")], tools=[weather]),
            dict(prompt=[u("Weather in Paris?"), call, {"role": "tool", "content": "21C, sunny"}], chosen=[a("Warm and sunny.")],
                 rejected=[a("Cold.")], tools=[weather])]
    t = tokenize_pairs(load_preferences(rows), tok, max_length=None, max_prompt_length=None)
    assert t["pair_id"] == [0, 1]
    assert "<tool_call>\n" in t[0]["chosen_text"] and '"name": "get_weather"' in t[0]["chosen_text"]
    assert "<tools>" in t[0]["prompt_text"] and "<tool_response>\n21C, sunny\n</tool_response>" in t[1]["prompt_text"]
    clean = lambda ms: [{k: v for k, v in m.items() if v is not None} for m in ms]
    for row, src in zip(t, rows):
        for s in ("chosen", "rejected"):
            assert row["prompt_ids"] + row[f"{s}_ids"] == tok.apply_chat_template(clean(src["prompt"] + src[s]), tools=[weather],
                                                                                  tokenize=True, return_dict=False)
    assert trl_ids(tok, [dict(r, prompt=clean(r["prompt"]), chosen=clean(r["chosen"])) for r in rows]) == \
        [[r["prompt_ids"], r["chosen_ids"], r["rejected_ids"]] for r in t]
