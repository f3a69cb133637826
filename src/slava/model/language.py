"""The causal language model: a tiny Llama built from config, any HF causal LM from a local directory, or a GGUF.

A GGUF (kind `gguf`) is converted once into a cached HF directory by
`slava.weights.gguf_base` and then loaded like kind `hf`; the model carries
the GGUF's sha256 in `GGUF_SHA256` so a checkpoint can name the file it needs.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from slava.errors import SlavaError
from slava.model.config import LMConfig
from slava.model.tokenizer import SlavaTokenizer


GGUF_SHA256 = "slava_gguf_sha256"
"""Attribute of an LM built from a GGUF: the file's hex sha256."""


class LanguageModelError(SlavaError):
    """A language model cannot be built or loaded."""


def pretrained_dir(cfg: LMConfig) -> Path:
    """The local HF directory of a pretrained LM (kind `hf` or `gguf`; a GGUF is converted and cached first)."""
    if cfg.kind == "gguf":
        from slava.weights.gguf_base import converted_base

        return converted_base(cfg.path).directory
    if cfg.kind != "hf":
        raise LanguageModelError(f"lm.kind {cfg.kind!r} has no pretrained directory")
    if not cfg.path or not (Path(cfg.path) / "config.json").is_file():
        raise LanguageModelError(f"lm.kind 'hf' needs lm.path, a local model directory with config.json (got {cfg.path!r})")
    return Path(cfg.path)


def build_language_model(cfg: LMConfig, tokenizer: SlavaTokenizer) -> nn.Module:
    """A Hugging Face causal LM whose embedding table covers every id of `tokenizer`.

    Rows added for new tokens (`<image>`) are zeroed rather than sampled, so a
    base rebuilt from the same directory is bit-identical (its fingerprint
    depends on it); the image placeholder's row is overwritten by image
    embeddings anyway. A tied head (SmolLM2) stays tied to the resized table.
    """
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    if cfg.kind == "tiny_llama":
        config = LlamaConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=cfg.hidden,
            num_hidden_layers=cfg.layers,
            num_attention_heads=cfg.heads,
            num_key_value_heads=cfg.kv_heads,
            intermediate_size=cfg.intermediate,
            max_position_embeddings=cfg.max_len,
            bos_token_id=tokenizer.bos_id,
            eos_token_id=tokenizer.eos_id,
            pad_token_id=tokenizer.pad_id,
            tie_word_embeddings=False,
        )
        return LlamaForCausalLM(config)
    if cfg.kind not in ("hf", "gguf"):
        raise LanguageModelError(f"unknown language model kind {cfg.kind!r}")
    sha = None
    if cfg.kind == "gguf":
        from slava.weights.gguf_base import converted_base

        base = converted_base(cfg.path)
        path, sha = base.directory, base.sha256
    else:
        path = pretrained_dir(cfg)
    model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, dtype=torch.float32)
    if tokenizer.vocab_size > model.get_input_embeddings().weight.shape[0]:
        _grow_vocabulary(model, tokenizer.vocab_size)
    if sha is not None:
        setattr(model, GGUF_SHA256, sha)
    return model


def _grow_vocabulary(model, vocab_size: int) -> None:
    """Add zero rows to ``model``'s token table (and its head, tied or not) up to ``vocab_size``.

    A new token's zero embedding and zero logit row leave every old token's
    output unchanged. transformers' ``resize_token_embeddings`` first samples
    the whole new table at random (0.4 s of every load, even under its
    ``no_init_weights``), only for the rows to be overwritten.
    """
    embeddings = model.get_input_embeddings()
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is embeddings.weight
    with torch.no_grad():
        grown = _grown(embeddings.weight, vocab_size)
        model.set_input_embeddings(torch.nn.Embedding.from_pretrained(grown, freeze=False, padding_idx=embeddings.padding_idx))
        if head is not None:
            head.weight = model.get_input_embeddings().weight if tied else torch.nn.Parameter(_grown(head.weight, vocab_size))
            head.out_features = vocab_size
    model.config.get_text_config().vocab_size = vocab_size
    model.vocab_size = vocab_size


def _grown(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """``weight`` with zero rows appended up to ``rows``."""
    out = torch.zeros(rows, *weight.shape[1:], dtype=weight.dtype, device=weight.device)
    out[: weight.shape[0]] = weight
    return out
