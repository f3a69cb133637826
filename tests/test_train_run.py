"""A whole tiny run in-process: files written, plots, frozen base untouched; the 7B recipe's shape on tiny local models."""

import hashlib
import json

import pytest
import torch

from slava.cli import main
from slava.model.quant import QuantizedLinear
from slava.train.recipe import load_recipe
from slava.train.trainer import Trainer, train

from test_train_fixtures import RECIPES, ROOT, steps


def quantized_base_hash(model) -> str:
    """sha256 over every QuantizedLinear buffer (codes, scales, offsets, bias) of the LM."""
    digest = hashlib.sha256()
    n = 0
    for name, module in model.lm.named_modules():
        if isinstance(module, QuantizedLinear):
            for bname, buf in sorted(module.named_buffers(recurse=False)):
                digest.update(f"{name}.{bname}".encode() + buf.cpu().contiguous().view(torch.uint8).numpy().tobytes())
                n += 1
    assert n > 0
    return digest.hexdigest()


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_data):
    """One tiny run (2 steps per stage), recording hashes around the instruct stage."""
    seen = {}
    original = Trainer._run_stage

    def spy(self, model, index, ckpt):
        name = self.recipe.stages[index].name
        if name == "instruct":
            seen["base_before"] = quantized_base_hash(model)
            seen["adapter_before"] = {k: v.clone() for k, v in model.state_dict().items() if "lora_B" in k}
        original(self, model, index, ckpt)
        if name == "instruct":
            seen["base_after"] = quantized_base_hash(model)
            seen["adapter_after"] = {k: v.clone() for k, v in model.state_dict().items() if "lora_B" in k}

    Trainer._run_stage = spy
    try:
        out = tmp_path_factory.mktemp("run")
        summary = train(load_recipe(RECIPES / "tiny.yaml"), tiny_data, out, max_steps=2, progress=False)
    finally:
        Trainer._run_stage = original
    return out, summary, seen


def test_instruct_leaves_quantized_base_bit_identical(run):
    _, _, seen = run
    assert seen["base_before"] == seen["base_after"]
    changed = [k for k in seen["adapter_before"] if not torch.equal(seen["adapter_before"][k], seen["adapter_after"][k])]
    assert changed  # the experts did learn, so the equality above is not vacuous


def test_run_dir_holds_model_metrics_and_summary(run):
    from slava.model.vlm import SlavaModel

    out, summary, _ = run
    for name in ("config.json", "adapter.safetensors", "metrics.jsonl", "recipe.yaml", "train_summary.json",
                 "loss.png", "expert_load.png"):
        assert (out / name).is_file(), name
    assert not (out / "train_records.json").exists()  # the labels live in train_summary.json only
    rows = steps(out / "metrics.jsonl")
    assert [r["stage"] for r in rows] == ["base"] * 2 + ["align"] * 2 + ["instruct"] * 2
    assert all(len(r["expert_entropy"]) == 2 for r in rows if r["stage"] == "instruct")
    saved = json.loads((out / "train_summary.json").read_text())
    assert saved["global_steps"] == 6 and saved["peak_rss_mb"] > 0
    assert saved["labels"]["meta_classes"] == {"fibres": 12, "particles": 12, "porous_sponges": 6}
    assert saved["labels"]["class_names_in_answers"]["particles"] == 8
    # tiny.yaml says `precision: auto` and `threads: 1`: the summary records what they resolved to here.
    from slava.hardware import choose_precision

    assert saved["precision"] == choose_precision("auto", "cpu").name and saved["threads"] == 1
    assert saved["precision_reason"].startswith("auto: ") and saved["cpu_capability"]
    assert load_recipe(out / "recipe.yaml") == load_recipe(RECIPES / "tiny.yaml")
    model = SlavaModel.load(out)
    assert model.stage == "instruct"


def test_slava_plot_redraws(run, capsys):
    out, _, _ = run
    for png in out.glob("*.png"):
        png.unlink()
    assert main(["plot", str(out)]) == 0
    assert (out / "loss.png").stat().st_size > 1000 and (out / "expert_load.png").stat().st_size > 1000
    assert "loss.png" in capsys.readouterr().out


def test_validation_is_capped_at_val_max_examples_spread_over_the_set(run, tiny_data, tmp_path):
    _, full, _ = run
    assert all(st["val_examples"] >= 2 for st in full["stages"].values())
    recipe = load_recipe(RECIPES / "tiny.yaml", {"val_max": 1})
    capped = train(recipe, tiny_data, tmp_path / "capped", max_steps=1, progress=False)
    assert all(st["val_examples"] == 1 and st["val_loss"] is not None for st in capped["stages"].values())


def test_refuses_to_overwrite_a_run_without_resume(run, tiny_data):
    from slava.errors import SlavaError

    out, _, _ = run
    with pytest.raises(SlavaError, match="--resume"):
        train(load_recipe(RECIPES / "tiny.yaml"), tiny_data, out, max_steps=1, progress=False)


def test_llama7b_recipe_shape_with_tiny_local_models(tmp_path, tiny_data):
    """The GPU recipe, paths pointed at tiny random Llama + CLIP saved here, trains 2 steps per stage on CPU."""
    from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

    from slava.model.tokenizer import train_tokenizer

    lm_dir, tower_dir = tmp_path / "llama", tmp_path / "clip"
    tok = train_tokenizer(["An SEM image of particles. Which class is this? fibres porous"] * 50, 300)
    tok.hf.save_pretrained(lm_dir)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok.hf), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, eos_token_id=tok.eos_id,
                                 bos_token_id=tok.bos_id, pad_token_id=tok.pad_id)).save_pretrained(lm_dir)
    CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                     image_size=32, patch_size=8)).save_pretrained(tower_dir)
    recipe = load_recipe(ROOT / "recipes" / "llama7b-gpu.yaml", {
        "model.lm.path": str(lm_dir), "model.vision.path": str(tower_dir), "max_len": 400, "threads": 1,
        "stages.0.batch_size": 2, "stages.0.grad_accum": 1, "stages.1.batch_size": 2, "stages.1.grad_accum": 2,
    })
    assert recipe.model.quant.bits == 4 and [s.name for s in recipe.stages] == ["align", "instruct"]
    summary = train(recipe, tiny_data, tmp_path / "run", max_steps=2, progress=False)
    assert summary["global_steps"] == 4
    rows = steps(tmp_path / "run" / "metrics.jsonl")
    assert all(r["ce"] == r["ce"] and r["ce"] > 0 for r in rows)  # finite
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["model"]["lm"]["path"] == str(lm_dir) and cfg["adapted"]
