"""Assistant speed on this machine: screening throughput, `ask` latency, decoding against HF LLaVA + LoRA.

    python bench/bench_assistant.py [--run runs/tiny-cpu] [--images 256]

Without a trained run the tiny default's shape (recipes/tiny-cpu.yaml) is
built untrained: speed does not depend on the weights. Screening runs the
real `screen` (2 decoding workers, kept between calls as screening keeps
them) side by side: measurements alone (the same workers decoding and
measuring, no model), classify + measure, and classify only, by the run's
classification head and by LM scoring; a run without a head gets one fitted
here on a few of the bench images (a copy of the run: the run is not touched). Each
screen is timed from start to finish and once loaded (``ScreenSummary.rows_per_s``:
without loading the run and writing the finished table, fixed costs that a
screen of thousands of images spreads thin). Decoding
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


def with_head(run: Path, folder: Path, tmp: Path) -> Path:
    """``run`` if it has a classification head, else a copy of it with one fitted on 4 bench images per class."""
    import shutil

    from slava.assistant import Assistant
    from slava.data.run_head import HEAD_FILE, save_head
    from slava.model.class_head import head_features
    from slava.train.class_head import HeadConfig, fit_head

    if (run / HEAD_FILE).is_file():
        return run
    copy = tmp / "with-head"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("checkpoints", "stages", "*.png"))
    assistant = Assistant.load(copy, device="cpu")
    pairs = [(d.name, p) for d in sorted(folder.iterdir()) if d.is_dir() for p in sorted(d.glob("*.png"))[:4]]
    with torch.inference_mode():
        feats = head_features(assistant.model, assistant.pixels([assistant.prepare(p) for _, p in pairs]),
                              HeadConfig().features)
    save_head(fit_head(feats, [c for c, _ in pairs], HeadConfig()), copy / HEAD_FILE)
    return copy


def tower_rate(run: Path, size: int, batch: int = 64, repeats: int = 3) -> float:
    """Images/s of the head's features alone (the tower forward) on ready model inputs: screening's ceiling."""
    from slava.assistant import Assistant
    from slava.model.class_head import head_features

    assistant = Assistant.load(run, device="cpu")
    pixels = torch.rand(batch, 1, size, size)
    with assistant.inference():
        head_features(assistant.model, pixels, assistant.head.features)
        start = time.perf_counter()
        for _ in range(repeats):
            head_features(assistant.model, pixels, assistant.head.features)
    return batch * repeats / (time.perf_counter() - start)


def time_screening(run: Path, folder: Path, tmp: Path) -> None:
    """Screening throughput, every variant in this process, one after another on the same images."""
    import json

    from slava.assistant.screen import decoded_batches, list_images, screen
    from slava.hardware import choose_precision, describe_run

    head_run = with_head(run, folder, tmp)
    size = json.loads((run / "config.json").read_text())["model"]["vision"]["image_size"]
    # The first screen starts the decoding workers (seconds of imports): later ones, as in one
    # process screening several folders, reuse them. Warm them up so no variant pays for that.
    screen(folder, head_run, tmp / "warm.csv", workers=2, max_images=8, with_measure=False, progress=False, html=False)
    jobs = [(str(folder), rel, size, True) for rel in list_images(folder)]
    start = time.perf_counter()
    list(decoded_batches(jobs, 2, 64))
    alone = len(jobs) / (time.perf_counter() - start)
    rows = {"measure alone (the workers, no model)": (alone, "-")}
    # Labels the run was not trained on go to LM scoring: the old path, for every label.
    unseen = [f"class {i}" for i in range(10)]
    for name, use, measure, labels in (("classify + measure", head_run, True, None),
                                       ("classify only", head_run, False, None),
                                       ("classify only, 10 unseen labels", run, False, unseen)):
        s = screen(folder, use, tmp / f"{len(rows)}.csv", labels=labels, workers=2, batch_size=64, with_measure=measure,
                   progress=False, html=False)
        rows[name] = (s.images_per_s, s.method)
        rows[f"{name}, once loaded"] = (s.rows_per_s, s.method)
    rows["the tower alone, batches of 64 (no decoding)"] = (tower_rate(head_run, size), "-")
    info = describe_run(choose_precision("auto", "cpu"), torch.get_num_threads())
    print(f"screening {len(jobs)} images × 256 px, tower at {size} px, 2 decoding workers; {info['cpu']}, "
          f"{info['cpu_capability']}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}, "
          f"load average {os.getloadavg()[0]:.2f}:")
    for name, (rate, method) in rows.items():
        print(f"  {name:40s} {rate:7.1f} images/s  method {method}")
    print(f"  classify + measure takes {alone / rows['classify + measure'][0]:.2f}× the time of measure alone "
          f"({alone / rows['classify + measure, once loaded'][0]:.2f}× once loaded; goal ≤ 1.3×); "
          "classify only: goal ≥ 200 images/s")


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
    p.add_argument("--screen-only", action="store_true", help="time screening, skip ask and decoding")
    args = p.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from slava.assistant import Assistant
    from slava.model.generate import GenerationConfig
    from slava.model.mope import TARGETS
    from slava.synth import write_dataset

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run = student_run(args.run, tmp)
        folder = write_dataset(tmp / "images", args.images, size=256, seed=1, workers=2)
        print(f"run: {run}  images: {args.images} × 256 px  torch threads: {torch.get_num_threads()}")
        time_screening(run, folder, tmp)
        if args.screen_only:
            return 0
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
