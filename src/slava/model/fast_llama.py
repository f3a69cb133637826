"""A fast Llama forward for decoding: fused frozen linears and a KV cache allocated once.

At batch 1 on the tiny model the HF forward, its cache objects and the
per-layer MoPE and dequantization ops took ~2/3 of each decoding step.
`Decoder` runs the HF forward's computation (eval semantics) on weights
frozen and fused once (`FrozenLinears`); a `Session` holds one generation's
KV cache with room for every new token. `decoder_for(lm)` returns the LM's
decoder, rebuilt whenever a weight or an expert rank changes, or None for an
LM this file does not compute exactly (the caller then uses HF's forward).
The frozen weights are float32, or bf16 when decoding runs under bf16
autocast: decoding one token reads every weight once, so float32 copies
there were cast down at every step, and decoding in bf16 ran slower than in
float32 (11.3 against 13.4 tokens/s on an AVX512-BF16 EPYC, 2026-12-02).
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import nn

from slava.model.mope import MoPELinear
from slava.model.quant import QuantizedLinear

#: Largest float32 copy of an LM's linear weights `Decoder` makes (memory beside the
#: quantized codes). It pays where per-op overhead dominates (the tiny LM: ~15 MB),
#: and on SmolLM2-135M too (538 MB with its tied 49k-row head): on AMD EPYC, AVX2,
#: 2 cores (2026-12-01) the int8 + MoPE student decoded 3.5-4.4x faster here than
#: through HF's forward, which dequantizes every int8 weight at every step, and
#: torch's fused int8 matmul (`_weight_int8pack_mm`) ran 6-11x slower than float32
#: at its widths (bench/bench_decode.py). Beyond this an LM decodes through HF.
MAX_DECODER_BYTES = 2 * 2**30


class FrozenLinears:
    """Several linears reading the same input, frozen into one inference-only layer for decoding.

    Each layer may be an ``nn.Linear``, a :class:`QuantizedLinear` or a
    :class:`MoPELinear` over either. Called on ``x [N, in]`` it returns each
    layer's output as the layers would in eval mode, in two matmuls: one over
    the float32 base weights (dequantized once: a decoding step dequantized
    every int8 weight again, and torch's fused int8 matmul ran 3-5x slower
    than a float32 one at these widths) stacked with every expert ``A`` and
    router, one over every ``B`` (times ``alpha / b``) in a block-diagonal
    matrix. Routing is :meth:`MoPELinear._route`'s in eval mode; the experts
    picked are counted into each layer's ``usage`` by :meth:`flush_usage`.

    The weights are copies in ``dtype`` (built in float32, then cast):
    rebuild after any parameter, buffer or rank changes.
    Raises ``TypeError`` for other layer types, or for MoPE layers differing in
    experts, top-k, rank, alpha or shared expert.
    """

    def __init__(self, layers: list[nn.Module], dtype: torch.dtype = torch.float32) -> None:
        bases = [m.base if isinstance(m, MoPELinear) else m for m in layers]
        self.sizes = [m.out_features for m in layers]
        self.out = sum(self.sizes)
        weight = [_float_weight(b) for b in bases]
        bias = None
        if any(b.bias is not None for b in bases):
            bias = torch.cat([
                w.new_zeros(len(w)) if b.bias is None else b.bias.detach().float() for b, w in zip(bases, weight)
            ])
        self.mopes = [m for m in layers if isinstance(m, MoPELinear)]
        self.picks: list[torch.Tensor] = []
        self.width = 0
        if self.mopes:
            settings = {(m.num_experts, m.top_k, m.rank or m.r_max, m.alpha, m.shared_expert, m.router is None)
                        for m in self.mopes}
            if len(settings) > 1:
                raise TypeError(f"expert layers reading one input differ in settings: {sorted(settings)}")
            self.experts, self.top_k, self.b, alpha, self.shared, plain = settings.pop()
            self.routed = not plain
            self.slots = self.experts + int(self.shared)
            width = self.slots * self.b
            self.width = width * len(self.mopes)
            up = weight[0].new_zeros(self.out, self.width)
            start = dict(zip(map(id, layers), [0, *torch.tensor(self.sizes).cumsum(0).tolist()]))
            for i, m in enumerate(self.mopes):
                weight.append(m.lora_A.detach().float().view(self.slots, m.r_max, -1)[:, : self.b].reshape(width, -1))
                rows = slice(start[id(m)], start[id(m)] + m.out_features)
                B = m.lora_B.detach().float().view(m.out_features, self.slots, m.r_max)[:, :, : self.b]
                up[rows, i * width : (i + 1) * width] = B.reshape(m.out_features, width) * (alpha / self.b)
            if self.routed:
                weight += [m.router.weight.detach().float() for m in self.mopes]
            self.up_t = up.T.contiguous().to(dtype)
            if bias is not None:
                bias = torch.cat((bias, bias.new_zeros(sum(len(w) for w in weight) - self.out)))
        self.weight = torch.cat(weight).to(dtype)
        self.bias = None if bias is None else bias.to(dtype)

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        y = F.linear(x, self.weight, self.bias)
        if not self.mopes:
            return y.split(self.sizes, dim=-1)
        n, m = x.shape[0], len(self.mopes)
        z = y[:, self.out : self.out + self.width].view(n, m, self.slots, self.b)
        if self.routed:
            # Softmax spelled out: aten's runs threaded even on a few logits, and a busy neighbour core
            # stalled it for milliseconds per call. Renormalising over the top k cancels its denominator.
            logits = y[:, self.out + self.width :].view(n, m, self.experts)
            e = (logits - logits.amax(dim=-1, keepdim=True)).exp()
            top, chosen = e.topk(self.top_k, dim=-1)
            top = top / (top if self.top_k > 1 else e).sum(dim=-1, keepdim=True)
            self.picks.append(chosen)
            gates = torch.zeros_like(e).scatter(2, chosen, top)
            if self.shared:
                gates = torch.cat((gates, gates.new_ones(n, m, 1)), dim=2)
            z = z * gates.unsqueeze(-1)
        return torch.addmm(y[:, : self.out], z.reshape(n, self.width), self.up_t).split(self.sizes, dim=-1)

    def flush_usage(self) -> None:
        """Add the experts picked since the last flush to each layer's ``usage``."""
        if not self.picks:
            return
        chosen = torch.cat(self.picks)
        self.picks = []
        for i, m in enumerate(self.mopes):
            m.usage += torch.bincount(chosen[:, i].reshape(-1), minlength=m.num_experts).to(m.usage.device)


