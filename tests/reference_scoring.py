"""The plain reference for continuation scoring: one full-sequence forward per image, no KV cache."""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def plain_scores(model, image_embeds: torch.Tensor | None, prompt: list[int], continuations: list[list[int]]) -> torch.Tensor:
    """Mean log-probability per token [B, L] of each continuation, from the log-softmax of full forwards.

    ``image_embeds`` None scores a text-only prompt (B = 1).
    """
    model.eval()
    rows = [prompt + c for c in continuations]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), model.tokenizer.pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    out = []
    for image in [None] if image_embeds is None else image_embeds:
        embeds = model.embed(ids, None if image is None else image[None].expand(len(rows), -1, -1))
        logits = model.lm(inputs_embeds=embeds, attention_mask=mask, use_cache=False).logits
        logp = F.log_softmax(logits[:, :-1].float(), dim=-1).gather(2, ids[:, 1:, None]).squeeze(2)
        start = len(prompt) - 1
        out.append(torch.stack([logp[i, start : start + len(c)].mean() for i, c in enumerate(continuations)]))
    return torch.stack(out)
