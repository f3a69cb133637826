"""Tokenizers and the chat template's golden rendering and loss masks."""

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from slava.data.chat import IGNORE_INDEX, encode, render_text, user_turn
from slava.model.tokenizer import SlavaTokenizer, from_pretrained_dir, train_tokenizer

CORPUS = [
    "USER: <image>\nHow many particles are visible?\nASSISTANT: About 42 particles, mean diameter 31 nm.",
    "USER: <image>\nDescribe the micrograph.\nASSISTANT: Aligned nanowires on a silicon substrate.",
] * 20

CONVERSATION = [
    user_turn("How many particles?"),
    {"from": "gpt", "value": "42 particles."},
    {"from": "human", "value": "Mean size?"},
    {"from": "gpt", "value": "31 nm."},
]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(CORPUS, 400)


def test_trained_tokenizer_special_ids_and_no_specials_on_encode(tok):
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.image_id) == (0, 1, 2, 3)
    ids = tok.encode("How many particles?")
    assert ids and not set(ids) & {0, 1, 2, 3}
    assert tok.encode("<image>\nHi")[0] == tok.image_id
    assert tok.decode(ids) == "How many particles?"


def test_save_load_round_trip(tok, tmp_path):
    tok.save(tmp_path)
    back = SlavaTokenizer.load(tmp_path)
    text = "<image>\nAligned nanowires, 31 nm.</s>"
    assert back.encode(text) == tok.encode(text)
    assert (back.eos_id, back.bos_id, back.pad_id, back.image_id, back.vocab_size) == (
        tok.eos_id, tok.bos_id, tok.pad_id, tok.image_id, tok.vocab_size)


def test_hf_directory_gets_image_token_and_keeps_eos(tmp_path):
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|end|>"]))
    PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|end|>").save_pretrained(tmp_path)
    tok = from_pretrained_dir(tmp_path)
    assert tok.eos_id == raw.token_to_id("<|end|>")
    assert tok.bos_id is None and tok.pad_id == tok.eos_id
    assert tok.image_id == raw.get_vocab_size() and tok.vocab_size == raw.get_vocab_size() + 1
    assert tok.encode("<image>")[0] == tok.image_id


def test_render_text_golden():
    expected = (
        "You are sLAVA, an assistant that reads electron micrographs. Give sizes in nm.\n\n"
        "USER: <image>\nHow many particles?\nASSISTANT: 42 particles.</s>\n"
        "USER: Mean size?\nASSISTANT: 31 nm.</s>"
    )
    assert render_text(CONVERSATION) == expected


def test_labels_cover_exactly_answers_and_eos(tok):
    ids, labels = encode(CONVERSATION, tok, num_image_tokens=4)
    assert ids[0] == tok.bos_id and ids.count(tok.image_id) == 4
    trained = [i for i, lab in zip(ids, labels) if lab != IGNORE_INDEX]
    answer1, answer2 = tok.encode(" 42 particles."), tok.encode(" 31 nm.")
    assert trained == answer1 + [tok.eos_id] + answer2 + [tok.eos_id]
    assert all(lab in (IGNORE_INDEX, i) for i, lab in zip(ids, labels))
    # The trained span directly follows the assistant cue.
    first = labels.index(answer1[0])
    assert tok.decode(ids[:first]).endswith("ASSISTANT:")