def decoder_bytes(lm: nn.Module) -> int:
    """Bytes of the float32 copy of `lm`'s linear weights (head included) a `Decoder` would hold (half in bf16)."""
    linears = [m for m in lm.modules() if isinstance(m, (nn.Linear, QuantizedLinear))]
    return 4 * sum(m.in_features * m.out_features for m in linears)


def _float_weight(layer: nn.Module) -> torch.Tensor:
    if isinstance(layer, QuantizedLinear):
        return layer.dequantize(torch.float32)
    if type(layer) is nn.Linear:
        return layer.weight.detach().float()
    raise TypeError(f"cannot freeze a {type(layer).__name__} for decoding")


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    # HF's rotate_half(x) * sin is cat(-x2, x1) * sin = roll(x) * cat(-sin1, sin2): one op fewer per call.
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * signed_sin


class Decoder:
    """A Llama forward in eval semantics on weights frozen into `FrozenLinears`.

    Per layer: q, k and v (and gate and up) share one input, so each trio
    costs two matmuls whatever the experts. The weights are copies of the
    LM in ``dtype`` (the embeddings, norms and residual stream stay float32),
    rebuilt by `decoder_for` whenever a weight, a rank or the dtype changes.
    """

    def __init__(self, lm: nn.Module, dtype: torch.dtype = torch.float32) -> None:
        cfg = lm.config
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads
        self.scaling = self.head_dim**-0.5
        self.eps = cfg.rms_norm_eps
        # No reference to `lm` itself: the cache holding this decoder is keyed weakly by it.
        self.rotary = lm.model.rotary_emb
        self.embed = lm.get_input_embeddings().weight.detach()
        self.layers = []
        for layer in lm.model.layers:
            att, mlp = layer.self_attn, layer.mlp
            self.layers.append((
                layer.input_layernorm.weight.detach(),
                FrozenLinears([att.q_proj, att.k_proj, att.v_proj], dtype),
                FrozenLinears([att.o_proj], dtype),
                layer.post_attention_layernorm.weight.detach(),
                FrozenLinears([mlp.gate_proj, mlp.up_proj], dtype),
                FrozenLinears([mlp.down_proj], dtype),
            ))
        self.norm = lm.model.norm.weight.detach()
        self.head = FrozenLinears([lm.lm_head], dtype)

    @classmethod
    def build(cls, lm: nn.Module, dtype: torch.dtype = torch.float32) -> "Decoder | None":
        """The decoder of `lm` (weights in ``dtype``), or None for an LM this class does not compute exactly."""
        cfg = lm.config
        supported = (
            cfg.model_type == "llama"
            and cfg.hidden_act == "silu"
            and getattr(lm.model.rotary_emb, "rope_type", None) in ("default", "linear", "llama3")
            and lm.get_input_embeddings().weight.dtype == torch.float32
            and decoder_bytes(lm) <= MAX_DECODER_BYTES
        )
        if not supported:
            return None
        try:
            return cls(lm, dtype)
        except TypeError:  # a layer type or expert mix FrozenLinears does not reproduce
            return None

    def frozen(self) -> list[FrozenLinears]:
        return [f for layer in self.layers for f in layer if isinstance(f, FrozenLinears)] + [self.head]


