"""Decoding for `SlavaModel`: greedy, top-p and beam search over the LM's KV cache.

The prompt step runs on merged embeddings (`inputs_embeds`, image tokens
written in); later steps feed one token id per row. A float32 Llama runs both
on `_Decoder`: the HF forward's computation on weights frozen and fused once
(`FrozenLinears`) and a KV cache allocated once. At batch 1 on the tiny model
the HF forward, its cache objects and the per-layer MoPE and dequantization
ops took ~2/3 of each step. Any other LM runs through its own forward and
cache. Prompts are left-padded into one batch, positions counted over real
tokens only, so a padded row decodes exactly like an unpadded one.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F
from torch import nn

from slava.model.mope import FrozenLinears, MoPELinear
from slava.model.quant import QuantizedLinear

if TYPE_CHECKING:
    from slava.model.vlm import SlavaModel

STRATEGIES = ("greedy", "beam", "top_p")

#: Largest float32 copy of an LM's linear weights `_Decoder` makes. It pays where
#: per-op overhead dominates (the tiny LM: ~15 MB); a larger LM is bandwidth-bound
#: and better served by its quantized codes than by 4 bytes per weight.
MAX_DECODER_BYTES = 512 * 2**20


def _left_pad(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r) :] = torch.tensor(r)
            mask[i, width - len(r) :] = 1
    return ids, mask


def _prompt_embeds(model: "SlavaModel", pixels, ids):
    image_embeds = None if pixels is None else model.encode_images(pixels)
    return model.embed(ids, image_embeds)


class _HFSteps:
    """Prompt and decoding steps through the HF model's own forward and cache (any architecture)."""

    def __init__(self, lm: nn.Module) -> None:
        self.lm = lm

    def prefill(self, embeds: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        from transformers import DynamicCache

        self.cache, self.mask = DynamicCache(config=self.lm.config), mask
        out = self.lm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, cache=self.cache,
                      use_cache=True, logits_to_keep=1)
        return out.logits[:, -1].float()

    def step(self, tokens: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)
        out = self.lm(input_ids=tokens[:, None], attention_mask=self.mask, position_ids=position, cache=self.cache,
                      use_cache=True)
        return out.logits[:, -1].float()

    def reorder(self, index: torch.Tensor) -> None:
        """Rows of the cache become rows ``index`` (beam search; repeating row 0 widens the batch)."""
        self.cache.reorder_cache(index)
        self.mask = self.mask[index]

    def finish(self) -> None:
        pass


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    # HF's rotate_half(x) * sin is cat(-x2, x1) * sin = roll(x) * cat(-sin1, sin2): one op fewer per call.
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * signed_sin


class _Decoder:
    """A Llama forward in eval semantics on weights frozen into `FrozenLinears`.

    Per layer: q, k and v (and gate and up) share one input, so each trio
    costs two matmuls whatever the experts. The weights are float32 copies
    of the LM, rebuilt by `_decoder_for` whenever a weight or rank changes.
    """

    def __init__(self, lm: nn.Module) -> None:
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
                FrozenLinears([att.q_proj, att.k_proj, att.v_proj]),
                FrozenLinears([att.o_proj]),
                layer.post_attention_layernorm.weight.detach(),
                FrozenLinears([mlp.gate_proj, mlp.up_proj]),
                FrozenLinears([mlp.down_proj]),
            ))
        self.norm = lm.model.norm.weight.detach()
        self.head = FrozenLinears([lm.lm_head])

    @classmethod
    def build(cls, lm: nn.Module) -> "_Decoder | None":
        """The decoder of `lm`, or None when `lm` is not a float32 Llama this class computes exactly."""
        cfg = lm.config
        linears = [m for m in lm.modules() if isinstance(m, (nn.Linear, QuantizedLinear))]
        supported = (
            cfg.model_type == "llama"
            and cfg.hidden_act == "silu"
            and getattr(lm.model.rotary_emb, "rope_type", None) in ("default", "linear", "llama3")
            and lm.get_input_embeddings().weight.dtype == torch.float32
            and 4 * sum(m.in_features * m.out_features for m in linears) <= MAX_DECODER_BYTES
        )
        if not supported:
            return None
        try:
            return cls(lm)
        except TypeError:  # a layer type or expert mix FrozenLinears does not reproduce
            return None

    def frozen(self) -> list[FrozenLinears]:
        return [f for layer in self.layers for f in layer if isinstance(f, FrozenLinears)] + [self.head]


