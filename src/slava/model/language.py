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
    old = model.get_input_embeddings().weight.shape[0]
    if tokenizer.vocab_size > old:
        from transformers.initialization import no_init_weights

        # The new rows are zeroed below: sampling the whole new table first took 0.3 s of every load.
        with no_init_weights():
            model.resize_token_embeddings(tokenizer.vocab_size, mean_resizing=False)
        with torch.no_grad():
            model.get_input_embeddings().weight[old:].zero_()
            head = model.get_output_embeddings()
            if head is not None and head.weight is not model.get_input_embeddings().weight:
                head.weight[old:].zero_()
    if sha is not None:
        setattr(model, GGUF_SHA256, sha)
    return model
