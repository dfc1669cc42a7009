"""Shared test fixtures: a word-level tokenizer with a chat template and a tiny Llama, built locally.

Nothing here touches the Hugging Face Hub: both are built from code and saved with save_pretrained,
so tests load them through the real from_pretrained path.
"""
import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # the Hub is unreachable here; fail fast instead of retrying

SPECIAL_TOKENS = ["<pad>", "<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|end|>"]
# Every word the tests use; unknown words map to <unk>. 7 specials + these stay under 64 ids.
WORDS = (
    "the a cat dog sat ran on mat rug . , ? ! what is it 2 3 4 5 + = yes no hello world good bad "
    "answer question please tell me about sky blue red green sun"
).split()
# A two-line template: each turn is `<|role|> content <|end|>`; the generation prompt opens an assistant turn.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


def build_word_tokenizer():
    """A WordLevel tokenizer (whitespace + punctuation split) adding BOS like Llama's, for transformers."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + sorted(set(WORDS)))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
        additional_special_tokens=SPECIAL_TOKENS[4:], chat_template=CHAT_TEMPLATE,
    )


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    """A folder holding only the word tokenizer (tokenizer.json, tokenizer_config.json, chat template)."""
    path = tmp_path_factory.mktemp("tiny_tokenizer")
    build_word_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    """A 2-layer Llama (random weights, seed 0) and the word tokenizer saved together; well under 1 MB."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_word_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    assert len(tokenizer) <= config.vocab_size
    path = tmp_path_factory.mktemp("tiny_llama")
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def subprocess_env() -> dict[str, str]:
    """The environment of a child process in a test: one BLAS thread, and first on its path the re_po these tests
    import (a worktree's, not the editable install's)."""
    import re_po

    path = os.pathsep.join(filter(None, [str(Path(re_po.__file__).parents[1]), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}


def is_one_line_error(output: str) -> bool:
    """A refusal as the CLI should print it: one `error: ` line (beside the embedded-default notice), no traceback."""
    lines = [line for line in output.splitlines() if "embedded default" not in line]
    return len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in output
