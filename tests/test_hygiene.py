"""Generation hygiene on crafted logits: a model that wants to loop, to write a role marker, to run on."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import GPT2Config

from slava.data.chat import role_markers
from slava.data.repetition import loop_start
from slava.eval.metrics import has_loop, hygiene, marker_count
from slava.model.generate import GenerationConfig, StopStrings, generate, loop_bans

VOCAB = 12
PIECES = {0: "<eos>", 1: "SEM", 2: " image.", 3: "\n", 4: "ASSIST", 5: "ANT:", 6: " A cone", 7: "<|im_start|>",
          8: " of", 9: " a", 10: " tip", 11: "."}


def decode(ids: list[int]) -> str:
    return "".join(PIECES[i] for i in ids)


class ScriptedLM(nn.Module):
    """A causal LM whose next token is a fixed function of the last one (``follow``); the prompt leads to ``first``.

    Each step's second choice is token ``fallback``, so a ban shows as that token; the end of turn (0) is
    the last choice unless ``follow`` names it. Not a Llama, so
    decoding runs through the generic HF path like any other architecture.
    """

    def __init__(self, follow: dict[int, int], first: int, fallback: int = 11):
        super().__init__()
        self.config = GPT2Config(n_layer=1, n_head=1, n_embd=4, vocab_size=VOCAB, bos_token_id=0, eos_token_id=0)
        self.embed = nn.Embedding(VOCAB, 4)
        self.follow, self.first, self.fallback = follow, first, fallback

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed

    def _logits(self, best: list[int]) -> torch.Tensor:
        # Every other token ranked below the two choices, the end of turn last: the model never wants to stop.
        logits = (0.01 * torch.arange(VOCAB, dtype=torch.float32)).repeat(len(best), 1, 1)
        logits[:, :, 0] = -10.0
        for i, b in enumerate(best):
            logits[i, 0, self.fallback] = 5.0
            logits[i, 0, b] = 10.0
        return logits

    def forward(self, input_ids=None, inputs_embeds=None, **_):
        if inputs_embeds is not None:
            return type("Out", (), {"logits": self._logits([self.first] * inputs_embeds.shape[0])})
        return type("Out", (), {"logits": self._logits([self.follow.get(t, self.fallback) for t in input_ids[:, -1].tolist()])})


def _generate(lm, config, **kwargs):
    return generate(lm, torch.zeros(1, 3, 4), config, eos_id=0, **kwargs)[0]


def _ngram_counts(ids, n=4):
    grams = [tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)]
    return max((grams.count(g) for g in grams), default=0)


def test_loop_bans_name_the_token_that_would_repeat_a_4gram_a_third_time():
    assert loop_bans([1, 2, 3, 4, 1, 2, 3], 4) == []  # a second time is allowed
    assert loop_bans([1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3], 4) == [4]
    assert loop_bans([1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3], 0) == []
    assert loop_bans([5, 5, 5, 5, 5], 4) == [5]


@pytest.mark.parametrize("strategy", ["greedy", "beam", "top_p"])
def test_a_model_that_wants_to_loop_never_repeats_a_4gram_three_times(strategy):
    lm = ScriptedLM({1: 8, 8: 9, 9: 10, 10: 1, 11: 1}, first=1)  # "SEM of a tip SEM of a tip ..." forever
    config = GenerationConfig(max_new_tokens=30, strategy=strategy, num_beams=2, top_p=0.01, seed=0)
    out = _generate(lm, config)
    assert _ngram_counts(out) <= 2, out
    assert 11 in out  # the guard made it take its second choice
    assert len(out) == 30  # no end of turn wanted: it runs to max_new_tokens and not one token further
    # Without the guard the same model loops: the test can fail.
    unguarded = _generate(lm, GenerationConfig(max_new_tokens=30, strategy=strategy, num_beams=2, top_p=0.01, seed=0,
                                               loop_ngram=0))
    assert _ngram_counts(unguarded) >= 3


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_a_model_that_writes_a_role_marker_is_stopped_before_it(strategy):
    lm = ScriptedLM({1: 2, 2: 3, 3: 4, 4: 5, 5: 6, 6: 3, 11: 0}, first=1)  # "SEM image.\nASSISTANT: A cone\n..."
    config = GenerationConfig(max_new_tokens=20, strategy=strategy, num_beams=2)
    free = _generate(lm, config)
    assert "ASSISTANT:" in decode(free)
    out = _generate(lm, config, stop_strings=role_markers("plain"), decode=decode)
    assert decode(out).rstrip() == "SEM image."
    assert marker_count(decode(out), role_markers("plain")) == 0


def test_a_marker_that_is_one_token_is_banned_outright():
    lm = ScriptedLM({7: 7, 11: 7}, first=7)  # wants "<|im_start|>" every step
    out = _generate(lm, GenerationConfig(max_new_tokens=6), banned_ids=[7])
    assert 7 not in out and len(out) == 6


def test_end_of_turn_stops_and_is_not_returned():
    lm = ScriptedLM({1: 2, 2: 0}, first=1)
    assert _generate(lm, GenerationConfig(max_new_tokens=10)) == [1, 2]


def test_loop_start_finds_a_word_ngram_repeated_however_it_is_written():
    assert loop_start("a b c d e a b c d") is None  # a second time is allowed
    text = "Rounded, rounded-off, sharp, rounded, rounded-off, flat, ROUNDED, rounded-off, thin"
    assert loop_start(text) == text.index("ROUNDED")
    assert loop_start("metal metal metal metal metal metal") == len("metal metal ")
    assert loop_start(text, times=4) is None


def test_a_run_of_words_said_again_straight_after_itself_is_a_loop():
    text = "SEM micrograph, class biological, class micrograph, class micrograph, image, class microgram"
    assert text[: loop_start(text)] == "SEM micrograph, class biological, class micrograph"
    assert loop_start("a b c d a b c d") == len("a b c d ")
    assert loop_start("Sharp tips, sharp tips, and cones") == len("Sharp tips, ")
    # One word said twice, and a phrase said again later, are English.
    for fine in ("particles, very, very small", "The particles are round. The particles are small.", "that that is"):
        assert loop_start(fine) is None
    assert has_loop(text) and not has_loop("very, very small particles")


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_a_word_loop_the_token_guard_misses_ends_the_answer_before_it(strategy):
    # Six different tokens that all read "tip,": no token 4-gram repeats within 10 tokens, the words do at once.
    pieces = {1: " tip,", 2: " Tip,", 3: " TIP,", 4: " tip ,", 5: " Tip ,", 6: " TIP ,", 11: "."}
    read = lambda ids: "".join(pieces[i] for i in ids)  # noqa: E731
    lm = ScriptedLM({1: 2, 2: 3, 3: 4, 4: 5, 5: 6, 6: 1}, first=1)
    config = GenerationConfig(max_new_tokens=10, strategy=strategy, num_beams=2)
    free = _generate(lm, config)
    assert len(free) == 10 and _ngram_counts(free) <= 2 and has_loop(read(free))
    out = _generate(lm, config, decode=read)
    assert read(out) == " tip, Tip," and not has_loop(read(out))
    off = _generate(lm, GenerationConfig(max_new_tokens=10, strategy=strategy, num_beams=2, loop_ngram=0), decode=read)
    assert off == free


def test_stop_strings_cut_where_the_marker_starts_inside_a_token():
    stops = StopStrings(["USER:"], lambda ids: "".join({1: "Done.", 2: " US", 3: "ER: more"}[i] for i in ids))
    assert stops.cut([1, 2]) is None
    assert stops.cut([1, 2, 3]) == [1]


def test_eval_hygiene_counts_invented_numbers_markers_and_loops():
    rows = [{"answer": "A tip of 12 nm.", "invented": ["12"]},
            {"answer": "SEM image.\nASSISTANT: A cone"},
            {"answer": "of a tip of a tip of a tip of a tip"},
            {"answer": "At a pixel size of 31.1 %.", "misplaced": ["31.1"]},
            {"answer": "Round particles on a flat support."}]
    h = hygiene(rows, role_markers("plain"))
    assert (h["generated"], h["invented_numbers"], h["misplaced_numbers"], h["role_markers"], h["loops"]) == (5, 1, 1, 1, 1)
    assert len(h["examples"]) == 4 and h["examples"][3]["misplaced"] == ["31.1"]
    assert has_loop("a b c d e a b c d e a b c d") and not has_loop("a b c d e a b c d")


def test_the_number_guard_lets_digits_spell_only_the_numbers_the_prompt_holds():
    from slava.model.generate import NumberGuard

    digits = {i: str(i) for i in range(10)}
    pieces = {**digits, 10: ".", 11: ",", 12: " 1"}
    guard = NumberGuard(pieces, [["19.2", "4,920"]], vocab_size=20)

    def allowed():
        return {i for i, v in enumerate(guard.mask(torch.zeros(1, 20), [0])[0].tolist()) if v > float("-inf")}

    others = set(range(13, 20))
    assert allowed() == {1, 4, 10, 11, 12} | others  # a number may start as 19.2, 4,920 or 4920; words go on
    for token, expect in [(1, {9}), (9, {10}), (10, {2}), (2, {10, 11, 12} | others)]:
        guard.push(0, token)
        assert allowed() == expect, (token, allowed())  # an unfinished number must be finished
    guard.push(0, 15)  # a word: the number is over
    guard.push(0, 4)
    assert allowed() == {9, 11}  # 4920 or 4,920, nothing else
    guard.push(0, 9), guard.push(0, 2), guard.push(0, 0)
    assert allowed() == {10, 11, 12} | others  # 4920 is whole: "." and "," are punctuation, " 1" a new number


def test_a_number_the_loop_guard_would_cut_in_half_is_finished():
    """The loop guard bans "7" after a third "1", but "1" alone is no number the prompt holds: the number wins."""
    from slava.model.generate import NumberGuard

    lm = ScriptedLM(follow={8: 9, 9: 11, 11: 8}, first=8)
    numbers = NumberGuard({8: " 1", 9: "7", 11: "."}, [["17"]], VOCAB)
    out = _generate(lm, GenerationConfig(max_new_tokens=8, loop_ngram=2), numbers=numbers)
    assert out[:8] == [8, 9, 11, 8, 9, 11, 8, 9]


def test_an_answer_cut_mid_sentence_ends_at_its_last_whole_sentence():
    from slava.assistant.grounding import whole_sentences

    cut = "Round particles on a flat support. The particles are a sphere, with a bright central"
    assert whole_sentences(cut) == "Round particles on a flat support."
    assert whole_sentences("The size is broad (polydisperse). Sizes of 12.5") == "The size is broad (polydisperse)."
    assert whole_sentences('He said "round." Then the') == 'He said "round."'
    # Finished answers, and fragments with no whole sentence before them, stay as they are.
    assert whole_sentences("The grains are 12.5 nm across.  ") == "The grains are 12.5 nm across."
    assert whole_sentences("Is it round? Yes!") == "Is it round? Yes!"
    assert whole_sentences("About 12.5 nm") == "About 12.5 nm"


def test_a_word_or_phrase_said_twice_in_a_row_is_said_once():
    from slava.assistant.grounding import without_stutters

    assert without_stutters("A long, straight, straight fibre.") == "A long, straight fibre."
    assert without_stutters("A bright, bright, bright outline.") == "A bright outline."
    assert without_stutters("A network of pores and pores on a substrate.") == "A network of pores on a substrate."
    assert without_stutters("With a high aspect ratio and a high aspect ratio.") == "With a high aspect ratio."
    # Words said again later, across a sentence end, or as numbers are not stutters.
    # Said once, "a fine, granular" would come a third time: a loop, so the text ends before it.
    assert without_stutters("A fine, granular grain with a fine, granular edge. It shows a fine, fine, granular rim.") == \
        "A fine, granular grain with a fine, granular edge. It shows"
    for kept in ("A rounded body with a high aspect ratio and a rounded body.", "Round particles. Round particles cover it.",
                 "Sizes of 10 10 nm.", "Round grains on a support."):
        assert without_stutters(kept) == kept


def test_the_assistant_drops_the_sentence_the_decoder_cut(assistant):
    import numpy as np

    from slava.measure.context import Context

    micrograph = assistant.prepare(np.full((64, 64), 0.5, np.float32))
    ids = assistant.tokenizer.encode("Round grains on a support. They are bright and")
    answer = assistant._answer(micrograph, ids, GenerationConfig(max_new_tokens=64), Context(text=""), "", 0.0)
    assert answer.text == "Round grains on a support." and answer.tokens == len(ids)


def test_the_assistant_cuts_a_sentence_that_puts_a_context_number_on_the_wrong_quantity(assistant):
    import numpy as np

    from slava.assistant.grounding import without_misplaced_numbers
    from slava.measure.context import Context

    context = "Measured: uncalibrated; field 640 px wide; 37 particles, mean 45 px, cover 31.1 %"
    said = "Round particles on a support. The image spans 640 px at a pixel size of 31.1 %."
    assert without_misplaced_numbers(said, context) == ("Round particles on a support.", ["31.1"])
    assert without_misplaced_numbers("Fibres with a high aspect ratio of 45 px. They cross.", context) == \
        ("Fibres with a high aspect ratio. They cross.", ["45"])
    assert without_misplaced_numbers("The image spans 640 px.", context) == ("The image spans 640 px.", [])
    # With nothing else to say, the answer is the measurements as the context states them.
    facts = "Measured on this image: uncalibrated; field 640 px wide; 37 particles, mean 45 px, cover 31.1 %."
    assert without_misplaced_numbers("The image spans 31.1 px.", context) == (facts, ["31.1"])
    micrograph = assistant.prepare(np.full((64, 64), 0.5, np.float32))
    for text, kept, flagged in ((said, "Round particles on a support.", ("31.1",)),
                                ("The image spans 31.1 px.", facts, ("31.1",))):
        ids = assistant.tokenizer.encode(text)
        answer = assistant._answer(micrograph, ids, GenerationConfig(max_new_tokens=64), Context(text=context), "", 0.0)
        assert (answer.text, answer.misplaced, answer.invented) == (kept, flagged, ())


def test_a_vanishing_nucleus_picks_greedys_token_when_bf16_logits_tie():
    from slava.model.generate import _sample_top_p

    logits = torch.zeros(1, 5000, dtype=torch.bfloat16)
    logits[0, 3::3] = 2.0  # bf16 holds few digits: an unsure model's best tokens tie
    generator = torch.Generator().manual_seed(0)
    picks = {int(_sample_top_p(logits, 1e-6, 1.5, generator)) for _ in range(5)}
    assert picks == {int(logits.argmax())} == {3}
