"""Scores for generated text, classification and measurement.

Text (one reference per hypothesis, as the teacher writes one answer):

- ``bleu``: sacrebleu *corpus* BLEU with ``max_ngram_order`` 2 or 4 and its
  default ``13a`` tokenisation, on sacrebleu's 0–100 scale. Corpus BLEU pools
  n-gram counts over all sentences, so short answers with no 4-gram match do
  not zero the score the way sentence BLEU would.
- ``meteor``: nltk's ``meteor_score`` (exact, Porter-stem and WordNet 3.0
  synonym matches) per sentence, averaged; 0–1. nltk matches synonyms after
  stemming, so a synonym only counts when its stem is still a WordNet lemma.
- ``rouge_l``: rouge-score's ROUGE-L F-measure per sentence, averaged; 0–1.

Classification: ``topk_accuracy`` from ranked labels, ``macro_f1`` and
``confusion`` from scikit-learn. Measurement: ``mae`` and ``mape``.
"""

from __future__ import annotations

from collections import Counter
from typing import Sequence

from slava.data.repetition import LOOP_NGRAM, LOOP_TIMES, WORD, loop_start


def tokenize(text: str) -> list[str]:
    """Lower-cased words, numbers (``12.5`` kept whole) and single punctuation marks."""
    return WORD.findall(text.lower())


def _check_pairs(hyps: Sequence, refs: Sequence) -> None:
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} references")


def bleu(hyps: Sequence[str], refs: Sequence[str], max_n: int = 4) -> float:
    """Corpus BLEU-``max_n`` (0–100) of ``hyps`` against one reference each; 0.0 for no pairs."""
    from sacrebleu.metrics import BLEU

    _check_pairs(hyps, refs)
    if not hyps:
        return 0.0
    return float(BLEU(max_ngram_order=max_n).corpus_score(list(hyps), [list(refs)]).score)


def meteor(hyps: Sequence[str], refs: Sequence[str]) -> float:
    """Mean sentence METEOR (0–1, nltk with WordNet 3.0) of ``hyps`` against one reference each."""
    from nltk.translate.meteor_score import meteor_score

    _check_pairs(hyps, refs)
    if not hyps:
        return 0.0
    scores = [meteor_score([tokenize(r)], tokenize(h)) for h, r in zip(hyps, refs)]
    return float(sum(scores) / len(scores))


def rouge_l(hyps: Sequence[str], refs: Sequence[str]) -> float:
    """Mean sentence ROUGE-L F-measure (0–1, rouge-score, no stemming) of ``hyps`` against one reference each."""
    from rouge_score.rouge_scorer import RougeScorer

    _check_pairs(hyps, refs)
    if not hyps:
        return 0.0
    scorer = RougeScorer(["rougeL"], use_stemmer=False)
    scores = [scorer.score(r, h)["rougeL"].fmeasure for h, r in zip(hyps, refs)]
    return float(sum(scores) / len(scores))


def text_scores(hyps: Sequence[str], refs: Sequence[str]) -> dict[str, float]:
    """BLEU-2, BLEU-4 (0–100), METEOR and ROUGE-L (0–1) and the number of pairs ``n``."""
    return {
        "bleu2": bleu(hyps, refs, 2),
        "bleu4": bleu(hyps, refs, 4),
        "meteor": meteor(hyps, refs),
        "rouge_l": rouge_l(hyps, refs),
        "n": len(hyps),
    }


def has_loop(text: str, n: int = LOOP_NGRAM, times: int = LOOP_TIMES) -> bool:
    """Whether some word n-gram of ``text`` (``tokenize``) appears ``times`` times or more: the answer loops."""
    return loop_start(text, n, times) is not None


def marker_count(text: str, markers: Sequence[str]) -> int:
    """How many times any of ``markers`` (role markers such as ``ASSISTANT:``) occurs in ``text``."""
    return sum(text.count(m) for m in markers if m)


