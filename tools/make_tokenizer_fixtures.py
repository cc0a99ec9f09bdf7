"""Build the offline tokenizer fixtures in `tests/fixtures/tokenizers/<family>/` from real vocabularies on npm.

No model or tokenizer can be downloaded from the Hugging Face Hub where the tests run, but three npm packages carry
the real vocabularies and merge lists of three tokenizer families, baked into their JavaScript:

| npm package (pinned)          | carries                                                       | family here |
| ----------------------------- | ------------------------------------------------------------- | ----------- |
| `llama-tokenizer-js@1.2.2`    | Llama 1/2 SentencePiece-BPE vocab (32000) + 61249 merges      | `llama2`    |
| `mistral-tokenizer-js@1.0.0`  | Mistral 7B v0.1 SentencePiece-BPE vocab (32000) + 58980 merges| `mistral`   |
| `llama3-tokenizer-js@1.2.0`   | Llama 3 byte-level BPE vocab (128000) + 280147 merges          | `llama3`    |

Both llama ports are by belladore.ai (github.com/belladoreai/llama-tokenizer, .../llama3-tokenizer-js), the Mistral
one by imoneoi (github.com/imoneoi/mistral-tokenizer, a port of the first); each ships or quotes in its README the
`data-conversion.py` that extracted the data from the model's own `tokenizer.json` (`model.vocab` in id order,
`model.merges` in rank order). The node script re-reads the packages' decoded tables (`vocabById`, `merges`), so
nothing depends on their compression formats.

What this script does:

1. `npm install --prefix <tmpdir>` of the pinned versions (or use `--node-modules DIR`, an existing install whose
   package.json versions must equal the pins);
2. runs `tools/tokenizer_fixtures.mjs`, which dumps each package's vocab and merges and encodes the fixed corpus
   `tools/tokenizer_corpus.json` with each package's OWN encoder (llama2/mistral: `encode(text, true, true)` = BOS +
   SentencePiece dummy prefix; llama3: `encode(text, {bos: true, eos: false})`);
3. writes Hugging Face tokenizer folders (`tokenizer.json` or `tokenizer.json.gz`, `tokenizer_config.json`,
   `special_tokens_map.json`) laid out like the real models' files, plus `expected_ids.json` (corpus + the JS ids)
   for the three real families. `tests/tokenizer_families.py` unpacks them; `tests/test_tokenizer_families.py` checks
   them (HF ids == JS ids for every corpus string, decode round trip, chat templates, template errors).

Families and what is real (details in tests/fixtures/tokenizers/README.md):

- `llama2`  real vocab/merges, real tokenizer.json pipeline of meta-llama/Llama-2-7b-chat-hf (normalizer
            Prepend("▁") + Replace(" ", "▁"), no pre-tokenizer, byte fallback, decoder Replace/ByteFallback/Fuse/Strip,
            post-processor `<s> $A`), real chat template.
- `mistral` real vocab/merges of Mistral-7B-v0.1, same pipeline layout as Llama 2 (as the real file), chat template of
            mistralai/Mistral-7B-Instruct-v0.1 (the original one, `eos_token + ' '` after answers).
- `llama3`  real vocab/merges of Meta-Llama-3-8B-Instruct, real Split regex + ByteLevel, `ignore_merges`, the 256
            special tokens with their Llama 3.0 names, post-processor adding `<|begin_of_text|>`, real chat template.
- `qwen2.5` STAND-IN VOCAB: the Llama 3 vocab/merges (Qwen's are not on npm) with Qwen2.5's own pipeline (NFC, digit-by-
            digit split regex, ByteLevel, no BOS), Qwen2.5's 22 added tokens (ids 128000.. instead of 151643..), real
            Qwen2.5-Instruct chat template and special-token settings.
- `smollm2` STAND-IN VOCAB: Llama 3 vocab/merges with SmolLM2's pipeline (Digits + ByteLevel), its 17 special tokens
            (ids 128000.. instead of 0..16), real SmolLM2-Instruct chat template and special-token settings.
- `gemma`   STAND-IN VOCAB: Llama 2 vocab/merges with Gemma's pipeline (Replace(" ", "▁"), no dummy prefix, byte
            fallback, `<bos>` added), Gemma's special tokens appended (ids 32000..), real gemma-2-it chat template.

Deviation: `tokenizer_class` is `PreTrainedTokenizerFast` for llama2/mistral (real: LlamaTokenizer) and smollm2
(real: GPT2Tokenizer), because transformers 5 rebuilds those classes' pipelines from code instead of reading
tokenizer.json (LlamaTokenizer's Metaspace drops the dummy prefix before a leading space; GPT2Tokenizer drops SmolLM2's
digit split). Everything else in the configs is as the real files have it.

Storage: a tokenizer.json over 1 MB is stored gzipped (`tokenizer.json.gz`, mtime 0 so rebuilds are byte-identical).
A stand-in family stores `tokenizer.shared.json`: its whole tokenizer.json except `model.vocab`/`model.merges`, which
`load_family` takes from the family named in `"vocab_from"` -- so the Llama 3 vocab is stored once, not three times.

Regenerate (network for npm only; nothing from the Hub):

    cd /work/main && . .venv/bin/activate
    python tools/make_tokenizer_fixtures.py            # npm install of the pins into a temp dir
    python tools/make_tokenizer_fixtures.py --node-modules /tmp/npmtok/node_modules   # reuse an install
    python -m pytest tests/test_tokenizer_families.py -q
"""
from __future__ import annotations

