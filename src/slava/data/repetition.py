"""Where a text starts to loop: the word n-gram that appears a third time.

One definition serves the decoder, which ends an answer before it loops,
and the evaluation, which counts the answers that loop anyway.
"""

from __future__ import annotations

import re
from collections import Counter

WORD = re.compile(r"[a-z0-9]+(?:[.'][a-z0-9]+)*|[^\sa-z0-9]", re.IGNORECASE)
"""A word: letters and digits (``12.5`` and ``it's`` kept whole), or one punctuation mark."""
LOOP_NGRAM = 4
"""Words in the n-gram whose repeats make a loop."""
LOOP_TIMES = 3
"""Appearances of one n-gram that make a loop."""


def loop_start(text: str, n: int = LOOP_NGRAM, times: int = LOOP_TIMES) -> int | None:
    """Character offset where some word n-gram of ``text`` appears for the ``times``-th time, or None.

    Words are matched lower-cased, so "Metal, metal, metal," repeats the
    n-gram ("metal", ",", "metal", ",") however the tokenizer split it.
    """
    spans = [(m.start(), m.group().lower()) for m in WORD.finditer(text)]
    seen: Counter = Counter()
    for i in range(len(spans) - n + 1):
        gram = tuple(word for _, word in spans[i : i + n])
        seen[gram] += 1
        if seen[gram] >= times:
            return spans[i][0]
    return None
