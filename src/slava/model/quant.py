"""Weight-only quantization of frozen linear layers (int8, int4, NF4).

The frozen language model keeps its linear weights as integer codes plus
scales; each forward dequantizes into the activation's compute dtype and runs
a dense ``F.linear``. On the AMX CPUs this project targets that was the
fastest path that still lets gradients reach the activations (and so the
adapters and projector upstream): fused int4/int8 kernels only win for
single-token decoding. Everything is plain torch, so the same layer runs on
CUDA, and the codes and scales are ordinary buffers, so ``state_dict`` and
safetensors round-trip them.

Measured on Gaussian weights (2048 x 2048, group size 64; ``bench/bench_mope.py``
prints the figures), the relative output error ``||y_q - y|| / ||y||`` is
0.8 % for int8 (0.4 % with ``nn.Linear``'s default uniform init), 10.8 % for
symmetric int4, 9.0 % for asymmetric int4 and 9.2 % for NF4. The tests hold
int8 under 1 % and every 4-bit format under :data:`INT4_ERROR_BOUND`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

#: Upper bound on the relative output error of every 4-bit format at group
#: size 64 on Gaussian weights (measured 0.090–0.108; see module docstring).
INT4_ERROR_BOUND = 0.12

#: The 16 levels of the NormalFloat4 data type (QLoRA, Dettmers et al. 2023),
#: quantiles of a standard normal rescaled to [-1, 1] with an exact zero.
NF4_CODE = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)  # fmt: skip

Fmt = Literal["int4", "nf4"]


@dataclass
class QuantConfig:
    """How the frozen language model's linear weights are stored."""

    bits: int = 0
    """0: keep the float weights; 8: int8 per output channel; 4: group-wise 4-bit."""
    fmt: Fmt = "int4"
    """4-bit code: "int4" (uniform levels) or "nf4" (NormalFloat4 code book)."""
    group_size: int = 64
    """Input features sharing one 4-bit scale; smaller groups cost memory, gain accuracy."""
    symmetric: bool = True
    """int4 only: levels symmetric around zero (absmax scale) or min/max with an offset."""
    skip: list[str] = field(default_factory=lambda: ["lm_head"])
    """Linears whose qualified name contains any of these substrings stay in float."""


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a linear applied to ``x`` computes in: the autocast dtype if active, else ``x.dtype``."""
    # Under autocast F.linear would cast a float32 weight down anyway: dequantize
    # straight into the autocast dtype and skip the float32 intermediate.
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


class QuantizedLinear(nn.Module):
    """A frozen ``nn.Linear`` stored as int8 or packed 4-bit codes.

    Buffers: ``qweight`` (int8 ``[out, in]``, or uint8 ``[out, in_padded // 2]``
    holding two 4-bit codes per byte, low nibble first), ``scale`` (float32,
    ``[out, 1]`` for int8, ``[out, groups]`` for 4-bit), ``offset`` (float32,
    asymmetric int4 only) and ``bias`` (float32 or ``None``). The input dimension
    is zero-padded to a multiple of ``group_size`` for 4-bit formats.
    """

    def __init__(
        self,
        linear: nn.Linear,
        bits: int = 8,
        group_size: int = 64,
        fmt: Fmt = "int4",
        symmetric: bool = True,
    ) -> None:
        super().__init__()
        if bits not in (8, 4):
            raise ValueError(f"bits must be 8 or 4, got {bits}")
        if bits == 4 and fmt not in ("int4", "nf4"):
            raise ValueError(f"fmt must be 'int4' or 'nf4', got {fmt!r}")
        if bits == 4 and (group_size <= 0 or group_size % 2):
            raise ValueError(f"group_size must be a positive even number, got {group_size}")
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.bits = bits
        self.fmt = "int8" if bits == 8 else fmt
        self.group_size = self.in_features if bits == 8 else group_size
        self.symmetric = True if bits == 8 or fmt == "nf4" else symmetric
        weight = linear.weight.detach().to(torch.float32)
        device = weight.device
        if bits == 8:
            scale = weight.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127.0
            self.register_buffer("qweight", torch.round(weight / scale).clamp_(-127, 127).to(torch.int8))
            self.register_buffer("scale", scale)
            self.register_buffer("offset", None)
        else:
            codes, scale, offset = _quantize_4bit(weight, group_size, fmt, self.symmetric)
            self.register_buffer("qweight", codes[:, 0::2] | (codes[:, 1::2] << 4))
            self.register_buffer("scale", scale)
            self.register_buffer("offset", offset)
        bias = linear.bias
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.float32).clone())
        if bits == 4:
            # The 16 values a code stands for; derived from fmt, so not saved.
            levels = torch.tensor(NF4_CODE) if fmt == "nf4" else torch.arange(16.0) - (8 if self.symmetric else 0)
            self.register_buffer("levels", levels.to(device), persistent=False)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float weight ``[out, in]`` these codes stand for, in ``dtype``."""
        if self.bits == 8:
            return self.qweight.to(dtype) * self.scale.to(dtype)
        table_dtype = dtype if dtype.itemsize <= 4 else torch.float32
        lv = self.levels.to(table_dtype)
        # One lookup per byte yields both of its levels: gathering level pairs
        # reinterpreted as one 32/64-bit word took 1.3 ms for 4 M weights on
        # this CPU, against 16 ms to unpack nibbles and gather bf16 levels.
        pairs = torch.stack((lv.repeat(16), lv.repeat_interleave(16)), dim=-1)
        word = torch.int32 if table_dtype.itemsize == 2 else torch.int64
        w = pairs.view(word).view(-1).index_select(0, self.qweight.view(-1).int()).view(table_dtype)
        w = w.view(self.out_features, -1, self.group_size) * self.scale.to(table_dtype).unsqueeze(-1)
        if self.offset is not None:
            w = w + self.offset.to(table_dtype).unsqueeze(-1)
        return w.view(self.out_features, -1)[:, : self.in_features].to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ W^T + b`` with ``W`` dequantized to the compute dtype; grads reach ``x``."""
        dtype = compute_dtype(x)
        y = _DequantizedMatmul.apply(x.to(dtype), self)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
            f"fmt={self.fmt}, group_size={self.group_size}, symmetric={self.symmetric}, "
            f"bias={self.bias is not None}"
        )


class _DequantizedMatmul(torch.autograd.Function):
    """``x @ W^T`` that dequantizes ``W`` again in backward instead of saving it.

    Plain autograd would keep every layer's dequantized weight alive until
    backward: a bf16 copy of the whole frozen model, more than the int8 or
    4-bit codes saved. Even dequantizing twice, forward + backward ran at
    1.09x (int8) and 1.3x (4-bit) a dense bf16 layer (bench_mope.py), so a
    cached bf16 weight is not worth its 2 bytes per weight.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: QuantizedLinear) -> torch.Tensor:
        ctx.layer = layer
        return F.linear(x, layer.dequantize(x.dtype))

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad @ ctx.layer.dequantize(grad.dtype), None