def hygiene(answers: Sequence[dict], markers: Sequence[str]) -> dict:
    """Invented and misplaced numbers, role markers and loops over generated answers
    (``{"answer", "invented", "misplaced"}`` rows).

    The goals are 0 of each; ``examples`` shows up to five offending answers.
    """
    bad = []
    invented = misplaced = markers_found = loops = with_invented = 0
    for a in answers:
        n_inv, n_mis = len(a.get("invented") or ()), len(a.get("misplaced") or ())
        n_mark, loop = marker_count(a["answer"], markers), has_loop(a["answer"])
        invented += n_inv
        misplaced += n_mis
        with_invented += bool(n_inv)
        markers_found += n_mark
        loops += loop
        if (n_inv or n_mis or n_mark or loop) and len(bad) < 5:
            bad.append({"answer": a["answer"], "invented": list(a.get("invented") or ()),
                        "misplaced": list(a.get("misplaced") or ()), "role_markers": n_mark, "loop": loop})
    return {"generated": len(answers), "invented_numbers": invented, "answers_with_invented": with_invented,
            "misplaced_numbers": misplaced, "role_markers": markers_found, "loops": loops, "examples": bad}


def topk_accuracy(truth: Sequence[str], ranked: Sequence[Sequence[str]], k: int) -> float:
    """Fraction of items whose true label is among the first ``k`` of its ranked labels."""
    _check_pairs(truth, ranked)
    if not truth:
        return 0.0
    return sum(t in list(r)[:k] for t, r in zip(truth, ranked)) / len(truth)


def macro_f1(truth: Sequence[str], pred: Sequence[str], labels: Sequence[str] | None = None) -> float:
    """Unweighted mean of per-class F1 over ``labels`` (default: every label in truth or predictions)."""
    from sklearn.metrics import f1_score

    _check_pairs(truth, pred)
    if not truth:
        return 0.0
    return float(f1_score(list(truth), list(pred), labels=list(labels) if labels else None, average="macro", zero_division=0))


def confusion(truth: Sequence[str], pred: Sequence[str], labels: Sequence[str]) -> list[list[int]]:
    """Confusion matrix as nested lists: row = true label, column = predicted label, in ``labels`` order."""
    from sklearn.metrics import confusion_matrix

    _check_pairs(truth, pred)
    if not truth:
        return [[0] * len(labels) for _ in labels]
    return confusion_matrix(list(truth), list(pred), labels=list(labels)).tolist()


def chance_accuracy(truth: Sequence[str]) -> float:
    """Accuracy of the best constant answer: the frequency of the commonest true label."""
    if not truth:
        return 0.0
    return Counter(truth).most_common(1)[0][1] / len(truth)


def classification_scores(truth: Sequence[str], ranked: Sequence[Sequence[str]], labels: Sequence[str]) -> dict:
    """Top-1, top-3, macro-F1 (over ``labels``), confusion matrix, chance level and ``n``."""
    pred = [r[0] if r else "" for r in ranked]
    return {
        "top1": topk_accuracy(truth, ranked, 1),
        "top3": topk_accuracy(truth, ranked, 3),
        "macro_f1": macro_f1(truth, pred, labels),
        "chance": chance_accuracy(truth),
        "labels": list(labels),
        "confusion": confusion(truth, pred, labels),
        "n": len(truth),
    }


def mae(truth: Sequence[float], pred: Sequence[float]) -> float:
    """Mean absolute error; NaN for no pairs."""
    _check_pairs(truth, pred)
    if not truth:
        return float("nan")
    return sum(abs(float(p) - float(t)) for t, p in zip(truth, pred)) / len(truth)


def mape(truth: Sequence[float], pred: Sequence[float]) -> float:
    """Mean absolute percentage error (in %) over the pairs with a non-zero truth; NaN when none has."""
    _check_pairs(truth, pred)
    pairs = [(float(t), float(p)) for t, p in zip(truth, pred) if float(t) != 0.0]
    if not pairs:
        return float("nan")
    return 100.0 * sum(abs(p - t) / abs(t) for t, p in pairs) / len(pairs)
