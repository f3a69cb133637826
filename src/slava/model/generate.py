"""Decoding a causal LM from prompt embeddings: greedy, top-p and beam search over its KV cache.

The prompt step runs on embeddings (`inputs_embeds`: the caller has written
any image tokens in); later steps feed one token id per row. A float32 Llama
runs both on `fast_llama`'s decoder; any other LM runs through its own
forward and cache. Prompts arrive left-padded with a mask, and positions are
counted over real tokens only, so a padded row decodes exactly like an
unpadded one.

Hygiene holds for every strategy: decoding stops at the end-of-turn token,
at ``max_new_tokens``, and where a stop string (a role marker such as
``ASSISTANT:``) begins, which is cut off; and no token n-gram
(``GenerationConfig.loop_ngram``) appears a third time: the token that would
complete it is banned at that step. Tokens split the same words in many
ways ("metal," and "metal" + ","), so a row whose text repeats a word
n-gram a third time, or says a run of words twice in a row
(``slava.data.repetition``), also ends, before it.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from slava.data.repetition import loop_start
from slava.model.fast_llama import Session, decoder_for
from slava.model.quant import compute_dtype

STRATEGIES = ("greedy", "beam", "top_p")


@dataclass(frozen=True)
class GenerationConfig:
    """How to decode: how long, by which strategy, and that strategy's settings."""

    max_new_tokens: int = 64
    """Most new tokens per prompt; the end-of-turn token stops earlier and is not returned."""
    strategy: str = "greedy"
    """``greedy``, ``beam`` or ``top_p``."""
    num_beams: int = 4
    """Hypotheses beam search keeps per prompt; the best by length-normalised log-probability wins."""
    top_p: float = 0.9
    """Nucleus mass top-p sampling draws from (a vanishing nucleus is greedy)."""
    temperature: float = 1.0
    """Softmax temperature of top-p sampling."""
    seed: int | None = None
    """Seed of top-p sampling, for repeatable output; None draws from torch's global generator."""
    loop_ngram: int = 4
    """Loop guard: no token n-gram of this length appears a third time in an answer, and an answer ends
    before a word n-gram of this length would (0 turns both off)."""

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown decoding strategy {self.strategy!r} (one of {', '.join(STRATEGIES)})")
        if self.loop_ngram < 0 or self.loop_ngram == 1:
            raise ValueError(f"loop_ngram is 0 (off) or at least 2, got {self.loop_ngram}")
        if self.max_new_tokens < 0 or self.num_beams < 1:
            raise ValueError(f"need max_new_tokens >= 0 and num_beams >= 1, got {self.max_new_tokens}, {self.num_beams}")


@contextlib.contextmanager
def evaluating(module: nn.Module) -> Iterator[None]:
    """Run ``module`` in eval mode inside the block; every submodule gets its own mode back after."""
    # Flags, not `train()`/`eval()`: those recurse through every module's method (3.7 ms per pair on the
    # tiny model, whose EfficientNet tower has many modules: about one decoding step) and set one mode for all.
    training = [m for m in module.modules() if m.training]
    for m in training:
        m.training = False
    try:
        yield
    finally:
        for m in training:
            m.training = True


@dataclass(frozen=True)
class SharedPrompts:
    """Prompts split into distinct prefixes and per-row suffixes, left-padded: row b is ``prefix[rows[b]] + suffix[b]``."""

    prefix: torch.Tensor
    """Embeddings [G, P, D]."""
    prefix_mask: torch.Tensor
    rows: torch.Tensor
    """Each row's prefix [B]."""
    suffix: torch.Tensor
    """Embeddings [B, S, D], at least one real token a row."""
    suffix_mask: torch.Tensor