class _Session:
    """Decoding state on a `_Decoder`: a KV cache allocated once with room for every new token."""

    def __init__(self, decoder: _Decoder, max_new: int) -> None:
        self.d, self.max_new = decoder, max_new

    @torch.no_grad()
    def prefill(self, embeds: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        d = self.d
        rows, self.length = mask.shape
        total = self.length + self.max_new
        self.keys = [embeds.new_zeros(rows, d.kv_heads, total, d.head_dim) for _ in d.layers]
        self.values = [embeds.new_zeros(rows, d.kv_heads, total, d.head_dim) for _ in d.layers]
        self.valid = torch.zeros(rows, total, dtype=torch.bool)
        self.valid[:, : self.length] = mask.bool()
        self.padded = not bool(mask.all())
        cos, sin = d.rotary(embeds, torch.arange(int(positions.max()) + self.max_new + 1)[None])
        half = d.head_dim // 2
        self.cos, self.sin = cos[0], torch.cat((-sin[0, :, :half], sin[0, :, half:]), dim=-1)
        attend = None
        if self.padded:
            # Causal over real tokens; every query also sees itself, so a padding row stays finite.
            causal = torch.ones(self.length, self.length, dtype=torch.bool).tril()
            attend = (causal & self.valid[:, None, None, : self.length]) | torch.eye(self.length, dtype=torch.bool)
        x = self._layers(embeds.flatten(0, 1), positions, 0, attend)
        return d.head(_rms(x.view(rows, self.length, -1)[:, -1], d.norm, d.eps))[0]

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


#: Each LM's `_Decoder` (or None: unsupported) with the weights key it was built from.
_DECODERS: "weakref.WeakKeyDictionary[nn.Module, tuple[tuple, _Decoder | None]]" = weakref.WeakKeyDictionary()


def _weights_key(lm: nn.Module) -> tuple | None:
    # In-place updates (optimizer steps, load_state_dict) bump a tensor's version counter.
    try:
        tensors = tuple((id(t), t._version) for t in lm.state_dict(keep_vars=True).values())
    except RuntimeError:  # inference-mode tensors keep no version: never cache a decoder built on them
        return None
    return tensors + tuple(m.rank for m in lm.modules() if isinstance(m, MoPELinear))


def _decoder_for(model: "SlavaModel") -> _Decoder | None:
    """`model.lm`'s decoder, reused while its weights and ranks are unchanged."""
    key = _weights_key(model.lm)
    hit = _DECODERS.get(model.lm)
    if key is not None and hit is not None and hit[0] == key:
        return hit[1]
    decoder = _Decoder.build(model.lm)
    if key is not None:
        _DECODERS[model.lm] = (key, decoder)
    return decoder


def _steps(model: "SlavaModel", max_new: int) -> _HFSteps | _Session:
    decoder = _decoder_for(model)
    return _HFSteps(model.lm) if decoder is None else _Session(decoder, max_new)


def _ban(logits: torch.Tensor, model: "SlavaModel") -> torch.Tensor:
    # The placeholder's embedding is never trained: emitting it is always wrong.
    logits[:, model.tokenizer.image_id] = float("-inf")
    return logits


def _sample_top_p(logits: torch.Tensor, top_p: float, temperature: float, generator) -> torch.Tensor:
    probs = F.softmax(logits / max(temperature, 1e-5), dim=-1)
    sorted_p, order = probs.sort(dim=-1, descending=True)
    # Keep the smallest prefix whose mass reaches top_p (always at least one token).
    outside = sorted_p.cumsum(dim=-1) - sorted_p >= top_p
    sorted_p = sorted_p.masked_fill(outside, 0.0)
    choice = torch.multinomial(sorted_p, 1, generator=generator)
    return order.gather(1, choice).squeeze(1)


def generate(
    model: "SlavaModel",
    pixels: torch.Tensor | None,
    input_ids: list[list[int]],
    max_new_tokens: int = 64,
    strategy: str = "greedy",
    num_beams: int = 4,
    top_p: float = 0.9,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[list[int]]:
    """New token ids for each prompt, stopping at `tokenizer.eos_id` (not returned) or `max_new_tokens`.

    `pixels` [B,1,H,W] pairs row b with prompt b (None for text-only prompts).
    Beam search keeps `num_beams` hypotheses per prompt and returns the best by
    length-normalised log-probability; top-p samples from the nucleus of mass
    `top_p` at `temperature` (pass a seeded `generator` for repeatable output).
    `should_stop`, when given, is called between steps; True ends every
    sequence where it stands (the caller no longer wants the answer).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown decoding strategy {strategy!r} (one of {', '.join(STRATEGIES)})")
    if not input_ids:
        return []
    was_training = model.training
    model.eval()
    try:
        return _generate(model, pixels, input_ids, max_new_tokens, strategy, num_beams, top_p, temperature, generator,
                         should_stop)
    finally:
        model.train(was_training)


def _generate(model, pixels, input_ids, max_new_tokens, strategy, num_beams, top_p, temperature, generator,
              should_stop=None):
    if strategy == "beam":
        return [
            _beam(model, None if pixels is None else pixels[i : i + 1], ids, max_new_tokens, num_beams)
            for i, ids in enumerate(input_ids)
        ]
    eos = model.tokenizer.eos_id
    ids, mask = _left_pad(input_ids, model.tokenizer.pad_id)
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    steps = _steps(model, max_new_tokens)
    out: list[list[int]] = [[] for _ in input_ids]
    done = [False] * len(input_ids)
    try:
        logits = steps.prefill(_prompt_embeds(model, pixels, ids), mask, positions)
        position = positions[:, -1:]
        for step in range(max_new_tokens):
            logits = _ban(logits, model)
            if strategy == "greedy":
                tokens = logits.argmax(dim=-1)
            else:
                tokens = _sample_top_p(logits, top_p, temperature, generator)
            for i, t in enumerate(tokens.tolist()):
                done[i] = done[i] or t == eos
                if not done[i]:
                    out[i].append(t)
            if all(done) or step == max_new_tokens - 1 or (should_stop is not None and should_stop()):
                break
            position = position + 1
            logits = steps.step(tokens, position)
    finally:
        steps.finish()
    return out


def _beam(model: "SlavaModel", pixels, prompt: list[int], max_new_tokens: int, num_beams: int) -> list[int]:
    ids, mask = _left_pad([prompt], model.tokenizer.pad_id)
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    steps = _steps(model, max_new_tokens)
    try:
        logits = steps.prefill(_prompt_embeds(model, pixels, ids), mask, positions)
        steps.reorder(torch.zeros(num_beams, dtype=torch.long))
        return _beam_search(
            model, steps, logits.repeat(num_beams, 1), positions[:, -1:].repeat(num_beams, 1), max_new_tokens,
            num_beams,
        )
    finally:
        steps.finish()


def _beam_search(model: "SlavaModel", steps, logits, position, max_new_tokens: int, num_beams: int) -> list[int]:
    eos = model.tokenizer.eos_id
    # Only the first beam is live at the start, so the first expansion is not duplicated.
    scores = torch.full((num_beams,), float("-inf"))
    scores[0] = 0.0
    beams: list[list[int]] = [[] for _ in range(num_beams)]
    finished: list[tuple[float, list[int]]] = []
    for step in range(max_new_tokens):
        logp = F.log_softmax(_ban(logits, model), dim=-1)
        vocab = logp.shape[1]
        total = (scores[:, None] + logp).flatten()
        top_scores, top_index = total.topk(2 * num_beams)
        keep_beam, keep_token, keep_score = [], [], []
        for s, flat in zip(top_scores.tolist(), top_index.tolist()):
            b, t = divmod(flat, vocab)
            if s == float("-inf"):
                break
            if t == eos:
                finished.append((s / (len(beams[b]) + 1), beams[b]))
            else:
                keep_beam.append(b)
                keep_token.append(t)
                keep_score.append(s)
            if len(keep_beam) == num_beams:
                break
        best_live = max(keep_score, default=float("-inf")) / (len(beams[0]) + 1)
        if not keep_beam or (len(finished) >= num_beams and max(f[0] for f in finished) >= best_live):
            break
        beams = [beams[b] + [t] for b, t in zip(keep_beam, keep_token)]
        if step == max_new_tokens - 1:
            break
        # Fewer live candidates than beams: pad with dead copies so the batch keeps its shape.
        pad = num_beams - len(keep_beam)
        index = torch.tensor(keep_beam + [keep_beam[0]] * pad)
        scores = torch.tensor(keep_score + [float("-inf")] * pad)
        beams += [list(beams[0]) for _ in range(pad)]
        steps.reorder(index)
        position = position + 1
        logits = steps.step(torch.tensor(keep_token + [keep_token[0]] * pad), position)
    live = [(s / max(len(b), 1), b) for s, b in zip(scores.tolist(), beams) if s != float("-inf")]
    candidates = finished + live
    return max(candidates, key=lambda c: c[0])[1] if candidates else []


def score_continuations(
    model: "SlavaModel", pixels: torch.Tensor | None, prompt_ids: list[int], continuations: list[list[int]]
) -> list[float]:
    """Mean log-probability per token of each continuation after the prompt, in one batched forward.

    `pixels` is one image [1,1,H,W] (or None); every continuation must be non-empty.
    """
    if not prompt_ids or any(not c for c in continuations):
        raise ValueError("the prompt and every continuation need at least one token")
    was_training = model.training
    model.eval()
    try:
        return _score(model, pixels, prompt_ids, continuations)
    finally:
        model.train(was_training)


def _score(model, pixels, prompt_ids, continuations):
    rows = [prompt_ids + c for c in continuations]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), model.tokenizer.pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    image_embeds = None if pixels is None else model.encode_images(pixels[:1]).expand(len(rows), -1, -1)
    embeds = model.embed(ids, image_embeds)
    logits = model.lm(inputs_embeds=embeds, attention_mask=mask, use_cache=False).logits
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1).gather(2, ids[:, 1:, None]).squeeze(2)
    start = len(prompt_ids) - 1
    return [logp[i, start : start + len(c)].mean().item() for i, c in enumerate(continuations)]
