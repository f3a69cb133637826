"""The causal language model: a tiny Llama built from config, or any HF causal LM from a local directory."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from slava.errors import SlavaError
from slava.model.config import LMConfig
from slava.model.tokenizer import SlavaTokenizer


class LanguageModelError(SlavaError):
    """A language model cannot be built or loaded."""


def build_language_model(cfg: LMConfig, tokenizer: SlavaTokenizer) -> nn.Module:
    """A Hugging Face causal LM whose embedding table covers every id of `tokenizer`.

    Rows added for new tokens (`<image>`) are zeroed rather than sampled, so a
    base rebuilt from the same directory is bit-identical (its fingerprint
    depends on it); the image placeholder's row is overwritten by image
    embeddings anyway.
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
    if cfg.kind != "hf":
        raise LanguageModelError(f"unknown language model kind {cfg.kind!r}")
    if not cfg.path or not (Path(cfg.path) / "config.json").is_file():
        raise LanguageModelError(f"lm.kind 'hf' needs lm.path, a local model directory with config.json (got {cfg.path!r})")
    model = AutoModelForCausalLM.from_pretrained(cfg.path, local_files_only=True, dtype=torch.float32)
    old = model.get_input_embeddings().weight.shape[0]
    if tokenizer.vocab_size > old:
        model.resize_token_embeddings(tokenizer.vocab_size, mean_resizing=False)
        with torch.no_grad():
            model.get_input_embeddings().weight[old:].zero_()
            head = model.get_output_embeddings()
            if head is not None and head.weight is not model.get_input_embeddings().weight:
                head.weight[old:].zero_()
    return model
