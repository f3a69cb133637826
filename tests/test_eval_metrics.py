"""Metrics against values computed by hand."""

import math

import pytest

from slava.eval import metrics as M


def test_bleu_identical_is_100_and_known_precisions():
    assert M.bleu(["the cat sat on the mat"], ["the cat sat on the mat"], 4) == pytest.approx(100.0)
    # Unigrams 5/6, bigrams 3/5 (the cat, cat sat, sat on), equal lengths so no brevity penalty:
    # BLEU-2 = sqrt(5/6 * 3/5) = sqrt(1/2).
    assert M.bleu(["the cat sat on the mat"], ["the cat sat on a mat"], 2) == pytest.approx(100 * math.sqrt(0.5))


def test_bleu_brevity_penalty():
    # Hypothesis of 3 words against 6: all n-grams match, BP = exp(1 - 6/3).
    assert M.bleu(["the cat sat"], ["the cat sat on the mat"], 2) == pytest.approx(100 * math.exp(-1))


def test_meteor_synonym_beats_exact_only_by_hand():
    # All three words match ("auto" is a WordNet synonym of "car"), one chunk:
    # Fmean = 1, penalty = 0.5 * (1/3)^3, score = 1 - 1/54.
    synonym = M.meteor(["the auto stopped"], ["the car stopped"])
    assert synonym == pytest.approx(1 - 1 / 54)
    # A word with no synonym relation: 2 of 3 match in 2 chunks, Fmean = 2/3, penalty = 0.5.
    unrelated = M.meteor(["the tree stopped"], ["the car stopped"])
    assert unrelated == pytest.approx(1 / 3)


def test_tokenize_keeps_numbers_and_splits_punctuation():
    assert M.tokenize("The mean is 12.5 nm.") == ["the", "mean", "is", "12.5", "nm", "."]


def test_rouge_l_is_lcs_f_measure():
    # LCS("the brown fox", "the quick brown fox jumps") = 3: P = 1, R = 3/5, F = 2PR/(P+R) = 0.75.
    assert M.rouge_l(["the brown fox"], ["the quick brown fox jumps"]) == pytest.approx(0.75)
    # Averaged per sentence: (0.75 + 1) / 2.
    assert M.rouge_l(["the brown fox", "a b"], ["the quick brown fox jumps", "a b"]) == pytest.approx(0.875)


def test_classification_by_hand():
    truth = ["a", "a", "b", "b", "c"]
    pred = ["a", "b", "b", "b", "a"]
    # a: P=1/2 R=1/2 F=1/2; b: P=2/3 R=1 F=4/5; c: F=0 -> macro (0.5 + 0.8 + 0) / 3.
    assert M.macro_f1(truth, pred) == pytest.approx(1.3 / 3)
    assert M.confusion(truth, pred, ["a", "b", "c"]) == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    ranked = [["a", "b", "c"], ["b", "a", "c"], ["b", "c", "a"], ["b", "a", "c"], ["a", "b", "c"]]
    assert M.topk_accuracy(truth, ranked, 1) == pytest.approx(3 / 5)
    assert M.topk_accuracy(truth, ranked, 2) == pytest.approx(4 / 5)
    assert M.topk_accuracy(truth, ranked, 3) == pytest.approx(1.0)
    scores = M.classification_scores(truth, ranked, ["a", "b", "c"])
    assert scores["top1"] == pytest.approx(0.6) and scores["chance"] == pytest.approx(0.4)


def test_mae_and_mape():
    assert M.mae([10, 20, 30], [12, 18, 30]) == pytest.approx(4 / 3)
    # |12-10|/10 = 20 %, |18-20|/20 = 10 %, 0 %; the zero-truth pair is left out of MAPE.
    assert M.mape([10, 20, 30, 0], [12, 18, 30, 5]) == pytest.approx(10.0)
    assert math.isnan(M.mape([0], [1]))
    with pytest.raises(ValueError):
        M.mae([1], [1, 2])
