from slava.data.chat import IGNORE_INDEX, encode, render_text


class CharTokenizer:
    """One id per character: enough to check segment boundaries and masks exactly."""

    eos_id = 1
    image_id = 2
    bos_id = 0

    def encode(self, text):
        return [10 + ord(c) for c in text]


CONV = [
    {"from": "human", "value": "<image>\nHow many particles?"},
    {"from": "gpt", "value": "12 particles."},
    {"from": "human", "value": "Mean size?"},
    {"from": "gpt", "value": "40 nm."},
]


def test_golden_rendering():
    expected = (
        "You are sLAVA, an assistant that reads electron micrographs. Give sizes in nm.\n\n"
        "USER: <image>\nHow many particles?\nASSISTANT: 12 particles.</s>\n"
        "USER: Mean size?\nASSISTANT: 40 nm.</s>"
    )
    assert render_text(CONV) == expected


def test_labels_cover_exactly_answers_and_eos():
    tok = CharTokenizer()
    ids, labels = encode(CONV, tok, num_image_tokens=3)
    assert ids[0] == tok.bos_id
    assert ids.count(tok.image_id) == 3
    trained = "".join(chr(i - 10) if i >= 10 else "|" for i, l in zip(ids, labels) if l != IGNORE_INDEX)
    assert trained == " 12 particles.| 40 nm.|"
    assert all(l == i for i, l in zip(ids, labels) if l != IGNORE_INDEX)


def test_generation_prompt_ends_on_assistant_cue():
    tok = CharTokenizer()
    ids, labels = encode(CONV[:1], tok, num_image_tokens=1, add_generation_prompt=True)
    text = "".join(chr(i - 10) for i in ids if i >= 10)
    assert text.endswith("\nASSISTANT:")
    assert set(labels) == {IGNORE_INDEX}


def test_tag_line_sits_before_the_context_and_is_not_part_of_the_question():
    import pytest

    from slava.data.chat import ChatFormatError, split_human, user_turn

    turn = user_turn("Describe it.", "Measured: pixel 2 nm (file)", tag="porous sponges")
    assert turn["value"] == "<image>\nLooks like: porous sponges\nMeasured: pixel 2 nm (file)\nDescribe it."
    assert split_human(turn["value"]) == ("Measured: pixel 2 nm (file)", "Describe it.")
    assert user_turn("Describe it.")["value"] == "<image>\nDescribe it."
    with pytest.raises(ChatFormatError, match="one line"):
        user_turn("Describe it.", tag="a\nb")
