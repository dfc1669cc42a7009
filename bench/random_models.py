"""Random-init Llama models of the shapes users train, for throughput: no weights are downloaded.

    model_folder("llama-1b", folder, device="cuda", dtype="bfloat16") -> folder

Throughput depends on the shapes, not on trained weights, so a model built from a config measures what the real
one would. The tokenizer is a byte-level BPE trained here on the bundled sample's texts (a few seconds), so the
token counts per text are those of a real subword tokenizer; the model's vocabulary keeps its real size, so the
LM head costs what it costs.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample" / "train.jsonl"
TOKENIZER_VOCAB = 8192

SHAPES = {  # hidden, layers, heads, kv heads, MLP width, vocabulary, tied embeddings
    "tiny": (128, 2, 2, 1, 256, TOKENIZER_VOCAB, True),  # the dry run (vLLM on a CPU needs head_dim 64)
    "smollm2-135m": (576, 30, 9, 3, 1536, 49152, True),  # SmolLM2-135M-Instruct
    "llama-1b": (2048, 16, 32, 8, 8192, 128256, True),  # Llama-3.2-1B
    "llama-8b": (4096, 32, 32, 8, 14336, 128256, False),  # Llama-3.1-8B
}


def model_folder(name: str, folder: Path, device: str = "cpu", dtype: str = "float32") -> Path:
    """Build the random-init model `name` on `device` in `dtype`, save it with its tokenizer into folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, layers, heads, kv_heads, mlp, vocab, tied = SHAPES[name]
    config = LlamaConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=kv_heads, intermediate_size=mlp, vocab_size=vocab,
                         tie_word_embeddings=tied, max_position_embeddings=4096, bos_token_id=1, eos_token_id=2,
                         pad_token_id=0)
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, dtype))  # an 8B model is built where it runs, in its dtype, at once
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    model.save_pretrained(folder)
    tokenizer().save_pretrained(folder)
    return folder


def tokenizer():
    """A byte-level BPE of TOKENIZER_VOCAB tokens trained on the sample's texts; <pad>=0, <s>=1, </s>=2."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rows = [json.loads(line) for line in SAMPLE.read_text().splitlines()]
    texts = [r[k] for r in rows for k in ("prompt", "chosen", "rejected")]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=TOKENIZER_VOCAB, special_tokens=["<pad>", "<s>", "</s>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", bos_token="<s>", eos_token="</s>")

