"""The one chat template of sLAVA.

Teacher output, training, evaluation and serving all render conversations
through this module, so a prompt seen in training is byte-for-byte the prompt
seen at inference. The tokenizer chooses the *format* (its ``chat_format``,
recorded in ``slava_tokenizer.json``). ``plain`` follows LLaVA-1.5
(plain-text roles, the tokenizer's end-of-sequence token closing each
answer), which works for the tiny default tokenizer and for any Hugging Face
base without role tokens:

    {system}

    USER: <image>
    Measured: {image context}
    {question}
    ASSISTANT: {answer}<eos>
    USER: {question 2}
    ASSISTANT: {answer 2}<eos>

``chatml`` is SmolLM2's own template (its end of turn ``<|im_end|>`` is the
tokenizer's eos), so the pretrained LM sees the layout it was tuned on:

    <|im_start|>system
    {system}<|im_end|>
    <|im_start|>user
    <image>
    Measured: {image context}
    {question}<|im_end|>
    <|im_start|>assistant
    {answer}<|im_end|>
    <|im_start|>user
    ...

The image context (``slava.measure.context``: what the toolkit and the data
bar give for the image) sits between the image and the question of the
image's human turn, as its own line starting ``Measured:``. Runs whose head
tags prompts (``HeadConfig.tags``) put a line ``Looks like: {class}`` before
it. ``user_turn`` is the one place that lays them out and ``question_of`` the
one that reads the question back.
Only answer tokens and their closing end-of-turn token are trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

SYSTEM_PROMPT = "You are sLAVA, an assistant that reads electron micrographs. Give sizes in nm."
"""Short on purpose: every training sequence and every prompt pays for it (19 SmolLM2 tokens)."""
IMAGE_TOKEN = "<image>"
USER = "USER:"
ASSISTANT = "ASSISTANT:"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
IGNORE_INDEX = -100
ROLES = {"human": USER, "gpt": ASSISTANT}
CONTEXT_PREFIX = "Measured:"
"""First word of the image-context line of a human turn."""
TAG_PREFIX = "Looks like:"
"""First words of the tag line: the class the run's head sees in the image (``HeadConfig.tags``)."""
CHAT_FORMATS = ("plain", "chatml")
"""``plain``: LLaVA-1.5's text roles; ``chatml``: ``<|im_start|>role ... <|im_end|>`` turns."""
_EOS_TEXT = {"plain": "</s>", "chatml": IM_END}