def _quantize_4bit(
    weight: torch.Tensor, group_size: int, fmt: str, symmetric: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Codes (uint8 in 0..15, ``[out, in_padded]``), scales and offsets per group."""
    out, n_in = weight.shape
    pad = (-n_in) % group_size
    groups = F.pad(weight, (0, pad)).view(out, -1, group_size)
    offset = None
    if fmt == "nf4":
        scale = groups.abs().amax(dim=-1, keepdim=True).clamp_min(1e-12)
        code = torch.tensor(NF4_CODE, device=weight.device)
        # Nearest level = bucket between consecutive midpoints.
        codes = torch.bucketize(groups / scale, (code[1:] + code[:-1]) / 2)
    elif symmetric:
        scale = groups.abs().amax(dim=-1, keepdim=True).clamp_min(1e-12) / 7.0
        codes = torch.round(groups / scale).clamp_(-8, 7) + 8
    else:
        lo = groups.amin(dim=-1, keepdim=True)
        scale = (groups.amax(dim=-1, keepdim=True) - lo).clamp_min(1e-12) / 15.0
        codes = torch.round((groups - lo) / scale).clamp_(0, 15)
        offset = lo.squeeze(-1).contiguous()
    return codes.to(torch.uint8).view(out, -1), scale.squeeze(-1).contiguous(), offset


def quantize_linears(
    module: nn.Module,
    bits: int = 8,
    group_size: int = 64,
    fmt: Fmt = "int4",
    skip: tuple[str, ...] | list[str] = (),
    symmetric: bool = True,
) -> int:
    """Replace every ``nn.Linear`` inside ``module`` by a :class:`QuantizedLinear`.

    A linear is left alone when its qualified name contains any ``skip``
    substring (e.g. ``"lm_head"``). Only exact ``nn.Linear`` instances are
    replaced: subclasses such as the out-projection of ``nn.MultiheadAttention``
    are read through ``.weight`` by their owners. Quantize before attaching
    adapters (:func:`slava.model.mope.attach_mopes`), or their routers would be
    quantized too. Returns the number of layers replaced.
    """
    targets = [
        (name, child)
        for name, child in module.named_modules()
        if type(child) is nn.Linear and name and not any(s in name for s in skip)
    ]
    for name, child in targets:
        parent_name, _, attr = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, attr, QuantizedLinear(child, bits, group_size, fmt, symmetric))
    return len(targets)


def quantize_from_config(module: nn.Module, cfg: QuantConfig) -> int:
    """Apply ``cfg`` to ``module`` (no-op when ``cfg.bits == 0``); returns layers replaced."""
    if cfg.bits == 0:
        return 0
    return quantize_linears(module, cfg.bits, cfg.group_size, cfg.fmt, tuple(cfg.skip), cfg.symmetric)
