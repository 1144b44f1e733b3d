"""Tiny models built from config with random weights, saved like real checkpoints.

They exist so that tests and offline demos exercise the exact loading code a real model goes
through (``from_pretrained`` on a local path); their outputs mean nothing.
"""

from __future__ import annotations

from pathlib import Path


def save_tiny_causal_lm(directory: Path, *, seed: int = 0) -> Path:
    """A 1-layer GPT-2 with a word-level tokenizer over a small English vocabulary."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    words = [
        "<unk>",
        "<eos>",
        "Yes",
        "No",
        "Answer",
        "Text",
        "Does",
        "the",
        "following",
        "text",
        "mention",
        "a",
        "or",
    ]
    vocabulary = {word: index for index, word in enumerate(words)}
    for extra in "abcdefghijklmnopqrstuvwxyz0123456789.,:;!?'\"()-":
        vocabulary.setdefault(extra, len(vocabulary))
    backend = Tokenizer(models.WordLevel(vocab=vocabulary, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>", pad_token="<eos>"
    )
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(vocabulary),
        n_positions=256,
        n_embd=32,
        n_layer=1,
        n_head=2,
        bos_token_id=1,
        eos_token_id=1,
    )
    model = GPT2LMHeadModel(config)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