import argparse, gzip, json, subprocess, sys, tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "tokenizers"
NODE_SCRIPT = ROOT / "tools" / "tokenizer_fixtures.mjs"
CORPUS = ROOT / "tools" / "tokenizer_corpus.json"
PINS = {"llama-tokenizer-js": "1.2.2", "mistral-tokenizer-js": "1.0.0", "llama3-tokenizer-js": "1.2.0"}
PACKAGE_OF = {"llama2": "llama-tokenizer-js", "mistral": "mistral-tokenizer-js", "llama3": "llama3-tokenizer-js"}
ENCODE_CALL = {"llama2": "llamaTokenizer.encode(text, true, true)  // add_bos_token, add_preceding_space",
               "mistral": "mistralTokenizer.encode(text, true, true)  // add_bos_token, add_preceding_space",
               "llama3": "llama3Tokenizer.encode(text, {bos: true, eos: false})"}
GZIP_OVER = 1_000_000  # bytes of tokenizer.json above which it is stored gzipped
BIG = 1000000000000000019884624838656  # model_max_length the real configs carry (int(1e30))

# ---------------------------------------------------------------------------------------------------------------
# Chat templates, character for character as the models' tokenizer_config.json has them (after JSON decoding).
# Llama 2 writes '\\n' in its JSON, so the template holds a backslash-n inside Jinja string literals (Jinja turns it
# into a newline); the others write "\n" in JSON, i.e. a real newline character inside the literals.

LLAMA2_CHAT_TEMPLATE = (  # meta-llama/Llama-2-7b-chat-hf tokenizer_config.json
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)

MISTRAL_CHAT_TEMPLATE = (  # mistralai/Mistral-7B-Instruct-v0.1 tokenizer_config.json (the original, 2023 template)
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token + ' ' }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)

