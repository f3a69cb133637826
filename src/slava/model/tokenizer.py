"""Tokenizers with the ChatTokenizer protocol of `slava.data.chat`.

Both kinds are a Hugging Face fast tokenizer underneath: the tiny default's
byte-level BPE trained here is wrapped in `PreTrainedTokenizerFast`, so saving,
loading and decoding take one path. The `<image>` placeholder is always a
special token; its embedding is overwritten by image embeddings. Each
tokenizer names the chat format `slava.data.chat` renders for it: "plain"
for the tiny one, "chatml" for a base whose own template uses
``<|im_start|>``/``<|im_end|>`` turns (SmolLM2).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from slava.data.chat import CHAT_FORMATS, IM_END, IM_START, IMAGE_TOKEN
from slava.errors import SlavaError

PAD, BOS, EOS = "<pad>", "<s>", "</s>"
_META = "slava_tokenizer.json"


class TokenizerError(SlavaError):
    """A tokenizer directory is missing or unusable."""


class SlavaTokenizer:
    """A Hugging Face tokenizer plus the ids the chat template and the model need."""

    def __init__(self, hf, eos_token: str, bos_token: str | None, pad_token: str, chat_format: str = "plain"):
        if chat_format not in CHAT_FORMATS:
            raise TokenizerError(f"unknown chat format {chat_format!r} (one of {', '.join(CHAT_FORMATS)})")
        self.hf = hf
        self.eos_token, self.bos_token, self.pad_token = eos_token, bos_token, pad_token
        self.chat_format = chat_format
        self.eos_id = hf.convert_tokens_to_ids(eos_token)
        self.bos_id = None if bos_token is None else hf.convert_tokens_to_ids(bos_token)
        self.pad_id = hf.convert_tokens_to_ids(pad_token)
        self.image_id = hf.convert_tokens_to_ids(IMAGE_TOKEN)

    @property
    def vocab_size(self) -> int:
        """Number of ids, added special tokens included."""
        return len(self.hf)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` with no special tokens added."""
        return self.hf.encode(text, add_special_tokens=False)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`, special tokens (eos, pad, image) dropped."""
        return self.hf.decode(list(ids), skip_special_tokens=True)

    def info(self) -> dict:
        """The special tokens and chat format, as written to `slava_tokenizer.json`."""
        return {"eos_token": self.eos_token, "bos_token": self.bos_token, "pad_token": self.pad_token,
                "image_token": IMAGE_TOKEN, "chat_format": self.chat_format}

    def save(self, directory: str | Path) -> None:
        """Write the tokenizer files and `slava_tokenizer.json` into `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.hf.save_pretrained(directory)
        (directory / _META).write_text(json.dumps(self.info(), indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> "SlavaTokenizer":
        """Load a tokenizer written by `save`."""
        from transformers import AutoTokenizer

        meta = Path(directory) / _META
        if not meta.is_file():
            raise TokenizerError(f"{directory}: no {_META}; not a sLAVA tokenizer directory")
        info = json.loads(meta.read_text())
        hf = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        # Directories written before chat formats existed are plain.
        return cls(hf, info["eos_token"], info["bos_token"], info["pad_token"], info.get("chat_format", "plain"))


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> SlavaTokenizer:
    """Train a byte-level BPE on `texts`; specials `<pad>`=0, `<s>`=1, `</s>`=2 (end of turn), `<image>`=3."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [PAD, BOS, EOS, IMAGE_TOKEN]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, bos_token=BOS, eos_token=EOS, additional_special_tokens=[IMAGE_TOKEN]
    )
    return SlavaTokenizer(hf, EOS, BOS, PAD)


def from_pretrained_dir(path: str | Path) -> SlavaTokenizer:
    """The tokenizer of a local Hugging Face model directory, with `<image>` added as a special token.

    End of turn is the tokenizer's eos token; bos is used only when the
    tokenizer adds one itself; padding falls back to eos. A tokenizer whose
    vocabulary and chat template carry ``<|im_start|>``/``<|im_end|>``
    (SmolLM2) gets the "chatml" format, ending each turn with ``<|im_end|>``.
    """
    from transformers import AutoTokenizer

    try:
        hf = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise TokenizerError(f"cannot load a tokenizer from {path}: {exc}") from exc
    vocab = hf.get_vocab()
    chatml = IM_START in vocab and IM_END in vocab and IM_START in str(getattr(hf, "chat_template", None) or "")
    if chatml:
        hf.eos_token = IM_END
    if hf.eos_token is None:
        raise TokenizerError(f"{path}: the tokenizer has no eos token to end a turn")
    if IMAGE_TOKEN not in vocab:
        hf.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    probe = hf("a", add_special_tokens=True)["input_ids"]
    bos = hf.bos_token if hf.bos_token is not None and probe and probe[0] == hf.bos_token_id else None
    return SlavaTokenizer(hf, hf.eos_token, bos, hf.pad_token or hf.eos_token, "chatml" if chatml else "plain")
