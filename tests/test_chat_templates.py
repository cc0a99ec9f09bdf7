"""Chat pairs as the model sees them: the ids of a pair are `apply_chat_template` of the whole conversation (no BOS or
EOS of our own), on real HH conversations the same ids and per-step losses as TRL 1.16; messages as chat APIs write
them (parts, tool calls), tools and template variables passed through (tokenize_pairs, DPOConfig, the CLI), and a
template's refusals counted, named drops in the report."""
import argparse, gzip, json, re, sys, warnings
from pathlib import Path

import pytest

from conftest import save_tiny_model, word_tokenizer
from dpo_nb.cli import main
from dpo_nb.data import DataWarning, PreferenceDataError, PreferenceTypeError, load_preferences, tokenize_pairs, train_bpe_tokenizer
from dpo_nb.report import data_report_html
from dpo_nb.train import DPOConfig, DPOTrainer, batch_rows

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import vs_trl  # noqa: E402
from tokenizer_families import load_family  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

HH = Path(__file__).resolve().parents[2] / "shared" / "data" / "anthropic-hh-rlhf" / "harmless-base-test.jsonl.gz"
# ChatML as Qwen2.5 and SmolLM2 write it (without their default system prompt): no BOS, turns end with <|im_end|>\n
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
CORPUS = ["Where is the cat? It is over there, by the door.", "Is the sky blue? Yes, it is blue today.",
          "What is the weather in Paris? It is warm and sunny.", "Say hello. Hello there! Go away."] * 5
u = lambda t: {"role": "user", "content": t}
a = lambda t: {"role": "assistant", "content": t}
sys_ = lambda t: {"role": "system", "content": t}


def chatml_tokenizer(texts=CORPUS, vocab_size=330, eos=None):
    "A BPE tokenizer whose plain-text post-processor adds <s>, with ChatML's two special tokens (and optionally its EOS)."
    tk = train_bpe_tokenizer(texts, vocab_size=vocab_size, chat_template=CHATML)
    tk.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    if eos: tk.eos_token = eos
    return tk


def whole(tk, msgs, **kw):
    return tk.apply_chat_template(msgs, tokenize=True, return_dict=False, **kw)


def quiet(fn, *a, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*a, **kw)


# ---------------------------------------------------------------- the ids are the template's, exactly

@pytest.mark.parametrize("eos", [None, "<|im_end|>"])
def test_chatml_adds_no_bos_and_keeps_the_turns_end(eos):
    # eos None: the tokenizer's EOS is </s> (dpo_nb used to end responses '<|im_end|>\n</s>');
    # eos <|im_end|>: it used to end them at <|im_end|>, dropping the template's newline
    tk = chatml_tokenizer(eos=eos)
    rows = [dict(prompt=[sys_("Be brief."), u("Where is the cat?")], chosen=[a("Over there.")], rejected=[a("Gone.")]),
            dict(prompt=[u("Is the sky blue?"), a("Yes."), u("Today?")], chosen=[a("Yes, today.")], rejected=[a("No.")])]
    t = tokenize_pairs(rows, tk)
    assert tk("x")["input_ids"][0] == tk.bos_token_id  # plain text gets a BOS from this tokenizer...
    for row, src in zip(t, rows):
        assert row["prompt_ids"] == whole(tk, src["prompt"], add_generation_prompt=True)
        assert tk.bos_token_id not in row["prompt_ids"]  # ...a chat prompt does not: the template renders none
        for s in ("chosen", "rejected"):
            assert row["prompt_ids"] + row[f"{s}_ids"] == whole(tk, src["prompt"] + src[s])
            assert tk.convert_ids_to_tokens(row[f"{s}_ids"][-2:]) == ["<|im_end|>", "Ċ"]
            assert tk.convert_ids_to_tokens(row[f"{s}_ids"]).count("</s>") == 0
            assert row[f"{s}_text"].endswith("<|im_end|>\n")
    assert any("no EOS added" in n and "'<|im_end|>\\n' x4" in n for n in t.report.notes)


