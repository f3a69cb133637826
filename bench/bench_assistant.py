"""Assistant speed on this machine: screening throughput, `ask` latency, decoding against HF LLaVA + LoRA.

    python bench/bench_assistant.py [--run runs/tiny-cpu] [--images 256]

Without a trained run the tiny default's shape (recipes/tiny-cpu.yaml) is
built untrained: speed does not depend on the weights. Screening runs the
real `screen` (2 decoding workers) with and without measurements. Decoding
speed is compared, in the same process, with Hugging Face
`LlavaForConditionalGeneration` + a peft LoRA of the same LM sizes on the
same targets, printed as a ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def student_run(run: str | None, tmp: Path) -> Path:
    """The run to time: ``run`` when trained, else the tiny default's shape saved untrained."""
    if run and (Path(run) / "config.json").is_file():
        return Path(run)
    from slava.data.chat import render_text
    from slava.model.tokenizer import train_tokenizer
    from slava.model.vlm import SlavaModel
    from slava.teacher.prompts import CAPTION_PROMPTS, QUESTIONS, classify_prompt
    from slava.train.recipe import load_recipe

    recipe = load_recipe(ROOT / "recipes" / "tiny-cpu.yaml")
    texts = [render_text([{"from": "human", "value": q}, {"from": "gpt", "value": "particles fibres pores nm"}])
             for qs in QUESTIONS.values() for q in qs] + list(CAPTION_PROMPTS) + [classify_prompt(["particles", "fibres"])]
    tok = train_tokenizer(texts * 20, recipe.model.lm.vocab_size)
    torch.manual_seed(0)
    model = SlavaModel.build(recipe.model, tok)
    model.prepare_stage("instruct")
    out = tmp / "untrained"
    model.save(out)
    (out / "train_summary.json").write_text('{"labels": {"meta_classes": {"particles": 1, "fibres": 1, '
                                            '"porous_sponges": 1, "powders": 1, "nanowires": 1}}}')
    return out


def llava_decoder(lm_cfg, targets: list[str], n_new: int, prompt_len: int):
    """A function timing one greedy generation (tokens/s) of HF LLaVA (CLIP tower) + peft LoRA on ``targets``,
    with the student's LM sizes."""
    from peft import LoraConfig, get_peft_model
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    text = LlamaConfig(hidden_size=lm_cfg.hidden, num_hidden_layers=lm_cfg.layers, num_attention_heads=lm_cfg.heads,
                       num_key_value_heads=lm_cfg.kv_heads, intermediate_size=lm_cfg.intermediate,
                       vocab_size=lm_cfg.vocab_size + 8, max_position_embeddings=lm_cfg.max_len)
    vision = CLIPVisionConfig(image_size=160, patch_size=32, hidden_size=256, intermediate_size=512,
                              num_hidden_layers=2, num_attention_heads=4)
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_index=lm_cfg.vocab_size + 1,
                      vision_feature_select_strategy="default")
    torch.manual_seed(0)
    model = get_peft_model(LlavaForConditionalGeneration(cfg).eval(), LoraConfig(r=8, lora_alpha=16,
                                                                                 target_modules=targets))
    n_img = (160 // 32) ** 2
    ids = torch.cat([torch.full((1, n_img), cfg.image_token_index), torch.randint(4, 200, (1, prompt_len - n_img))], 1)
    kw = dict(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=torch.rand(1, 3, 160, 160),
              do_sample=False, max_new_tokens=n_new, min_new_tokens=n_new, pad_token_id=0)
    with torch.inference_mode():
        model.generate(**{**kw, "max_new_tokens": 4, "min_new_tokens": 4})

    def run() -> float:
        with torch.inference_mode():
            start = time.perf_counter()
            out = model.generate(**kw)
            return (out.shape[1] - ids.shape[1]) / (time.perf_counter() - start)

    return run


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default=None)
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--asks", type=int, default=12)
    args = p.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from slava.assistant import Assistant
    from slava.assistant.screen import screen
    from slava.model.generate import GenerationConfig
    from slava.model.mope import TARGETS
    from slava.synth import write_dataset

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run = student_run(args.run, tmp)
        folder = write_dataset(tmp / "images", args.images, size=256, seed=1, workers=2)
        print(f"run: {run}  images: {args.images} × 256 px  torch threads: {torch.get_num_threads()}")
        for measure in (False, True):
            s = screen(folder, run, tmp / f"screen-{measure}.csv", workers=2, batch_size=32, with_measure=measure,
                       progress=False, html=False)
            print(f"screen  classify{' + measure' if measure else '          '}: {s.images_per_s:7.1f} images/s "
                  f"({s.processed} images, {s.seconds:.1f} s, {len(s.labels)} labels)")
        assistant = Assistant.load(run, device="cpu")
        image = next(folder.rglob("*.png"))
        lat = []
        for _ in range(args.asks):
            answer = assistant.ask(image, "Describe the morphology of the features in this image.", max_new_tokens=32)
            lat.append(answer.latency_s)
        lat.sort()
        p95 = lat[min(len(lat) - 1, round(0.95 * (len(lat) - 1)))]
        print(f"ask (≤32 new tokens): p50 {statistics.median(lat) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, "
              f"{answer.tokens} tokens last")

        # Both decoders in this process, alternating, median of several runs: a busy
        # neighbour on the shared cores slows whichever run it overlaps.
        torch.set_num_threads(2)
        n_new, runs = 64, 7
        model = assistant.model
        prompt = assistant._prompt([{"from": "human", "value": "<image>\nDescribe this micrograph in detail."}])
        pixels = assistant.pixels([assistant.prepare(image)])
        targets = [TARGETS.get(t, t) for t in model.cfg.mope.target_modules]
        theirs = llava_decoder(model.cfg.lm, targets, n_new, len(prompt))

        def ours() -> float:
            with torch.inference_mode():
                start = time.perf_counter()
                out = model.generate(pixels, [prompt], GenerationConfig(max_new_tokens=n_new))[0]
                return len(out) / (time.perf_counter() - start)

        eos = model.tokenizer.eos_id
        model.tokenizer.eos_id = -1  # time exactly n_new tokens, as the reference does
        try:
            ours()
            mine, ref = zip(*[(ours(), theirs()) for _ in range(runs)])
        finally:
            model.tokenizer.eos_id = eos
        a, b = statistics.median(mine), statistics.median(ref)
        print(f"decode batch 1, {n_new} tokens (image + prompt included), median of {runs} alternating runs, "
              f"{torch.get_num_threads()} threads, experts/LoRA on {','.join(model.cfg.mope.target_modules)}: "
              f"sLAVA {a:.0f} tok/s, HF LLaVA+LoRA {b:.0f} tok/s, ratio {a / b:.2f}× "
              f"(load average {os.getloadavg()[0]:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
