"""Where a text starts to loop: the word n-gram that appears a third time, or a run of words said twice in a row.

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
STUTTER_WORDS = 2
"""Fewest words (punctuation aside) in a run that, written again straight after itself, is a stutter
("class tubule, class tubule,"); one word said twice ("very, very") is English."""
STUTTER_RUN = 12
"""Longest run of words checked for a stutter."""


def loop_start(text: str, n: int = LOOP_NGRAM, times: int = LOOP_TIMES) -> int | None:
    """Character offset where ``text`` starts to loop, or None.

    A loop starts where some word n-gram appears for the ``times``-th time,
    or where a run of up to ``STUTTER_RUN`` words, ``STUTTER_WORDS`` of them not
    punctuation, begins again straight after itself (the second copy starts
    the loop). Greedy decoding drifts into such stutters ("class
    microtubule, class microtubule, class microtron, class microtron") that
    no n-gram repeats often enough to catch; none of the analytic teacher's
    3,367 demo answers has one.
    Words are matched lower-cased, so "Metal, metal, metal," repeats the
    n-gram ("metal", ",", "metal", ",") however the tokenizer split it.
    """
    spans = [(m.start(), m.group().lower()) for m in WORD.finditer(text)]
    words = [word for _, word in spans]
    seen: Counter = Counter()
    for i in range(len(words)):
        if i + n <= len(words):
            gram = tuple(words[i : i + n])
            seen[gram] += 1
            if seen[gram] >= times:
                return spans[i][0]
        # A stutter whose second copy starts here: the run of k words just before it, said again.
        for k in range(STUTTER_WORDS, min(STUTTER_RUN, i, len(words) - i) + 1):
            run = words[i - k : i]
            if words[i] == run[0] and run == words[i : i + k] and sum(w[0].isalnum() for w in run) >= STUTTER_WORDS:
                return spans[i][0]
    return None