def test_multi_turn_responses_follow_the_same_rule():
    tk = chatml_tokenizer()
    c = [a("Hello there!"), u("Where is the cat?"), a("Over there.")]
    r = [a("Go away."), u("Where is the cat?"), a("Gone.")]
    t = quiet(tokenize_pairs, [dict(prompt=[u("Say hello.")], chosen=c, rejected=r)], tk)
    for s, msgs in (("chosen", c), ("rejected", r)):
        assert t[0]["prompt_ids"] + t[0][f"{s}_ids"] == whole(tk, [u("Say hello.")] + msgs)
        toks = tk.convert_ids_to_tokens(t[0][f"{s}_ids"])
        assert toks.count("<|im_end|>") == 3 and toks[-2:] == ["<|im_end|>", "Ċ"]  # every turn ended as the template ends it
    assert t.report.ids("later_turns") == [0]


# ---------------------------------------------------------------- real HH conversations beside TRL 1.16

def hh_conversations(n, max_chars=1200):
    "The first `n` HH pairs as messages (transcripts split at their Human/Assistant markers), whole conversations."
    if not HH.exists(): pytest.skip(f"{HH} not present")
    turns = lambda text: [{"role": "user" if who == "Human" else "assistant", "content": body.strip()}
                          for who, body in re.findall(r"\n\n(Human|Assistant):(.*?)(?=\n\n(?:Human|Assistant):|\Z)", text, re.S)]
    out = []
    with gzip.open(HH, "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            c, r = turns(row["chosen"]), turns(row["rejected"])
            if len(c) == len(r) and c[:-1] == r[:-1] and c[-1]["role"] == "assistant" and c[-1] != r[-1] and \
                    all(m["content"] for m in c + r) and len(row["chosen"]) + len(row["rejected"]) < max_chars:
                out.append(dict(prompt=c[:-1], chosen=c[-1:], rejected=r[-1:]))
            if len(out) == n: return out
    return out


@pytest.mark.parametrize("eos", [None, "<|im_end|>"])
def test_hh_conversations_same_ids_and_step_losses_as_trl(eos):
    args = argparse.Namespace(batch_size=4, steps=3)
    n = args.batch_size * (1 + args.steps)
    pairs = hh_conversations(n)
    tk = chatml_tokenizer([m["content"] for p in pairs for m in p["prompt"] + p["chosen"] + p["rejected"]], 600, eos)
    data = quiet(tokenize_pairs, pairs, tk, max_length=None, max_prompt_length=None)
    assert len(data) == n and data["pair_id"] == list(range(n))
    for row, p in zip(data, pairs):
        assert row["prompt_ids"] + row["chosen_ids"] == whole(tk, p["prompt"] + p["chosen"])
    order = [i for s in range(1 + args.steps) for i in batch_rows(n, args.batch_size, vs_trl.SEED, s)[0]]
    pristine, dev = vs_trl.initial_model(len(tk)), vs_trl.torch.device("cpu")
    ours = vs_trl.run_tool("dpo_nb", pristine, tk, pairs, data, order, args, dev)
    trl = vs_trl.run_tool("TRL best", pristine, tk, pairs, data, order, args, dev)  # asserts TRL's ids are ours, row for row
    assert max(abs(x - y) for x, y in zip(ours["losses"], trl["losses"])) < 1e-5, (ours["losses"], trl["losses"])
    assert ours["losses"][-1] != ours["losses"][0]


@pytest.mark.parametrize("family", ["qwen2.5"])  # (test_chat_families.py checks every family's ids against TRL's)
def test_hh_conversations_on_a_real_template_same_step_losses_as_trl(family):
    args = argparse.Namespace(batch_size=2, steps=3)
    n = args.batch_size * (1 + args.steps)
    pairs, tk = hh_conversations(n, 500), load_family(family)
    data = quiet(tokenize_pairs, pairs, tk, max_length=None, max_prompt_length=None)
    assert len(data) == n
    order = [i for s in range(1 + args.steps) for i in batch_rows(n, args.batch_size, vs_trl.SEED, s)[0]]
    vs_trl.torch.manual_seed(0)  # a small model over the whole vocabulary (128k tokens)
    pristine = LlamaForCausalLM(LlamaConfig(vocab_size=len(tk), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048))
    dev = vs_trl.torch.device("cpu")
    ours = vs_trl.run_tool("dpo_nb", pristine, tk, pairs, data, order, args, dev)
    trl = vs_trl.run_tool("TRL best", pristine, tk, pairs, data, order, args, dev)  # asserts TRL's ids are ours, row for row
    assert max(abs(x - y) for x, y in zip(ours["losses"], trl["losses"])) < 1e-5, (ours["losses"], trl["losses"])


# ---------------------------------------------------------------- messages as chat APIs write them

def parts(*texts, kind="text"):
    return [{"type": kind, "text": t} if kind == "text" else {"type": kind, "url": t} for t in texts]


def test_content_parts_are_joined_and_non_text_parts_dropped_by_name():
    tk = chatml_tokenizer()
    rows = [dict(prompt=[{"role": "user", "content": parts("Where is ", "the cat?")}], chosen=[a("Over there.")], rejected=[a("Gone.")]),
            dict(prompt=[u("Where is the cat?")], chosen=[a("Over there.")], rejected=[a("Gone.")]),
            dict(prompt=[{"role": "user", "content": parts("cat.png", kind="image") + parts("What is it?")}],
                 chosen=[a("A cat.")], rejected=[a("A dog.")]),
            dict(prompt=[u("Say hello.")], chosen=[{"role": "assistant", "content": parts("clip.wav", kind="audio")}],
                 rejected=[a("Go away.")])]
    with pytest.warns(DataWarning, match=r"2 non_text_content \(pair_id 2, 3\)"):
        ds = load_preferences(rows)
    assert ds[0]["prompt"] == [u("Where is the cat?")]  # text parts joined, as templates taking parts render them
    d = ds.report.to_frame().set_index("pair_id")
    assert d.loc[2, "field"] == "prompt[0].content" and d.loc[2, "detail"] == "parts of type image"
    assert d.loc[3, "field"] == "chosen[0].content" and "audio" in d.loc[3, "detail"]
    t = quiet(tokenize_pairs, ds, tk)
    assert t[0]["prompt_ids"] == t[1]["prompt_ids"]
    with pytest.raises(PreferenceTypeError, match=r"row 0, field 'prompt\[0\].content\[1\].text'"):
        load_preferences([dict(prompt=[{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text"}]}],
                               chosen=[a("x")], rejected=[a("y")])])


# a ChatML template that renders tools and tool calls the way Qwen2.5's does (<tools> in the system turn, <tool_call>
# JSON in the assistant turn, tool results as a user turn holding <tool_response>)
TOOLS_CHATML = (
    "{% if tools %}<|im_start|>system\n# Tools\n<tools>{% for t in tools %}\n{{ t | tojson }}{% endfor %}\n</tools><|im_end|>\n{% endif %}"
    "{% for m in messages %}{% if m.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ m.content }}\n</tool_response><|im_end|>\n"
    "{% else %}<|im_start|>{{ m.role }}\n{{ m.content }}{% for c in m.tool_calls or [] %}<tool_call>\n"
    "{\"name\": \"{{ c.function.name }}\", \"arguments\": {{ c.function.arguments | tojson }}}\n</tool_call>{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}


def tool_rows():
    call = {"role": "assistant", "content": None,
            "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}
    result = {"role": "tool", "name": "get_weather", "content": "21C, sunny"}
    return [dict(prompt=[u("What is the weather in Paris?"), call, result], chosen=[a("It is warm and sunny.")],
                 rejected=[a("Go away.")], tools=[WEATHER]),
            dict(prompt=[u("What is the weather in Paris?")], chosen=[call], rejected=[a("It is sunny.")], tools=json.dumps([WEATHER]))]


def test_tool_calls_and_tools_reach_a_template_that_renders_them(tmp_path):
    tk = chatml_tokenizer()
    f = tmp_path / "tools.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in tool_rows()))
    ds = load_preferences(f)
    assert json.loads(ds[0]["tools"]) == [WEATHER] == json.loads(ds[1]["tools"])
    t = tokenize_pairs(ds, tk, chat_template=TOOLS_CHATML, max_length=None, max_prompt_length=None)
    assert t["pair_id"] == [0, 1]
    src = [dict(r, tools=[WEATHER]) for r in tool_rows()]
    for row, s in zip(t, src):
        prompt = [{k: v for k, v in m.items() if v is not None} for m in s["prompt"]]
        for side in ("chosen", "rejected"):
            resp = [{k: v for k, v in m.items() if v is not None} for m in s[side]]
            assert row["prompt_ids"] + row[f"{side}_ids"] == whole(tk, prompt + resp, chat_template=TOOLS_CHATML, tools=[WEATHER])
    assert '"name": "get_weather"' in t[1]["chosen_text"] and "<tool_response>\n21C, sunny" in t[0]["prompt_text"]
    assert '<tools>{"type": "function", "function": {"name": "get_weather"' in t[0]["prompt_text"]
    # tools for every row from tokenize_pairs, when the rows carry none
    bare = [{k: v for k, v in r.items() if k != "tools"} for r in tool_rows()]
    assert tokenize_pairs(bare, tk, chat_template=TOOLS_CHATML, tools=[WEATHER], max_length=None,
                          max_prompt_length=None)["prompt_ids"] == t["prompt_ids"]


def test_a_template_that_renders_no_tool_use_drops_those_rows_by_name():
    tk = chatml_tokenizer()  # plain CHATML: renders content only, so a tool call (content None) would vanish
    rows = tool_rows() + [dict(prompt=[u("Say hello.")], chosen=[a("Hello there!")], rejected=[a("Go away.")])]
    with pytest.warns(DataWarning, match=r"dropped 2 of 3 pairs: 2 tools_not_rendered \(pair_id 0, 1\)"):
        t = tokenize_pairs(rows, tk)
    d = t.report.to_frame().query("kind == 'drop'").set_index("pair_id")
    assert d.loc[0, "field"] == "prompt[1]" and "the call to 'get_weather'" in d.loc[0, "detail"]
    assert d.loc[1, "field"] == "chosen[0]" and "the call to 'get_weather'" in d.loc[1, "detail"]
    assert t["pair_id"] == [2]
    # a template that renders the calls but not the tools it is given
    no_tools = TOOLS_CHATML[TOOLS_CHATML.index("{% endif %}") + len("{% endif %}"):]
    with pytest.warns(DataWarning):
        t = tokenize_pairs(rows, tk, chat_template=no_tools, max_length=None, max_prompt_length=None)
    d = t.report.to_frame().query("kind == 'drop'").set_index("pair_id")
    assert list(d.field) == ["tools", "tools"] and "the tools ['get_weather']" in d.loc[0, "detail"]


# ---------------------------------------------------------------- template variables

WORDS = ["<pad>", "<bos>", "<eos>", "<unk>", "the", "film", "was", "plot", "is", "good", "bad", "very", "great", "awful",
         "<|user|>", "<|assistant|>", "<|system|>", "terse", "critic"]
# a template variable, as Qwen3's `enable_thinking` is one: here it adds a system turn to every conversation
PERSONA = ("{% if persona is defined %}<|system|> {{ persona }} <eos> {% endif %}"
           "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <eos> {% endfor %}"
           "{% if add_generation_prompt %}<|assistant|> {% endif %}")
FILM = [dict(prompt=[u(f"the {s} was")], chosen=[a(f"very {p}")], rejected=[a(q)])
        for s in ("film", "plot") for p in ("good", "great") for q in ("bad", "awful")]


def test_chat_template_kwargs_reach_the_template_from_every_entry_point(tmp_path, capsys):
    tk = word_tokenizer(WORDS)
    tk.chat_template = PERSONA
    kw = {"persona": "terse critic"}
    plain, given = tokenize_pairs(FILM, tk), tokenize_pairs(FILM, tk, chat_template_kwargs=kw)
    assert given[0]["prompt_text"] == "<|system|> terse critic <eos> <|user|> the film was <eos> <|assistant|> "
    assert plain[0]["prompt_text"] == "<|user|> the film was <eos> <|assistant|> "
    for row, src in zip(given, FILM):
        assert row["prompt_ids"] + row["chosen_ids"] == whole(tk, src["prompt"] + src["chosen"], **kw)
    # a row's own column adds to them, as TRL reads it
    per_row = tokenize_pairs([dict(r, chat_template_kwargs=kw) for r in FILM], tk)
    assert per_row["prompt_ids"] == given["prompt_ids"]
    with pytest.raises(ValueError, match=r"\['add_generation_prompt'\] are apply_chat_template's own arguments"):
        tokenize_pairs(FILM, tk, chat_template_kwargs={"add_generation_prompt": False})
    # DPOConfig: the trainer tokenizes with them
    model = vs_trl.initial_model(len(tk))
    tr = quiet(DPOTrainer, model, tk, FILM, DPOConfig(batch_size=2, max_steps=1, device="cpu", progress=False, chat_template_kwargs=kw))
    assert tr.train_data["prompt_ids"] == given["prompt_ids"]
    # the CLI's --chat-template-kwargs
    folder = tmp_path / "model"
    save_tiny_model(folder, WORDS)
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**cfg, "chat_template": PERSONA}))
    data = tmp_path / "film.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in FILM))
    out = tmp_path / "run"
    assert quiet(main, ["train", "--model", str(folder), "--data", str(data), "--out", str(out), "--max-steps", "1",
                        "--batch-size", "2", "--eval-fraction", "0", "--chat-template-kwargs", json.dumps(kw), "--progress", "false"]) == 0
    saved = json.loads((out / "checkpoint" / "config.json").read_text())
    assert saved.get("chat_template_kwargs", saved.get("config", {}).get("chat_template_kwargs")) == kw
    with pytest.raises(SystemExit) as e: main(["train", "--model", str(folder), "--data", str(data), "--chat-template-kwargs", "[1]"])
    assert e.value.code == 2
    assert "expected a JSON object" in capsys.readouterr().err


# ---------------------------------------------------------------- the report counts what the template refused

STRICT = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
          "{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
          "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
          "<|{{ m['role'] }}|> {{ m['content'] }} <eos> {% endfor %}{% if add_generation_prompt %}<|assistant|> {% endif %}")


def test_a_mixed_dataset_counts_template_errors_and_non_text_rows_in_the_report():
    tk = word_tokenizer(WORDS)
    tk.chat_template = STRICT
    rows = FILM[:4] + [
        dict(prompt=[sys_("terse critic"), u("the film was")], chosen=[a("good")], rejected=[a("bad")]),          # 4: system turn
        dict(prompt=[u("the film"), u("was")], chosen=[a("good")], rejected=[a("bad")]),                          # 5: two user turns
        dict(prompt=[{"role": "user", "content": parts("film.png", kind="image")}], chosen=[a("good")], rejected=[a("bad")]),  # 6
        dict(prompt=[{"role": "narrator", "content": "the plot"}], chosen=[a("good")], rejected=[a("bad")]),      # 7: unknown role
    ]
    with pytest.warns(DataWarning):
        ds = load_preferences(rows)
    r = ds.report
    assert r.ids("non_text_content") == [6]
    assert r.ids("not_alternating", "flag") == [5] and r.ids("unknown_role", "flag") == [7]
    f = r.to_frame().set_index(["pair_id", "reason"])
    assert f.loc[(5, "not_alternating"), "field"] == "prompt[1]" and "user after user" in f.loc[(5, "not_alternating"), "detail"]
    with pytest.warns(DataWarning, match=r"3 template_error \(pair_id 4, 5, 7\)"):
        t = tokenize_pairs(ds, tk)
    assert t["pair_id"] == [0, 1, 2, 3]
    c = t.report.counts
    assert (c["rows"], c["kept"], c["dropped/template_error"], c["dropped/non_text_content"]) == (8, 4, 3, 1)
    d = t.report.to_frame().query("kind == 'drop'").set_index("pair_id")
    assert "System role not supported" in d.loc[4, "detail"] and "must alternate" in d.loc[5, "detail"]
    assert d.loc[4, "detail"].startswith("prompt [system, user], chosen [assistant], rejected [assistant]")
    html = data_report_html(t.report)
    assert "template_error" in html and "non_text_content" in html and "System role not supported" in html


# ---------------------------------------------------------------- messy messages, as a review found them

def test_other_text_keys_reach_the_template():
    tk = chatml_tokenizer()
    think = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.reasoning_content %}<think>{{ m.reasoning_content }}</think>"
             "{% endif %}{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    row = dict(prompt=[u("Is the sky blue?")], chosen=[{**a("Yes."), "reasoning_content": "It is day."}],
               rejected=[{**a("Yes."), "reasoning_content": "No idea."}])
    t = tokenize_pairs([row], tk, chat_template=think)  # the same answer, told apart by its reasoning only: not 'identical'
    assert t[0]["prompt_ids"] + t[0]["chosen_ids"] == whole(tk, row["prompt"] + row["chosen"], chat_template=think)
    assert "<think>It is day.</think>" in t[0]["chosen_text"]
    with pytest.raises(PreferenceTypeError, match=r"field 'chosen\[0\].score': message keys beside role, content and tool_calls must be text"):
        load_preferences([dict(row, chosen=[{**a("Yes."), "score": 3}])])


