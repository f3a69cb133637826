"""Decoding: stopping at end of turn, left-padded batches, beam and top-p, continuation scoring."""

import pytest
import torch

from slava.data.chat import encode, user_turn
from slava.model.config import LMConfig, ModelConfig, MoPEConfig, QuantConfig, VisionConfig
from slava.model.tokenizer import train_tokenizer
from slava.model.vlm import SlavaModel

QUESTION, ANSWER = "What is shown?", "Gold particles."
CORPUS = [f"USER: <image>\n{QUESTION}\nASSISTANT: {ANSWER} Silver wires. Porous film."] * 30
MAX_NEW = 12


@pytest.fixture(scope="module")
def trained():
    """A tiny model taught to answer QUESTION with ANSWER and end the turn."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    tok = train_tokenizer(CORPUS, 300)
    cfg = ModelConfig(
        vision=VisionConfig(kind="vit", image_size=32, vit_patch=16, vit_dim=32, vit_layers=1, vit_heads=2),
        lm=LMConfig(hidden=64, layers=2, heads=2, kv_heads=2, intermediate=128, max_len=256),
        quant=QuantConfig(bits=8),
        mope=MoPEConfig(r_max=4, target_modules=["q", "v"]),
    )
    model = SlavaModel.build(cfg, tok)
    ids, labels = encode([user_turn(QUESTION), {"from": "gpt", "value": ANSWER}], tok, model.num_image_tokens)
    ids, labels = torch.tensor([ids]), torch.tensor([labels])
    pixels = torch.rand(1, 1, 32, 32)
    model.prepare_stage("base")
    opt = torch.optim.AdamW(model.param_groups()["lm"], lr=3e-3)
    model.train()
    for _ in range(60):
        loss = model(pixels, ids, torch.ones_like(ids), labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert loss.item() < 0.05
    model.prepare_stage("instruct")  # quantized base + fresh experts (zero B: same function)
    prompt, _ = encode([user_turn(QUESTION)], tok, model.num_image_tokens, add_generation_prompt=True)
    return model, tok, pixels, prompt


def test_greedy_stops_at_end_of_turn(trained):
    model, tok, pixels, prompt = trained
    out = model.generate(pixels, [prompt], max_new_tokens=MAX_NEW)[0]
    assert out == tok.encode(" " + ANSWER)
    assert len(out) < MAX_NEW and tok.eos_id not in out


def test_left_padded_batch_matches_single_prompts(trained):
    model, tok, pixels, prompt = trained
    short = prompt[:-3]
    pix = pixels.expand(2, -1, -1, -1)
    batched = model.generate(pix, [prompt, short], max_new_tokens=6)
    assert batched[0] == model.generate(pixels, [prompt], max_new_tokens=6)[0]
    assert batched[1] == model.generate(pixels, [short], max_new_tokens=6)[0]


def test_beam_and_top_p_give_valid_outputs(trained):
    model, tok, pixels, prompt = trained
    answer = tok.encode(" " + ANSWER)
    assert model.generate(pixels, [prompt], max_new_tokens=MAX_NEW, strategy="beam", num_beams=3)[0] == answer
    g = torch.Generator().manual_seed(0)
    sampled = model.generate(pixels.expand(3, -1, -1, -1), [prompt] * 3, max_new_tokens=MAX_NEW, strategy="top_p",
                             top_p=0.9, temperature=1.5, generator=g)
    for row in sampled:
        assert len(row) <= MAX_NEW and all(0 <= t < tok.vocab_size and t not in (tok.eos_id, tok.image_id) for t in row)
    # A vanishing nucleus holds only the top token: sampling becomes greedy.
    assert model.generate(pixels, [prompt], max_new_tokens=MAX_NEW, strategy="top_p", top_p=1e-9)[0] == answer
    untrained = [prompt[:5]]  # no answer learned here: decoding must still respect the cap
    assert len(model.generate(None, untrained, max_new_tokens=4, strategy="beam", num_beams=2)[0]) <= 4


def test_score_continuations_prefers_the_trained_answer(trained):
    model, tok, pixels, prompt = trained
    right, wrong = tok.encode(" " + ANSWER), tok.encode(" Porous film.")
    model.train()
    scores = model.score_continuations(pixels, prompt, [right, wrong, right[:2]])
    assert model.training  # scoring runs in eval mode but gives the caller's mode back
    assert scores[0] > scores[1]
    # Right padding in the batch must not change a row's score.
    alone = model.score_continuations(pixels, prompt, [right[:2]])
    assert scores[2] == pytest.approx(alone[0], abs=1e-5)