class ChatTokenizer(Protocol):
    """What the template needs from a tokenizer."""

    eos_id: int
    image_id: int
    bos_id: int | None
    # Optional: ``chat_format`` ("plain" when absent) picks the layout.

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` with no special tokens added."""


@dataclass(frozen=True)
class Segment:
    """A piece of a rendered conversation."""

    text: str
    target: bool = False
    eos: bool = False


class ChatFormatError(ValueError):
    """A conversation does not alternate human/gpt turns starting with the human, or names an unknown format."""


def role_markers(chat_format: str = "plain") -> tuple[str, ...]:
    """The strings that mark turns in ``chat_format``: an answer containing one leaks the template."""
    _check_format(chat_format)
    if chat_format == "chatml":
        return (IM_START, IM_END, USER, ASSISTANT)
    return (USER, ASSISTANT)


def _check_format(chat_format: str) -> None:
    if chat_format not in CHAT_FORMATS:
        raise ChatFormatError(f"unknown chat format {chat_format!r} (one of {', '.join(CHAT_FORMATS)})")


def render(
    conversations: Sequence[dict], system: str = SYSTEM_PROMPT, add_generation_prompt: bool = False,
    chat_format: str = "plain",
) -> list[Segment]:
    """Render LLaVA-style turns (``{"from": "human"|"gpt", "value": str}``) as segments in ``chat_format``.

    With ``add_generation_prompt`` the conversation must end on a human turn and
    the result ends with the assistant cue, ready for generation.
    """
    _check_format(chat_format)
    if not conversations:
        raise ChatFormatError("empty conversation")
    chatml = chat_format == "chatml"
    segments = [Segment(f"{IM_START}system\n{system}{IM_END}\n" if chatml else f"{system}\n\n")]
    for i, turn in enumerate(conversations):
        role = turn.get("from")
        expected = "human" if i % 2 == 0 else "gpt"
        if role != expected:
            raise ChatFormatError(f"turn {i} is from {role!r}, expected {expected!r}")
        value = str(turn.get("value", "")).strip()
        if role == "human":
            # The newline after the previous answer's end of turn belongs to this turn: generation stops at eos.
            prefix = "" if i == 0 else "\n"
            if chatml:
                segments.append(Segment(f"{prefix}{IM_START}user\n{value}{IM_END}\n{IM_START}assistant\n"))
            else:
                segments.append(Segment(f"{prefix}{USER} {value}\n{ASSISTANT}"))
        else:
            segments.append(Segment(value if chatml else f" {value}", target=True))
            segments.append(Segment("", target=True, eos=True))
    if add_generation_prompt and conversations[-1].get("from") != "human":
        raise ChatFormatError("a generation prompt needs the conversation to end on a human turn")
    return segments


def render_text(conversations: Sequence[dict], eos: str | None = None, chat_format: str = "plain", **kwargs) -> str:
    """The conversation as one string, the end-of-turn token spelled ``eos`` (default: the format's own)."""
    _check_format(chat_format)
    eos = _EOS_TEXT[chat_format] if eos is None else eos
    return "".join(eos if s.eos else s.text for s in render(conversations, chat_format=chat_format, **kwargs))


def user_turn(question: str, context: str | None = None, with_image: bool = True, tag: str | None = None) -> dict:
    """A human turn: the image placeholder (when ``with_image``), the tag and context lines (when given), the question.

    ``context`` is ``slava.measure.context.Context.text``; ``tag`` the class
    name the run's head gives the image, for runs whose prompts carry one.
    Teachers, training, the assistant, evaluation and the server all build the
    first turn here, so the model sees the same bytes in training and at inference.
    """
    lines = [IMAGE_TOKEN] if with_image else []
    if tag:
        if "\n" in tag:
            raise ChatFormatError(f"a tag is one line, got {tag!r}")
        lines.append(f"{TAG_PREFIX} {tag}")
    if context:
        if not context.startswith(CONTEXT_PREFIX) or "\n" in context:
            raise ChatFormatError(f"an image context is one line starting {CONTEXT_PREFIX!r}, got {context!r}")
        lines.append(context)
    lines.append(question.strip())
    return {"from": "human", "value": "\n".join(lines)}


def split_human(value: str) -> tuple[str | None, str]:
    """(image context or None, question) of a human turn's text; the image placeholder and tag line are dropped."""
    context, rest = None, []
    for line in str(value).replace(IMAGE_TOKEN, "\n").split("\n"):
        if line.startswith(CONTEXT_PREFIX) and context is None:
            context = line.strip()
        elif line.startswith(TAG_PREFIX):
            continue
        elif line.strip():
            rest.append(line.strip())
    return context, "\n".join(rest)


def question_of(value: str) -> str:
    """The question of a human turn's text, without image placeholder or context line."""
    return split_human(value)[1]


def encode(
    conversations: Sequence[dict],
    tokenizer: ChatTokenizer,
    num_image_tokens: int,
    max_len: int | None = None,
    add_generation_prompt: bool = False,
    system: str = SYSTEM_PROMPT,
) -> tuple[list[int], list[int]]:
    """Token ids and labels (``IGNORE_INDEX`` outside answers) of a conversation.

    Each ``<image>`` in the text becomes ``num_image_tokens`` copies of
    ``tokenizer.image_id``; the model writes image embeddings there. Segments
    are encoded separately so a prompt encodes identically at training and at
    generation time. The layout is the tokenizer's ``chat_format`` (``plain``
    when it has none). Returns sequences truncated to ``max_len`` when given.
    """
    ids: list[int] = [] if tokenizer.bos_id is None else [tokenizer.bos_id]
    labels: list[int] = [IGNORE_INDEX] * len(ids)
    chat_format = getattr(tokenizer, "chat_format", "plain")
    for seg in render(conversations, system=system, add_generation_prompt=add_generation_prompt, chat_format=chat_format):
        if seg.eos:
            piece = [tokenizer.eos_id]
        else:
            piece = []
            parts = seg.text.split(IMAGE_TOKEN)
            for j, part in enumerate(parts):
                if j:
                    piece.extend([tokenizer.image_id] * num_image_tokens)
                if part:
                    piece.extend(tokenizer.encode(part))
        ids.extend(piece)
        labels.extend(piece if seg.target else [IGNORE_INDEX] * len(piece))
    if max_len is not None:
        ids, labels = ids[:max_len], labels[:max_len]
    return ids, labels
