"""Decoding: stopping at end of turn, left-padded batches, beam and top-p, continuation scoring, fast steps."""

import copy

import pytest
import torch

from slava.data.chat import encode, user_turn
from slava.model import fast_llama, scoring
from slava.model import generate as gen
from slava.model.config import LMConfig, ModelConfig, MoPEConfig, QuantConfig, VisionConfig
from slava.model.generate import GenerationConfig
from slava.model.mope import MoPELinear, expert_usage, reset_expert_usage, set_rank
from slava.model.tokenizer import train_tokenizer
from slava.model.vlm import SlavaModel

from reference_scoring import plain_scores

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
    out = model.generate(pixels, [prompt], GenerationConfig(max_new_tokens=MAX_NEW))[0]
    assert out == tok.encode(" " + ANSWER)
    assert len(out) < MAX_NEW and tok.eos_id not in out


def test_left_padded_batch_matches_single_prompts(trained):
    model, tok, pixels, prompt = trained
    short = prompt[:-3]
    pix = pixels.expand(2, -1, -1, -1)
    six = GenerationConfig(max_new_tokens=6)
    batched = model.generate(pix, [prompt, short], six)
    assert batched[0] == model.generate(pixels, [prompt], six)[0]
    assert batched[1] == model.generate(pixels, [short], six)[0]


def test_beam_and_top_p_give_valid_outputs(trained):
    model, tok, pixels, prompt = trained
    answer = tok.encode(" " + ANSWER)
    assert model.generate(pixels, [prompt], GenerationConfig(MAX_NEW, "beam", num_beams=3))[0] == answer
    sampling = GenerationConfig(MAX_NEW, "top_p", top_p=0.9, temperature=1.5, seed=0)
    sampled = model.generate(pixels.expand(3, -1, -1, -1), [prompt] * 3, sampling)
    assert sampled == model.generate(pixels.expand(3, -1, -1, -1), [prompt] * 3, sampling)  # seeded: repeatable
    for row in sampled:
        assert len(row) <= MAX_NEW and all(0 <= t < tok.vocab_size and t not in (tok.eos_id, tok.image_id) for t in row)
    # A vanishing nucleus holds only the top token: sampling becomes greedy.
    assert model.generate(pixels, [prompt], GenerationConfig(MAX_NEW, "top_p", top_p=1e-9))[0] == answer
    untrained = [prompt[:5]]  # no answer learned here: decoding must still respect the cap
    assert len(model.generate(None, untrained, GenerationConfig(4, "beam", num_beams=2))[0]) <= 4


def test_generation_config_refuses_an_unknown_strategy():
    with pytest.raises(ValueError, match="unknown decoding strategy 'sample'"):
        GenerationConfig(strategy="sample")


def test_score_continuations_prefers_the_trained_answer(trained):
    model, tok, pixels, prompt = trained
    right, wrong = tok.encode(" " + ANSWER), tok.encode(" Porous film.")
    model.train()
    model.projector.eval()
    with torch.no_grad():
        embeds = model.encode_images(pixels)
    scores = model.score_continuations(embeds, prompt, [right, wrong, right[:2]])[0]
    # Scoring runs in eval mode but gives every module the caller's mode back.
    assert model.training and model.lm.training and not model.projector.training
    model.eval()
    assert scores[0] > scores[1]
    # Right padding in the batch must not change a row's score.
    alone = model.score_continuations(embeds, prompt, [right[:2]])[0]
    assert scores[2].item() == pytest.approx(alone[0].item(), abs=1e-5)


@pytest.fixture(scope="module")
def adapted(trained):
    """A copy of the trained model whose experts are non-zero, so routing shapes every step."""
    model, tok, pixels, prompt = trained
    model = copy.deepcopy(model)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)
    return model, tok, pixels, prompt


def test_scorer_matches_a_plain_forward_in_chunks_and_without_images(adapted, monkeypatch):
    model, tok, pixels, prompt = adapted
    torch.manual_seed(2)
    with torch.no_grad():
        embeds = model.encode_images(torch.rand(3, 1, 32, 32))
    right, wrong = tok.encode(" " + ANSWER), tok.encode(" Porous film.")
    continuations = [right, wrong, right[:2], [tok.eos_id]]
    expected = plain_scores(model, embeds, prompt, continuations)
    torch.testing.assert_close(model.score_continuations(embeds, prompt, continuations), expected, rtol=0, atol=1e-5)
    monkeypatch.setattr(scoring, "ROWS_PER_FORWARD", len(continuations))  # one image per forward: three chunks
    torch.testing.assert_close(model.score_continuations(embeds, prompt, continuations), expected, rtol=0, atol=1e-5)
    bare = prompt[prompt.index(tok.image_id) :]  # no system text: nothing to cache
    torch.testing.assert_close(model.score_continuations(embeds, bare, continuations),
                               plain_scores(model, embeds, bare, continuations), rtol=0, atol=1e-5)
    text = tok.encode("USER: Silver wires.")
    torch.testing.assert_close(model.score_continuations(None, text, continuations),
                               plain_scores(model, None, text, continuations), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="at least one token"):
        model.score_continuations(embeds, prompt, [right, []])