def left_pad(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids [B, T] of ``rows`` padded on the left with ``pad``, and the mask [B, T] of real tokens."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r) :] = torch.tensor(r)
            mask[i, width - len(r) :] = 1
    return ids, mask


class _HFSteps:
    """Prompt and decoding steps through the HF model's own forward and cache (any architecture)."""

    def __init__(self, lm: nn.Module) -> None:
        self.lm = lm

    def prefill(self, embeds: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Logits [B, V] after the prompt embeddings; fills the cache."""
        from transformers import DynamicCache

        self.cache, self.mask = DynamicCache(config=self.lm.config), mask
        out = self.lm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, cache=self.cache,
                      use_cache=True, logits_to_keep=1)
        return out.logits[:, -1].float()

    def step(self, tokens: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """Logits [B, V] after one more token per row at ``position`` [B, 1]."""
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)
        out = self.lm(input_ids=tokens[:, None], attention_mask=self.mask, position_ids=position, cache=self.cache,
                      use_cache=True)
        return out.logits[:, -1].float()

    def reorder(self, index: torch.Tensor) -> None:
        """Rows of the cache become rows ``index`` (beam search; repeating row 0 widens the batch)."""
        self.cache.reorder_cache(index)
        self.mask = self.mask[index]

    def finish(self) -> None:
        """Nothing to hand back: the HF layers count their own expert usage."""


def _steps(lm: nn.Module, max_new: int) -> _HFSteps | Session:
    # Weights in the dtype the linears compute in: under bf16 autocast, bf16 copies are not cast again every step.
    decoder = decoder_for(lm, compute_dtype(lm.get_input_embeddings().weight))
    return _HFSteps(lm) if decoder is None else Session(decoder, max_new)


def _ban(logits: torch.Tensor, banned_ids: list[int]) -> torch.Tensor:
    if banned_ids:
        logits[:, banned_ids] = float("-inf")
    return logits


_PIECE = re.compile(r"^ ?[0-9.,]+$")


def number_pieces(decode: Callable[[list[int]], str], vocab_size: int) -> dict[int, str]:
    """The tokens that write part of a number (digits, ``.`` and ``,``, maybe after one space), with their text."""
    pieces = {}
    for i in range(vocab_size):
        text = decode([i])
        if _PIECE.match(text) and any(c.isdigit() or c in ".," for c in text):
            pieces[i] = text
    return pieces


class NumberGuard:
    """Digits may only spell numbers a row's prompt holds, so no answer states a number of its own.

    ``pieces`` are the tokens that write part of a number (``number_pieces``);
    ``allowed[b]`` the numbers row b may state, as written there (``1,234``
    also allows ``1234``). A number being written may only grow into an allowed
    one, and may end only where it is one; a ``.`` or ``,`` after a whole
    number is punctuation. Tokens mixing digits and letters are not guarded.
    """

    def __init__(self, pieces: dict[int, str], allowed: Sequence[Sequence[str]], vocab_size: int):
        self.pieces = pieces
        self.whole = [set(a) | {x.replace(",", "") for x in a} for a in allowed]
        self.prefixes = [{x[:k] for x in whole for k in range(1, len(x) + 1)} for whole in self.whole]
        self.fragment = [""] * len(allowed)
        self.others = torch.ones(vocab_size, dtype=torch.bool)
        self.others[list(pieces)] = False

    def _grown(self, row: int, text: str) -> str:
        return text.lstrip(" ") if text.startswith(" ") else self.fragment[row] + text

    def push(self, row: int, token: int) -> None:
        """Row ``row`` emitted ``token``."""
        text = self.pieces.get(token)
        grown = None if text is None else self._grown(row, text)
        self.fragment[row] = grown if grown and grown[0].isdigit() else ""

    def mask(self, logits: torch.Tensor, rows: Sequence[int]) -> torch.Tensor:
        """``logits`` [len(rows), V] with every token banned that would write a number the row may not state."""
        for k, row in enumerate(rows):
            done = self.fragment[row].rstrip(".,")
            closed = not done or done in self.whole[row]
            banned = []
            for token, text in self.pieces.items():
                grows = self._grown(row, text) in self.prefixes[row] and (closed or not text.startswith(" "))
                punctuation = closed and not any(c.isdigit() for c in text)
                if not (grows or punctuation):
                    banned.append(token)
            if banned:
                logits[k, banned] = float("-inf")
            if not closed:
                logits[k, self.others.to(logits.device)] = float("-inf")
        return logits


MAX_NGRAM_REPEATS = 2
"""An n-gram may appear this often in an answer; the guard bans the token that would add another."""


def loop_bans(tokens: Sequence[int], n: int) -> list[int]:
    """Tokens that would make the n-gram ending them appear a third time in ``tokens`` (none when ``n`` is 0)."""
    if n < 2 or len(tokens) < n:
        return []
    head = tuple(tokens[len(tokens) - n + 1 :])
    seen: dict[int, int] = {}
    for i in range(len(tokens) - n + 1):
        if tuple(tokens[i : i + n - 1]) == head:
            t = tokens[i + n - 1]
            seen[t] = seen.get(t, 0) + 1
    return [t for t, count in seen.items() if count >= MAX_NGRAM_REPEATS]


def _ban_loops(logits: torch.Tensor, rows: Sequence[Sequence[int]], n: int) -> torch.Tensor:
    for i, row in enumerate(rows):
        ids = loop_bans(row, n)
        if ids:
            logits[i, ids] = float("-inf")
    return logits


class StopStrings:
    """Where decoded text reaches a stop string or starts to loop: the row ends there and the rest is cut off.

    ``loops`` (the word n-gram length, 0 for off) also ends a row where a word
    n-gram of its text appears a third time or a run of words is said twice
    in a row (``slava.data.repetition.loop_start``).
    """

    def __init__(self, strings: Sequence[str], decode: Callable[[list[int]], str] | None, loops: int = 0):
        self.strings = [s for s in strings if s]
        self.loops = loops
        self.decode = decode if self.strings or loops else None

    def cut(self, tokens: list[int]) -> list[int] | None:
        """``tokens`` shortened to end before the first stop string or loop in their text, or None when there is none."""
        if self.decode is None or not tokens:
            return None
        text = self.decode(tokens)
        found = [i for i in (text.find(s) for s in self.strings) if i >= 0]
        if self.loops and (start := loop_start(text, self.loops)) is not None:
            found.append(start)
        if not found:
            return None
        start = min(found)
        kept = list(tokens)
        # Drop tokens until the text ends before the marker (a token may hold text and the marker's start).
        while kept and len(self.decode(kept).rstrip()) > len(text[:start].rstrip()):
            kept.pop()
        return kept


def _sample_top_p(logits: torch.Tensor, top_p: float, temperature: float, generator) -> torch.Tensor:
    # In fp32 and a stable sort: bf16 logits tie often, and the nucleus's first token must be greedy's (argmax's first).
    probs = F.softmax(logits.float() / max(temperature, 1e-5), dim=-1)
    sorted_p, order = probs.sort(dim=-1, descending=True, stable=True)
    # Keep the smallest prefix whose mass reaches top_p (always at least one token).
    outside = sorted_p.cumsum(dim=-1) - sorted_p >= top_p
    sorted_p = sorted_p.masked_fill(outside, 0.0)
    choice = torch.multinomial(sorted_p, 1, generator=generator)
    return order.gather(1, choice).squeeze(1)


@torch.no_grad()
def generate(
    lm: nn.Module,
    embeds: torch.Tensor,
    config: GenerationConfig,
    *,
    eos_id: int,
    mask: torch.Tensor | None = None,
    banned_ids: Sequence[int] = (),
    should_stop: Callable[[], bool] | None = None,
    stop_strings: Sequence[str] = (),
    decode: Callable[[list[int]], str] | None = None,
    shared: SharedPrompts | None = None,
    numbers: NumberGuard | None = None,
) -> list[list[int]]:
    """New token ids for each row of prompt embeddings ``embeds`` [B, T, D], stopping at ``eos_id`` (not returned).

    ``shared``, the same prompts as distinct prefixes and per-row suffixes,
    lets the fast decoder run each shared prefix once (greedy and top-p; the
    HF fallback and beam search use ``embeds``). ``numbers`` keeps every
    number a row writes to one its prompt holds (greedy and top-p).

    ``mask`` [B, T] marks the real tokens of left-padded rows (None: all are
    real). ``banned_ids`` are never emitted. ``lm`` runs in eval mode and gets
    its mode back. ``should_stop``, when given, is asked between tokens (greedy
    and top-p); True ends every row where it stands (the caller left).
    ``stop_strings`` (role markers), found in the text ``decode`` gives a row,
    end that row before them; the tokens returned stop short of the marker.
    So does a word n-gram of ``config.loop_ngram`` words appearing a third
    time in that text.
    """
    if embeds.shape[0] == 0:
        return []
    if mask is None:
        mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
    banned = list(banned_ids)
    stops = StopStrings(stop_strings, decode, config.loop_ngram)
    with evaluating(lm):
        if config.strategy == "beam":
            # One search per prompt, on its real tokens only; a marker is cut from the winner.
            found = [
                _beam(lm, embeds[i : i + 1, mask[i].bool()], config, eos_id, banned) for i in range(embeds.shape[0])
            ]
            return [c if (c := stops.cut(row)) is not None else row for row in found]
        return _decode(lm, embeds, mask, config, eos_id, banned, should_stop, stops, shared, numbers)


def _decode(lm, embeds, mask, config: GenerationConfig, eos_id: int, banned: list[int],
            should_stop: Callable[[], bool] | None = None, stops: StopStrings | None = None,
            shared: SharedPrompts | None = None, numbers: NumberGuard | None = None) -> list[list[int]]:
    generator = None if config.seed is None else torch.Generator(device=embeds.device).manual_seed(config.seed)
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    steps = _steps(lm, config.max_new_tokens)
    rows = embeds.shape[0]
    out: list[list[int]] = [[] for _ in range(rows)]
    done = [False] * rows
    live = list(range(rows))
    """The rows still decoding, in the order of the current logits and cache rows."""
    try:
        if shared is not None and isinstance(steps, Session):
            logits, position = steps.prefill_shared(shared.prefix, shared.prefix_mask, shared.rows, shared.suffix,
                                                    shared.suffix_mask)
        else:
            logits = steps.prefill(embeds, mask, positions)
            position = positions[:, -1:]
        for step in range(config.max_new_tokens):
            logits = _ban(logits, banned)
            if numbers is None:
                logits = _ban_loops(logits, [out[i] for i in live], config.loop_ngram)
            else:
                plain = logits.clone()
                logits = numbers.mask(_ban_loops(logits, [out[i] for i in live], config.loop_ngram), live)
                # A number half written whose only continuation the loop guard bans: finishing it comes first.
                stuck = (~torch.isfinite(logits).any(dim=-1)).nonzero().flatten().tolist()
                if stuck:
                    logits[stuck] = numbers.mask(plain[stuck], [live[k] for k in stuck])
            if config.strategy == "greedy":
                tokens = logits.argmax(dim=-1)
            else:
                tokens = _sample_top_p(logits, config.top_p, config.temperature, generator)
            for i, t in zip(live, tokens.tolist()):
                done[i] = t == eos_id
                if not done[i]:
                    out[i].append(t)
                    if numbers is not None:
                        numbers.push(i, t)
                    cut = stops.cut(out[i]) if stops is not None else None
                    if cut is not None:
                        out[i], done[i] = cut, True
            if all(done) or step == config.max_new_tokens - 1 or (should_stop is not None and should_stop()):
                break
            keep = [k for k, i in enumerate(live) if not done[i]]
            if len(keep) < len(live):
                # Finished rows leave the batch: each step then computes only the answers still being written.
                index = torch.tensor(keep, device=tokens.device)
                steps.reorder(index)
                tokens, position, live = tokens[index], position[index], [live[k] for k in keep]
            position = position + 1
            logits = steps.step(tokens, position)
    finally:
        steps.finish()
    return out


def _beam(lm, embeds, config: GenerationConfig, eos_id: int, banned: list[int]) -> list[int]:
    mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    steps = _steps(lm, config.max_new_tokens)
    beams = config.num_beams
    try:
        logits = steps.prefill(embeds, mask, positions)
        steps.reorder(torch.zeros(beams, dtype=torch.long))
        return _beam_search(
            steps, logits.repeat(beams, 1), positions[:, -1:].repeat(beams, 1), config.max_new_tokens, beams, eos_id,
            banned, config.loop_ngram,
        )
    finally:
        steps.finish()


def _beam_search(steps, logits, position, max_new_tokens: int, num_beams: int, eos: int, banned: list[int],
                 loop_ngram: int = 0) -> list[int]:
    # Only the first beam is live at the start, so the first expansion is not duplicated.
    scores = torch.full((num_beams,), float("-inf"))
    scores[0] = 0.0
    beams: list[list[int]] = [[] for _ in range(num_beams)]
    finished: list[tuple[float, list[int]]] = []
    for step in range(max_new_tokens):
        logp = F.log_softmax(_ban_loops(_ban(logits, banned), beams, loop_ngram), dim=-1)
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