LLAMA3_CHAT_TEMPLATE = (  # meta-llama/Meta-Llama-3-8B-Instruct tokenizer_config.json
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

QWEN25_CHAT_TEMPLATE = """\
{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided \
with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within \
<tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": \
<args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" \
and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""  # Qwen/Qwen2.5-7B-Instruct (and -0.5B/-1.5B/-3B/-14B...) tokenizer_config.json

SMOLLM2_CHAT_TEMPLATE = (  # HuggingFaceTB/SmolLM2-1.7B-Instruct (and -360M/-135M-Instruct) tokenizer_config.json
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

GEMMA2_CHAT_TEMPLATE = (  # google/gemma-2-2b-it / -9b-it / -27b-it tokenizer_config.json
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)

# ---------------------------------------------------------------------------------------------------------------
# tokenizer.json pieces

LLAMA3_SPLIT_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                      r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                     r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def added(id_, content, special=True, normalized=False):
    return {"id": id_, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": normalized, "special": special}


def template(bos, bos_id):
    "TemplateProcessing that prepends `bos` (id `bos_id`) to each sequence, as the real Llama/Gemma files do."
    tok = lambda t: {"SpecialToken": {"id": bos, "type_id": t}}
    seq = lambda s, t: {"Sequence": {"id": s, "type_id": t}}
    return {"type": "TemplateProcessing", "single": [tok(0), seq("A", 0)], "pair": [tok(0), seq("A", 0), tok(1), seq("B", 1)],
            "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}}}


def bpe(vocab, merges, **kw):
    m = {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None, "end_of_word_suffix": None,
         "fuse_unk": False, "byte_fallback": False}
    m.update(kw)
    m["vocab"] = {t: i for i, t in enumerate(vocab)}
    m["merges"] = [f"{a} {b}" for a, b in merges]  # the string form the real files use; no token holds a space
    return m


SPM_DECODER = {"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                                                {"type": "ByteFallback"}, {"type": "Fuse"},
                                                {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
SPM_NORMALIZER = {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"},
                                                      {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}
BYTELEVEL = lambda **kw: {"type": "ByteLevel", "add_prefix_space": kw.get("add_prefix_space", False),
                          "trim_offsets": kw.get("trim_offsets", True), "use_regex": kw.get("use_regex", True)}


def spm_tokenizer_json(vocab, merges):
    "The layout of meta-llama/Llama-2-7b-chat-hf's and mistralai/Mistral-7B-Instruct-v0.1's tokenizer.json."
    return {"version": "1.0", "truncation": None, "padding": None,
            "added_tokens": [added(0, "<unk>"), added(1, "<s>"), added(2, "</s>")],
            "normalizer": SPM_NORMALIZER, "pre_tokenizer": None, "post_processor": template("<s>", 1),
            "decoder": SPM_DECODER, "model": bpe(vocab, merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True)}


def llama3_special_tokens():
    "The 256 special tokens of Meta-Llama-3-8B-Instruct (Llama 3.0 names; 3.1 renamed 128004/128008/128010)."
    names = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
             "<|reserved_special_token_2|>", "<|reserved_special_token_3|>", "<|start_header_id|>", "<|end_header_id|>",
             "<|reserved_special_token_4|>", "<|eot_id|>"]
    names += [f"<|reserved_special_token_{i}|>" for i in range(5, 251)]
    assert len(names) == 256
    return names


def llama3_tokenizer_json(vocab, merges):
    "The layout of meta-llama/Meta-Llama-3-8B-Instruct's tokenizer.json."
    specials = llama3_special_tokens()
    return {"version": "1.0", "truncation": None, "padding": None,
            "added_tokens": [added(128000 + i, t) for i, t in enumerate(specials)],
            "normalizer": None,
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT_REGEX}, "behavior": "Isolated", "invert": False},
                BYTELEVEL(add_prefix_space=False, trim_offsets=True, use_regex=False)]},
            "post_processor": {"type": "Sequence", "processors": [
                BYTELEVEL(add_prefix_space=True, trim_offsets=False, use_regex=True),
                template("<|begin_of_text|>", 128000)]},
            "decoder": BYTELEVEL(add_prefix_space=True, trim_offsets=True, use_regex=True),
            "model": bpe(vocab, merges, ignore_merges=True)}


# Qwen2.5's added tokens in their real order (real ids 151643..151664; here 128000..128021) and `special` flags.
QWEN25_ADDED = [("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True), ("<|object_ref_start|>", True),
                ("<|object_ref_end|>", True), ("<|box_start|>", True), ("<|box_end|>", True), ("<|quad_start|>", True),
                ("<|quad_end|>", True), ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
                ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False), ("</tool_call>", False),
                ("<|fim_prefix|>", False), ("<|fim_middle|>", False), ("<|fim_suffix|>", False), ("<|fim_pad|>", False),
                ("<|repo_name|>", False), ("<|file_sep|>", False)]

# SmolLM2's 17 special tokens in their real order (real ids 0..16; here 128000..128016).
SMOLLM2_ADDED = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<repo_name>", "<reponame>", "<file_sep>", "<filename>",
                 "<gh_stars>", "<issue_start>", "<issue_comment>", "<issue_closed>", "<jupyter_start>",
                 "<jupyter_text>", "<jupyter_code>", "<jupyter_output>", "<jupyter_script>", "<empty_output>"]

# Gemma's special tokens (real ids <pad> 0, <eos> 1, <bos> 2, <unk> 3, <mask> 4, <start_of_turn> 106,
# <end_of_turn> 107); the stand-in keeps the Llama 2 <unk> (id 0) and appends the others at 32000..
GEMMA_ADDED = ["<pad>", "<eos>", "<bos>", "<mask>", "<start_of_turn>", "<end_of_turn>"]


def qwen25_shared():
    n = 128000
    return {"vocab_from": "llama3", "tokenizer": {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [added(n + i, t, special=s) for i, (t, s) in enumerate(QWEN25_ADDED)],
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN2_SPLIT_REGEX}, "behavior": "Isolated", "invert": False},
            BYTELEVEL(add_prefix_space=False, trim_offsets=False, use_regex=False)]},
        "post_processor": BYTELEVEL(add_prefix_space=False, trim_offsets=False, use_regex=False),
        "decoder": BYTELEVEL(add_prefix_space=False, trim_offsets=False, use_regex=False),
        "model": {**bpe([], []), "continuing_subword_prefix": "", "end_of_word_suffix": "", "ignore_merges": False,
                  "vocab": None, "merges": None}}}


def smollm2_shared():
    n = 128000
    return {"vocab_from": "llama3", "tokenizer": {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [added(n + i, t) for i, t in enumerate(SMOLLM2_ADDED)],
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True}, BYTELEVEL(add_prefix_space=False, use_regex=True)]},
        "post_processor": BYTELEVEL(add_prefix_space=True, trim_offsets=False, use_regex=True),
        "decoder": BYTELEVEL(add_prefix_space=True, trim_offsets=True, use_regex=True),
        "model": {**bpe([], []), "continuing_subword_prefix": "", "end_of_word_suffix": "", "vocab": None,
                  "merges": None}}}


def gemma_shared():
    n = 32000
    return {"vocab_from": "llama2", "tokenizer": {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [added(0, "<unk>")] + [added(n + i, t) for i, t in enumerate(GEMMA_ADDED)],
        "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
        "pre_tokenizer": None,
        "post_processor": template("<bos>", n + GEMMA_ADDED.index("<bos>")),
        "decoder": {"type": "Sequence", "decoders": SPM_DECODER["decoders"][:3]},
        "model": {**bpe([], []), "unk_token": "<unk>", "fuse_unk": True, "byte_fallback": True, "vocab": None,
                  "merges": None}}}


# ---------------------------------------------------------------------------------------------------------------
# tokenizer_config.json / special_tokens_map.json

def decoder_entry(content, special=True, normalized=False):
    return {"content": content, "lstrip": False, "normalized": normalized, "rstrip": False, "single_word": False,
            "special": special}


def token_map(content):
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}


def configs():
    "tokenizer_config.json and special_tokens_map.json of each family (keys as in the real files, sorted)."
    spm_decoder = {"0": decoder_entry("<unk>"), "1": decoder_entry("<s>"), "2": decoder_entry("</s>")}
    spm_map = {"bos_token": token_map("<s>"), "eos_token": token_map("</s>"), "unk_token": token_map("<unk>")}
    # tokenizer_class: the real files say LlamaTokenizer; transformers 5 then rebuilds the pipeline with a Metaspace
    # pre-tokenizer that skips the dummy prefix before a leading space (" grabbed" -> "▁grabbed", where SentencePiece
    # and the real tokenizer.json give "▁▁grabbed"). PreTrainedTokenizerFast loads the real tokenizer.json as it is.
    llama2 = {"add_bos_token": True, "add_eos_token": False, "added_tokens_decoder": spm_decoder, "bos_token": "<s>",
              "chat_template": LLAMA2_CHAT_TEMPLATE, "clean_up_tokenization_spaces": False, "eos_token": "</s>",
              "legacy": False, "model_max_length": BIG, "pad_token": None, "padding_side": "right",
              "sp_model_kwargs": {}, "tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "<unk>",
              "use_default_system_prompt": False}
    mistral = {"add_bos_token": True, "add_eos_token": False, "added_tokens_decoder": spm_decoder,
               "additional_special_tokens": [], "bos_token": "<s>", "chat_template": MISTRAL_CHAT_TEMPLATE,
               "clean_up_tokenization_spaces": False, "eos_token": "</s>", "legacy": True, "model_max_length": BIG,
               "pad_token": None, "sp_model_kwargs": {}, "spaces_between_special_tokens": False,
               "tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "<unk>", "use_default_system_prompt": False}
    l3 = llama3_special_tokens()
    llama3 = {"added_tokens_decoder": {str(128000 + i): decoder_entry(t) for i, t in enumerate(l3)},
              "bos_token": "<|begin_of_text|>", "chat_template": LLAMA3_CHAT_TEMPLATE,
              "clean_up_tokenization_spaces": True, "eos_token": "<|eot_id|>",
              "model_input_names": ["input_ids", "attention_mask"], "model_max_length": BIG,
              "tokenizer_class": "PreTrainedTokenizerFast"}
    qwen_extra = [t for t, s in QWEN25_ADDED[1:] if s]
    qwen = {"add_bos_token": False, "add_prefix_space": False,
            "added_tokens_decoder": {str(128000 + i): decoder_entry(t, special=s) for i, (t, s) in enumerate(QWEN25_ADDED)},
            "additional_special_tokens": qwen_extra, "bos_token": None, "chat_template": QWEN25_CHAT_TEMPLATE,
            "clean_up_tokenization_spaces": False, "eos_token": "<|im_end|>", "errors": "replace",
            "model_max_length": 131072, "pad_token": "<|endoftext|>", "split_special_tokens": False,
            "tokenizer_class": "Qwen2Tokenizer", "unk_token": None}
    # SmolLM2's real class is GPT2Tokenizer, which transformers 5 rebuilds with a plain ByteLevel pre-tokenizer,
    # dropping the Digits(individual_digits) step of the real tokenizer.json; PreTrainedTokenizerFast keeps it.
    smol = {"add_prefix_space": False,
            "added_tokens_decoder": {str(128000 + i): decoder_entry(t) for i, t in enumerate(SMOLLM2_ADDED)},
            "additional_special_tokens": ["<|im_start|>", "<|im_end|>"], "bos_token": "<|im_start|>",
            "chat_template": SMOLLM2_CHAT_TEMPLATE, "clean_up_tokenization_spaces": False, "eos_token": "<|im_end|>",
            "model_max_length": 8192, "pad_token": "<|im_end|>", "tokenizer_class": "PreTrainedTokenizerFast",
            "unk_token": "<|endoftext|>"}
    gemma_dec = {"0": decoder_entry("<unk>")}
    gemma_dec.update({str(32000 + i): decoder_entry(t) for i, t in enumerate(GEMMA_ADDED)})
    gemma = {"add_bos_token": True, "add_eos_token": False, "added_tokens_decoder": gemma_dec,
             "additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"], "bos_token": "<bos>",
             "chat_template": GEMMA2_CHAT_TEMPLATE, "clean_up_tokenization_spaces": False, "eos_token": "<eos>",
             "model_max_length": BIG, "pad_token": "<pad>", "sp_model_kwargs": {}, "spaces_between_special_tokens": False,
             "tokenizer_class": "GemmaTokenizer", "unk_token": "<unk>", "use_default_system_prompt": False}
    maps = {"llama2": spm_map, "mistral": spm_map,
            "llama3": {"bos_token": token_map("<|begin_of_text|>"), "eos_token": token_map("<|eot_id|>")},
            "qwen2.5": {"additional_special_tokens": qwen_extra, "eos_token": token_map("<|im_end|>"),
                        "pad_token": token_map("<|endoftext|>")},
            "smollm2": {"additional_special_tokens": ["<|im_start|>", "<|im_end|>"], "bos_token": token_map("<|im_start|>"),
                        "eos_token": token_map("<|im_end|>"), "pad_token": token_map("<|im_end|>"),
                        "unk_token": token_map("<|endoftext|>")},
            "gemma": {"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"], "bos_token": token_map("<bos>"),
                      "eos_token": token_map("<eos>"), "pad_token": token_map("<pad>"), "unk_token": token_map("<unk>")}}
    cfgs = {"llama2": llama2, "mistral": mistral, "llama3": llama3, "qwen2.5": qwen, "smollm2": smol, "gemma": gemma}
    return cfgs, maps


# ---------------------------------------------------------------------------------------------------------------

def write_json(path: Path, obj, compact=False):
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":")) if compact else \
        json.dumps(obj, ensure_ascii=False, indent=2)
    path.write_text(text + "\n", encoding="utf-8")


def write_expected(path: Path, fam: str, corpus: list[str], ids: list[list[int]]):
    "expected_ids.json: what the JS package's own encoder gives for each corpus string, one case a line."
    head = {"source": f"npm {PACKAGE_OF[fam]}@{PINS[PACKAGE_OF[fam]]}", "encode_call": ENCODE_CALL[fam],
            "hf_equivalent": "tokenizer(text).input_ids, i.e. add_special_tokens=True: BOS first, no EOS"}
    lines = [json.dumps({"text": t, "ids": i}, ensure_ascii=False, separators=(",", ":")) for t, i in zip(corpus, ids)]
    body = ",\n".join("    " + l for l in lines)
    text = json.dumps(head, ensure_ascii=False, indent=2)[:-2] + ',\n  "cases": [\n' + body + "\n  ]\n}\n"
    json.loads(text)
    path.write_text(text, encoding="utf-8")


def clear_tokenizer(folder: Path):
    for old in ("tokenizer.json", "tokenizer.json.gz", "tokenizer.shared.json"):
        (folder / old).unlink(missing_ok=True)


def write_tokenizer(folder: Path, tok: dict):
    "tokenizer.json, or tokenizer.json.gz when big (compact JSON, gzip mtime 0: the same bytes on every rebuild)."
    clear_tokenizer(folder)
    data = (json.dumps(tok, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
    if len(data) > GZIP_OVER:
        (folder / "tokenizer.json.gz").write_bytes(gzip.compress(data, compresslevel=9, mtime=0))
    else:
        (folder / "tokenizer.json").write_bytes(data)


def npm_install(tmp: Path) -> Path:
    specs = [f"{p}@{v}" for p, v in PINS.items()]
    subprocess.run(["npm", "install", "--prefix", str(tmp), "--no-save", "--no-audit", "--no-fund", "--ignore-scripts",
                    *specs], check=True)
    return tmp / "node_modules"


def check_pins(node_modules: Path):
    for pkg, ver in PINS.items():
        got = json.loads((node_modules / pkg / "package.json").read_text())["version"]
        if got != ver:
            sys.exit(f"{node_modules / pkg} is version {got}, the pin is {ver}; install the pins or drop --node-modules")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--node-modules", type=Path, help="an existing node_modules holding the pinned packages")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    corpus = json.loads(CORPUS.read_text(encoding="utf-8"))
    with tempfile.TemporaryDirectory(prefix="tokfix-") as tmp:
        tmp = Path(tmp)
        nm = args.node_modules or npm_install(tmp / "npm")
        check_pins(nm)
        dump = tmp / "dump"
        subprocess.run(["node", str(NODE_SCRIPT), str(nm), str(CORPUS), str(dump)], check=True)
        data = {f: json.loads((dump / f"{f}.vocab.json").read_text(encoding="utf-8")) for f in PACKAGE_OF}
        ids = {f: json.loads((dump / f"{f}.ids.json").read_text(encoding="utf-8")) for f in PACKAGE_OF}

    full = {"llama2": spm_tokenizer_json(data["llama2"]["vocab"], data["llama2"]["merges"]),
            "mistral": spm_tokenizer_json(data["mistral"]["vocab"], data["mistral"]["merges"]),
            "llama3": llama3_tokenizer_json(data["llama3"]["vocab"], data["llama3"]["merges"])}
    shared = {"qwen2.5": qwen25_shared(), "smollm2": smollm2_shared(), "gemma": gemma_shared()}
    cfgs, maps = configs()
    args.out.mkdir(parents=True, exist_ok=True)
    for fam in [*full, *shared]:
        folder = args.out / fam
        folder.mkdir(exist_ok=True)
        if fam in full:
            write_tokenizer(folder, full[fam])
            write_expected(folder / "expected_ids.json", fam, corpus, ids[fam])
        else:
            clear_tokenizer(folder)
            write_json(folder / "tokenizer.shared.json", shared[fam], compact=True)
        write_json(folder / "tokenizer_config.json", cfgs[fam])
        write_json(folder / "special_tokens_map.json", maps[fam])
    for fam in [*full, *shared]:
        size = sum(p.stat().st_size for p in (args.out / fam).iterdir())
        print(f"{fam:8s} {size / 1e6:6.2f} MB  " + " ".join(sorted(p.name for p in (args.out / fam).iterdir())))


if __name__ == "__main__":
    main()
