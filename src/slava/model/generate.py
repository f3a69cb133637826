"""Decoding for `SlavaModel`: greedy, top-p and beam search over the LM's KV cache.

The prompt step runs on merged embeddings (`inputs_embeds`, image tokens
written in); later steps feed one token id per row and reuse the HF model's
KV cache. Prompts are left-padded into one batch, positions counted
over real tokens only, so a padded row decodes exactly like an unpadded one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from slava.model.vlm import SlavaModel

STRATEGIES = ("greedy", "beam", "top_p")


def _left_pad(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r) :] = torch.tensor(r)
            mask[i, width - len(r) :] = 1
    return ids, mask


def _prompt_step(model: "SlavaModel", pixels, ids, mask):
    from transformers import DynamicCache

    image_embeds = None if pixels is None else model.encode_images(pixels)
    embeds = model.embed(ids, image_embeds)
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    cache = DynamicCache(config=model.lm.config)
    out = model.lm(
        inputs_embeds=embeds, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True, logits_to_keep=1
    )
    return out.logits[:, -1].float(), cache, positions[:, -1:]


def _step(model: "SlavaModel", tokens, mask, position, cache):
    out = model.lm(input_ids=tokens[:, None], attention_mask=mask, position_ids=position, cache=cache, use_cache=True)
    return out.logits[:, -1].float()


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
) -> list[list[int]]:
    """New token ids for each prompt, stopping at `tokenizer.eos_id` (not returned) or `max_new_tokens`.

    `pixels` [B,1,H,W] pairs row b with prompt b (None for text-only prompts).
    Beam search keeps `num_beams` hypotheses per prompt and returns the best by
    length-normalised log-probability; top-p samples from the nucleus of mass
    `top_p` at `temperature` (pass a seeded `generator` for repeatable output).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown decoding strategy {strategy!r} (one of {', '.join(STRATEGIES)})")
    if not input_ids:
        return []
    was_training = model.training
    model.eval()
    try:
        return _generate(model, pixels, input_ids, max_new_tokens, strategy, num_beams, top_p, temperature, generator)
    finally:
        model.train(was_training)


def _generate(model, pixels, input_ids, max_new_tokens, strategy, num_beams, top_p, temperature, generator):
    if strategy == "beam":
        return [
            _beam(model, None if pixels is None else pixels[i : i + 1], ids, max_new_tokens, num_beams)
            for i, ids in enumerate(input_ids)
        ]
    eos = model.tokenizer.eos_id
    ids, mask = _left_pad(input_ids, model.tokenizer.pad_id)
    logits, cache, position = _prompt_step(model, pixels, ids, mask)
    out: list[list[int]] = [[] for _ in input_ids]
    done = torch.zeros(len(input_ids), dtype=torch.bool)
    for step in range(max_new_tokens):
        logits = _ban(logits, model)
        if strategy == "greedy":
            tokens = logits.argmax(dim=-1)
        else:
            tokens = _sample_top_p(logits, top_p, temperature, generator)
        tokens = tokens.masked_fill(done, eos)
        for i, t in enumerate(tokens.tolist()):
            if not done[i] and t != eos:
                out[i].append(t)
        done |= tokens == eos
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        position = position + 1
        logits = _step(model, tokens, mask, position, cache)
    return out


def _beam(model: "SlavaModel", pixels, prompt: list[int], max_new_tokens: int, num_beams: int) -> list[int]:
    eos = model.tokenizer.eos_id
    ids, mask = _left_pad([prompt], model.tokenizer.pad_id)
    logits, cache, position = _prompt_step(model, pixels, ids, mask)
    cache.batch_repeat_interleave(num_beams)
    mask = mask.repeat(num_beams, 1)
    position = position.repeat(num_beams, 1)
    logits = logits.repeat(num_beams, 1)
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
        cache.reorder_cache(index)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        position = position + 1
        logits = _step(model, torch.tensor(keep_token + [keep_token[0]] * pad), mask, position, cache)
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
