"Shared pytest setup."
import os, tempfile

import pytest

# Every test run gets its own reference log-prob cache (DPOConfig.ref_cache), so runs never read each other's files
# and nothing is written to the user's ~/.cache. Set before any test builds a trainer; notebooks run in-process inherit it.
os.environ["DPO_NB_CACHE"] = tempfile.mkdtemp(prefix="dpo_nb_test_cache-")


def save_tiny_model(folder, words: list[str]):
    "A word-level tokenizer over `words` and a tiny random-init Llama (seed 0), saved with save_pretrained into `folder`."
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    tok = word_tokenizer(words)
    torch.manual_seed(0)
    m = LlamaForCausalLM(LlamaConfig(vocab_size=len(words), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64))
    m.save_pretrained(folder); tok.save_pretrained(folder)


def word_tokenizer(words: list[str]):
    "A word-level tokenizer over `words` (`<pad> <bos> <eos> <unk>` among them) that prepends BOS: no merges, no downloads."
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast
    wl = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    wl.pre_tokenizer = pre_tokenizers.Whitespace()
    wl.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", words.index("<bos>"))])
    return PreTrainedTokenizerFast(tokenizer_object=wl, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")


@pytest.fixture(scope="module")
def one_thread():
    "The toy model runs fastest on one thread, and two threads crawl when other processes compete for the cores"
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def toy():
    "The bundled toy task (07_toy)"
    from dpo_nb.toy import load_toy
    return load_toy()