def test_a_template_that_checks_turns_without_tool_calls_is_not_crashed_by_the_tool_check():
    # (Mistral v0.3 / Nemo style: alternation is checked over the messages without tool calls; leaving a call out to see
    # whether it is rendered makes that check raise, which must not abort tokenization)
    tmpl = ('{%- for m in messages | rejectattr("role", "equalto", "tool") | selectattr("tool_calls", "undefined") %}'
            '{%- if (m.role == "user") != (loop.index0 % 2 == 0) %}{{ raise_exception("roles must alternate") }}{% endif %}{% endfor %}'
            '{%- for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}{% if m.tool_calls is defined %}{{ m.tool_calls | tojson }}'
            '{% endif %}<|im_end|>\n{% endfor %}{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}')
    call = {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "weather", "arguments": {}}}]}
    rows = [dict(prompt=[u("Weather?"), call, {"role": "tool", "content": "sunny"}], chosen=[a("Sunny.")], rejected=[a("Cold.")])]
    t = tokenize_pairs(rows, chatml_tokenizer(), chat_template=tmpl, max_length=None, max_prompt_length=None)
    assert t["pair_id"] == [0] and '"name": "weather"' in t[0]["prompt_text"]


def test_tool_call_arguments_as_text_become_a_dict_and_functions_become_schemas():
    def weather(city: str):
        """Weather in a city.

        Args:
            city: the city
        """
    call = {"role": "assistant", "content": None,
            "tool_calls": [{"type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}]}
    ds = load_preferences([dict(prompt=[u("Weather in Paris?")], chosen=[call], rejected=[a("No idea.")], tools=[weather])])
    assert json.loads(ds[0]["chosen"][0]["tool_calls"])[0]["function"]["arguments"] == {"city": "Paris"}
    assert json.loads(ds[0]["tools"])[0]["function"]["name"] == "weather"
    with pytest.raises(PreferenceTypeError, match=r"row 0, field 'chat_template_kwargs'"):
        load_preferences([dict(prompt=[u("Q")], chosen=[a("A")], rejected=[a("B")], chat_template_kwargs={"x": {1}})])
    with pytest.raises(PreferenceTypeError, match=r"row 0, field 'chat_template_kwargs'.*own arguments"):
        load_preferences([dict(prompt=[u("Q")], chosen=[a("A")], rejected=[a("B")], chat_template_kwargs={"tools": []})])
    with pytest.raises(ValueError, match=r"\['messages'\] are apply_chat_template's own arguments"):
        tokenize_pairs([dict(prompt=[u("Q")], chosen=[a("A")], rejected=[a("B")])], chatml_tokenizer(), chat_template_kwargs={"messages": 1})


def test_repeats_count_tools_and_a_model_role_is_an_assistant():
    base = dict(prompt=[u("Weather?")], chosen=[a("Sunny.")], rejected=[a("Cold.")])
    tools = lambda name: [{"type": "function", "function": {"name": name, "parameters": {"type": "object", "properties": {}}}}]
    ds = load_preferences([dict(base, tools=tools("weather")), dict(base, tools=tools("search")), dict(base, tools=tools("search"))],
                          duplicates="drop", warn=False)
    assert ds["pair_id"] == [0, 1] and ds.report.ids("duplicate") == [2]
    gemini = load_preferences([dict(chosen=[u("Hi"), {"role": "model", "content": "Hello"}],
                                    rejected=[u("Hi"), {"role": "model", "content": "Go"}], prompt=[])])
    assert gemini[0]["prompt"] == [u("Hi")] and gemini[0]["chosen"] == [a("Hello")] and not gemini.report.issues
    parts = load_preferences([dict(prompt=[{"role": "user", "content": [{"text": "Hi"}]}], chosen=[a("A")], rejected=[a("B")])])
    assert parts[0]["prompt"] == [u("Hi")]  # a part with text and no type is text


def test_a_response_the_template_renders_nothing_for_or_only_special_tokens_is_dropped():
    tk = chatml_tokenizer()
    users_only = ("{% for m in messages %}{% if m.role == 'user' %}<|im_start|>user\n{{ m.content }}<|im_end|>\n{% endif %}{% endfor %}"
                  "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    rows = [dict(prompt=[u("Hi")], chosen=[a("Hello")], rejected=[a("Go")]),
            dict(prompt=[u("Hi")], chosen=[a("<|im_end|>")], rejected=[a("Go away.")])]
    with pytest.raises(PreferenceDataError, match="dropped all 1 pairs") as ei:
        tokenize_pairs(rows[:1], tk, chat_template=users_only, warn=False)
    assert [(i.reason, i.field, i.detail) for i in ei.value.report.issues] == [("empty_response", "chosen", "the chat template renders nothing for it")]
    t = quiet(tokenize_pairs, rows, tk)
    d = t.report.to_frame().query("kind == 'drop'").set_index("pair_id")
    assert list(d.index) == [1] and d.loc[1, "reason"] == "empty_response" and "only special tokens" in d.loc[1, "detail"]


def test_tools_or_template_variables_for_plain_text_are_refused_or_noted():
    tk = chatml_tokenizer()
    rows = [dict(prompt="Where is the cat?", chosen=" Over there.", rejected=" Gone.")]
    for kw in (dict(tools=[WEATHER]), dict(chat_template_kwargs={"enable_thinking": False})):
        with pytest.raises(ValueError, match="apply to conversational pairs; these pairs are plain text"):
            tokenize_pairs(rows, tk, **kw)
    ds = load_preferences([dict(rows[0], tools=[WEATHER])])
    assert any("the 'tools' column is ignored: these pairs are plain text" in n for n in ds.report.notes)


def test_left_truncation_keeps_a_bos_but_not_a_turn_opener_standing_in_for_one():
    from tokenizer_families import load_family
    tk = load_family("smollm2")  # bos_token is <|im_start|>, which also opens every turn
    row = dict(prompt=[u("Where is the cat? " * 20)], chosen=[a("Over there.")], rejected=[a("Gone.")])
    t = quiet(tokenize_pairs, [row], tk, max_length=64, max_prompt_length=16)
    full = whole(tk, row["prompt"], add_generation_prompt=True)
    assert t[0]["prompt_ids"] == full[-16:]  # cut from the left, no dangling <|im_start|> kept in front
    l3 = load_family("llama3")  # a real BOS, rendered once by the template: kept
    t = quiet(tokenize_pairs, [row], l3, max_length=64, max_prompt_length=16)
    full = whole(l3, row["prompt"], add_generation_prompt=True)
    assert t[0]["prompt_ids"] == full[:1] + full[-15:] and full[0] == l3.bos_token_id


def test_a_run_without_its_data_rescoring_a_chat_pair_uses_the_training_ids():
    # (a History holds each pair's texts: for chat data, the template's rendering, which must not gain a BOS or an EOS
    # when a widget tokenizes it again to score a pair's tokens)
    from dpo_nb.widgets import Run
    tk = word_tokenizer(WORDS)
    tk.chat_template = PERSONA
    model = vs_trl.initial_model(len(tk))
    tr = quiet(DPOTrainer, model, tk, FILM, DPOConfig(batch_size=2, max_steps=1, device="cpu", progress=False, kl_every=0))
    quiet(tr.fit)
    run = Run(tr.history, model=tr.model, tokenizer=tk)  # no data: pairs are tokenized from the stored texts
    for i, pid in enumerate(tr.train_data["pair_id"][:3]):
        t = tr.history.text(pid, "train")
        row = run.tokenize(t["prompt"], t["chosen"], t["rejected"], pid, rendered=True)[0]
        assert [row[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")] == \
            [tr.train_data[i][k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")]
        scored = run.pair_tokens("train", pid)
        assert scored[scored.side == "chosen"].token_id.tolist() == tr.train_data[i]["chosen_ids"]
        assert scored[scored.side == "prompt"].token_id.tolist() == tr.train_data[i]["prompt_ids"]