def test_scorer_prefix_cache_is_reused_until_weights_or_rank_change(adapted):
    model, tok, pixels, prompt = adapted
    model = copy.deepcopy(model)
    with torch.no_grad():
        embeds = model.encode_images(pixels)
    continuations = [tok.encode(" " + ANSWER), tok.encode(" Porous film.")]
    first = model.score_continuations(embeds, prompt, continuations)
    cached = scoring._PREFIXES[model.lm][1]
    assert torch.equal(model.score_continuations(embeds, prompt, continuations), first)
    assert scoring._PREFIXES[model.lm][1] is cached
    mope = next(m for m in model.lm.modules() if isinstance(m, MoPELinear))
    with torch.no_grad():
        mope.lora_B.mul_(-20.0)  # in place, as an optimizer step writes: the system text's cache is stale
    changed = model.score_continuations(embeds, prompt, continuations)
    assert not torch.allclose(changed, first, atol=1e-3)
    torch.testing.assert_close(changed, plain_scores(model, embeds, prompt, continuations), rtol=0, atol=1e-5)
    set_rank(model, 1)
    torch.testing.assert_close(model.score_continuations(embeds, prompt, continuations),
                               plain_scores(model, embeds, prompt, continuations), rtol=0, atol=1e-5)


@pytest.mark.parametrize("rows", [1, 2])
def test_fast_steps_match_the_hf_forward(adapted, rows):
    model, tok, pixels, prompt = adapted
    model.eval()
    ids, mask = gen.left_pad([prompt, prompt[:-3]][:rows], tok.pad_id)  # a padded row takes the masked path
    pix = pixels.expand(rows, -1, -1, -1)
    with torch.no_grad():
        embeds = model.embed(ids, model.encode_images(pix))
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        fast, slow = gen._steps(model.lm, 8), gen._HFSteps(model.lm)
        assert isinstance(fast, fast_llama.Session)
        fast_logits, slow_logits = fast.prefill(embeds, mask, positions), slow.prefill(embeds, mask, positions)
        position = positions[:, -1:]
        for _ in range(8):
            err = (fast_logits - slow_logits).norm() / slow_logits.norm()
            assert err < 1e-5
            assert torch.equal(fast_logits.argmax(dim=-1), slow_logits.argmax(dim=-1))
            tokens = fast_logits.argmax(dim=-1)
            position = position + 1
            fast_logits, slow_logits = fast.step(tokens, position), slow.step(tokens, position)
        fast.finish()


@pytest.mark.parametrize("strategy", ["greedy", "beam", "top_p"])
def test_generation_and_expert_usage_equal_the_hf_path(adapted, monkeypatch, strategy):
    model, tok, pixels, prompt = adapted
    pix = pixels.expand(2, -1, -1, -1)
    prompts = [prompt, prompt[:-3]]

    config = GenerationConfig(MAX_NEW, strategy, num_beams=3, temperature=1.5, seed=0)

    def run():
        # Whole prompts on both paths: a shared prefix would be routed, and counted, once on the fast one.
        reset_expert_usage(model)
        return model.generate(pix, prompts, config, share_prefixes=False), expert_usage(model)

    fast = run()
    assert model.generate(pix, prompts, config) == fast[0]  # sharing the prefix changes no token
    monkeypatch.setattr(gen, "decoder_for", lambda lm, dtype: None)
    assert fast == run()


def test_under_bf16_autocast_the_decoder_holds_bf16_weights_and_decodes_as_before(adapted, monkeypatch):
    """bf16 copies made once compute what float32 copies cast down at every step computed, at half the memory."""
    model, tok, pixels, prompt = adapted
    config = GenerationConfig(MAX_NEW)
    half = fast_llama.decoder_for(model.lm, torch.bfloat16)
    assert fast_llama.decoder_for(model.lm, torch.bfloat16) is half
    full = fast_llama.decoder_for(model.lm)  # another dtype: built anew
    assert full is not half
    pairs = list(zip(half.frozen(), full.frozen()))
    assert all(h.weight.dtype == torch.bfloat16 and f.weight.dtype == torch.float32 for h, f in pairs)
    assert sum(h.weight.nbytes for h, _ in pairs) * 2 == sum(f.weight.nbytes for _, f in pairs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast = model.generate(pixels, [prompt], config)
        built = []
        real = gen.decoder_for
        monkeypatch.setattr(gen, "decoder_for", lambda lm, dtype: built.append(dtype) or real(lm))
        assert model.generate(pixels, [prompt], config) == fast and built == [torch.bfloat16]
    assert any(fast[0])


def test_decoder_is_rebuilt_when_weights_or_rank_change(adapted):
    model, tok, pixels, prompt = adapted
    first = fast_llama.decoder_for(model.lm)
    assert first is not None and fast_llama.decoder_for(model.lm) is first
    mope = next(m for m in model.lm.modules() if isinstance(m, MoPELinear))
    config = GenerationConfig(MAX_NEW)
    before = model.generate(pixels, [prompt], config)
    with torch.no_grad():
        mope.lora_B.mul_(-50.0)  # in place, as an optimizer step or load_state_dict writes
    second = fast_llama.decoder_for(model.lm)
    assert second is not first
    set_rank(model, 2)
    assert fast_llama.decoder_for(model.lm) is not second
    set_rank(model, None)
    with torch.no_grad():
        mope.lora_B.div_(-50.0)
    assert model.generate(pixels, [prompt], config) == before


def test_lm_too_large_for_a_float_copy_decodes_through_hf(adapted, monkeypatch):
    model, tok, pixels, prompt = adapted
    config = GenerationConfig(MAX_NEW)
    expected = model.generate(pixels, [prompt], config)
    monkeypatch.setattr(fast_llama, "MAX_DECODER_BYTES", 1000)
    assert fast_llama.Decoder.build(model.lm) is None
    assert model.generate(pixels, [prompt], config) == expected
