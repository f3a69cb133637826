"""Scoring continuations of a prompt: the mean log-probability per token of each, per image.

Zero-shot classification ranks every label's answer text as the continuation
of one prompt, for many images at once. The prompt's image-independent start
(the system text before the first ``<image>``) runs once and its KV cache is
kept while the LM's weights, ranks and compute mode are unchanged; each
image's rest of the prompt runs once; only the short continuations are
repeated per label. Rows are chunked so that images × labels never exceed
`ROWS_PER_FORWARD` sequences in one forward.
"""

from __future__ import annotations

import copy
import weakref
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from slava.model.fast_llama import weights_key

ROWS_PER_FORWARD = 256
"""Sequences per scoring forward: bounds memory when many images × labels are scored together."""

#: Each LM's cached prefix: (key, prefix ids, DynamicCache). One entry per LM: the latest prompt.
_PREFIXES: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()

Embed = Callable[[torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def score_continuations(
    lm: nn.Module,
    embed: Embed,
    image_embeds: torch.Tensor | None,
    prompt_ids: list[int],
    continuations: list[list[int]],
    *,
    image_id: int,
    pad_id: int,
) -> torch.Tensor:
    """Mean log-probability per token [B, L] of each of the L continuations after each image's prompt.

    ``embed(ids, image_embeds)`` turns token ids [b, T] into LM input
    embeddings with row i's ``<image>`` placeholders filled from
    ``image_embeds[i]`` (``SlavaModel.embed``). ``image_embeds`` [B, N, D]
    (None for a text-only prompt: B = 1); continuations are right-padded with
    ``pad_id``. Call in eval mode and without grad.
    """
    if not prompt_ids or not continuations or any(not c for c in continuations):
        raise ValueError("the prompt and every continuation need at least one token")
    rows = 1 if image_embeds is None else image_embeds.shape[0]
    # The prefix ends at the first image, or before the last token of a text-only prompt.
    split = prompt_ids.index(image_id) if image_id in prompt_ids else len(prompt_ids) - 1
    prefix = _prefix(lm, prompt_ids[:split])
    chunk = max(1, ROWS_PER_FORWARD // len(continuations))
    return torch.cat([
        _score_chunk(lm, embed, prefix, None if image_embeds is None else image_embeds[i : i + chunk], prompt_ids, split,
                     continuations, pad_id)
        for i in range(0, rows, chunk)
    ])


def _device(lm: nn.Module) -> torch.device:
    return lm.get_input_embeddings().weight.device


def _prefix(lm: nn.Module, ids: list[int]):
    """The KV cache of ``ids`` alone (an empty cache for no ids), reused while nothing it depends on changed."""
    from transformers import DynamicCache

    device = _device(lm)
    # A cache computed under another autocast dtype or outside inference mode is not the one this call would compute.
    mode = (torch.is_autocast_enabled(device.type), torch.get_autocast_dtype(device.type), torch.is_inference_mode_enabled())
    weights = weights_key(lm)
    key = (tuple(ids), weights, str(device), mode)
    hit = _PREFIXES.get(lm)
    if weights is not None and hit is not None and hit[0] == key:
        return hit[1]
    cache = DynamicCache(config=lm.config)
    if ids:
        lm(input_ids=torch.tensor([ids], device=device), cache=cache, use_cache=True, logits_to_keep=1)
    if weights is not None:
        _PREFIXES[lm] = (key, cache)
    return cache


def _score_chunk(lm, embed: Embed, prefix, image_embeds, prompt: list[int], split: int,
                 continuations: list[list[int]], pad_id: int) -> torch.Tensor:
    dev = _device(lm)
    b = 1 if image_embeds is None else image_embeds.shape[0]
    n_labels = len(continuations)
    cache = copy.deepcopy(prefix)
    cache.batch_repeat_interleave(b)
    embeds = embed(torch.tensor([prompt[split:]] * b, device=dev), image_embeds)
    total = len(prompt)
    positions = torch.arange(split, total, device=dev).expand(b, -1)
    mask = torch.ones((b, total), dtype=torch.long, device=dev)
    last = lm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True,
              logits_to_keep=1).logits[:, -1].float()
    cache.batch_repeat_interleave(n_labels)
    width = max(len(c) for c in continuations)
    ids = torch.full((n_labels, width), pad_id, dtype=torch.long, device=dev)
    cont_mask = torch.zeros((n_labels, width), dtype=torch.long, device=dev)
    for j, c in enumerate(continuations):
        ids[j, : len(c)] = torch.tensor(c)
        cont_mask[j, : len(c)] = 1
    ids, cont_mask = ids.repeat(b, 1), cont_mask.repeat(b, 1)
    mask = torch.cat([torch.ones((b * n_labels, total), dtype=torch.long, device=dev), cont_mask], dim=1)
    positions = torch.arange(total, total + width, device=dev).expand(b * n_labels, -1)
    logits = lm(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True).logits.float()
    # Token 0 of each continuation is predicted by the prompt's last position, token t by continuation t-1.
    logits = torch.cat([last.repeat_interleave(n_labels, dim=0)[:, None], logits[:, :-1]], dim=1)
    logp = F.log_softmax(logits, dim=-1).gather(2, ids[:, :, None]).squeeze(2)
    mean = (logp * cont_mask).sum(dim=1) / cont_mask.sum(dim=1)
    return mean.view(b, n_labels)