class Session:
    """Decoding state on a `Decoder`: a KV cache allocated once with room for every new token."""

    def __init__(self, decoder: Decoder, max_new: int) -> None:
        self.d, self.max_new = decoder, max_new

    def _start(self, rows: int, total: int, like: torch.Tensor, last_position: int) -> None:
        """An empty cache of ``total`` slots for ``rows`` rows, and rotary tables past ``last_position``."""
        d = self.d
        self.keys = [like.new_zeros(rows, d.kv_heads, total, d.head_dim) for _ in d.layers]
        self.values = [like.new_zeros(rows, d.kv_heads, total, d.head_dim) for _ in d.layers]
        self.valid = torch.zeros(rows, total, dtype=torch.bool)
        cos, sin = d.rotary(like, torch.arange(last_position + self.max_new + 1)[None])
        half = d.head_dim // 2
        self.cos, self.sin = cos[0], torch.cat((-sin[0, :, :half], sin[0, :, half:]), dim=-1)

    @torch.no_grad()
    def prefill(self, embeds: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        d = self.d
        rows, self.length = mask.shape
        self._start(rows, self.length + self.max_new, embeds, int(positions.max()))
        self.valid[:, : self.length] = mask.bool()
        self.padded = not bool(mask.all())
        attend = None
        if self.padded:
            # Causal over real tokens; every query also sees itself, so a padding row stays finite.
            causal = torch.ones(self.length, self.length, dtype=torch.bool).tril()
            attend = (causal & self.valid[:, None, None, : self.length]) | torch.eye(self.length, dtype=torch.bool)
        x = self._layers(embeds.flatten(0, 1), positions, 0, attend)
        return d.head(_rms(x.view(rows, self.length, -1)[:, -1], d.norm, d.eps))[0]

    @torch.no_grad()
    def prefill_shared(self, prefix: torch.Tensor, prefix_mask: torch.Tensor, rows: torch.Tensor,
                       suffix: torch.Tensor, suffix_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits [B, V] and last positions [B, 1] after prompts ``prefix[rows[b]]`` + ``suffix[b]``.

        ``prefix`` [G, P, D] and ``suffix`` [B, S, D] are left-padded embeddings
        (masks [G, P], [B, S]); each distinct prefix runs once and its cache is
        copied to the rows that share it. The result is ``prefill`` on the joined
        prompts (the same positions, the same keys seen), and ``step`` goes on from it.
        """
        d = self.d
        p, (n, s) = prefix_mask.shape[1], suffix_mask.shape
        prefix_positions = (prefix_mask.cumsum(dim=1) - 1).clamp(min=0)
        positions = prefix_positions[rows, -1:] + suffix_mask.cumsum(dim=1)
        self._start(prefix_mask.shape[0], p + s + self.max_new, prefix, int(positions.max()))
        self.valid[:, :p] = prefix_mask.bool()
        self.padded = True
        causal = torch.ones(p, p, dtype=torch.bool).tril()
        self._layers(prefix.flatten(0, 1), prefix_positions, 0,
                     (causal & self.valid[:, None, None, :p]) | torch.eye(p, dtype=torch.bool))
        self.reorder(rows)
        self.valid[:, p : p + s] = suffix_mask.bool()
        keys, queries = torch.arange(p + s), p + torch.arange(s)
        # Causal over cache slots; every query also sees itself, so a padding row stays finite.
        attend = ((keys <= queries[:, None]) & self.valid[:, None, None, : p + s]) | (keys == queries[:, None])
        x = self._layers(suffix.flatten(0, 1), positions, p, attend)
        self.length = p + s
        return d.head(_rms(x.view(n, s, -1)[:, -1], d.norm, d.eps))[0], positions[:, -1:]

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        t = self.length
        self.valid[:, t] = True
        # Without padding every cached key is visible to the one query: no mask at all.
        attend = self.valid[:, None, None, : t + 1] if self.padded else None
        x = self._layers(F.embedding(tokens, self.d.embed), position, t, attend)
        self.length = t + 1
        return self.d.head(_rms(x, self.d.norm, self.d.eps))[0]

    def _layers(self, x: torch.Tensor, positions: torch.Tensor, start: int, attend: torch.Tensor | None):
        """The decoder layers on ``x [rows * T, D]``, tokens at cache slots ``start ..``; returns the last hidden.

        ``attend`` masks keys per query; None means all cached keys for one new token, causal for a prompt.
        """
        d = self.d
        rows, n = positions.shape
        end = start + n
        causal = attend is None and n > 1
        # A gather, not advanced indexing: `aten::index` runs threaded even on a few rows, and a busy
        # neighbour core stalled it for milliseconds per step.
        cos, sin = F.embedding(positions, self.cos)[:, :, None], F.embedding(positions, self.sin)[:, :, None]
        for i, (ln1, qkv, o, ln2, gate_up, down) in enumerate(d.layers):
            q, k, v = qkv(_rms(x, ln1, d.eps))
            qk = _rope(torch.cat((q, k), dim=1).view(rows, n, d.heads + d.kv_heads, d.head_dim), cos, sin)
            self.keys[i][:, :, start:end] = qk[:, :, d.heads :].transpose(1, 2)
            self.values[i][:, :, start:end] = v.view(rows, n, d.kv_heads, d.head_dim).transpose(1, 2)
            a = F.scaled_dot_product_attention(
                qk[:, :, : d.heads].transpose(1, 2), self.keys[i][:, :, :end], self.values[i][:, :, :end],
                attn_mask=attend, is_causal=causal, scale=d.scaling, enable_gqa=True,
            )
            x = x + o(a.transpose(1, 2).reshape(rows * n, -1))[0]
            g, u = gate_up(_rms(x, ln2, d.eps))
            x = x + down(F.silu(g) * u)[0]
        return x

    def reorder(self, index: torch.Tensor) -> None:
        """Rows of the cache become rows ``index`` (beam search; repeating row 0 widens the batch)."""
        self.keys = [k.index_select(0, index) for k in self.keys]
        self.values = [v.index_select(0, index) for v in self.values]
        self.valid = self.valid.index_select(0, index)

    def finish(self) -> None:
        for frozen in self.d.frozen():
            frozen.flush_usage()


#: Each LM's `Decoder` (or None: unsupported) with the weights key and dtype it was built for.
_DECODERS: "weakref.WeakKeyDictionary[nn.Module, tuple[tuple, Decoder | None]]" = weakref.WeakKeyDictionary()


def weights_key(lm: nn.Module) -> tuple | None:
    """A key that changes whenever a tensor of `lm` or an expert rank changes; None when it cannot be known."""
    # In-place updates (optimizer steps, load_state_dict) bump a tensor's version counter.
    try:
        tensors = tuple((id(t), t._version) for t in lm.state_dict(keep_vars=True).values())
    except RuntimeError:  # inference-mode tensors keep no version: never cache a decoder built on them
        return None
    return tensors + tuple(m.rank for m in lm.modules() if isinstance(m, MoPELinear))


def decoder_for(lm: nn.Module, dtype: torch.dtype = torch.float32) -> Decoder | None:
    """`lm`'s decoder, weights in ``dtype`` (None: unsupported), reused while its weights and ranks are unchanged."""
    key = weights_key(lm)
    hit = _DECODERS.get(lm)
    if key is not None and hit is not None and hit[0] == (key, dtype):
        return hit[1]
    decoder = Decoder.build(lm, dtype)
    if key is not None:
        _DECODERS[lm] = ((key, dtype), decoder)
    return decoder
