"""Ablations: train variants of one recipe on a reduced step budget and score each on the same test subset.

Each variant changes one thing against the recipe (experts E, routing k,
dynamic vs fixed rank, int8 / 4-bit / no quantization of the base, load
balancing on/off, one plain LoRA instead of experts). Every variant trains
with the same ``steps`` cap per stage on the same records, then is scored on
the same test images: closed-set classification and caption METEOR.
It sits above both training and evaluation, which know nothing of each other.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Sequence

VARIANTS: dict[str, dict] = {
    "recipe (as written)": {},
    "one LoRA (E=1, k=1)": {"model.mope.num_experts": 1, "model.mope.top_k": 1},
    "E=2, k=1": {"model.mope.num_experts": 2, "model.mope.top_k": 1},
    "k=1": {"model.mope.top_k": 1},
    "E=8, k=2": {"model.mope.num_experts": 8},
    "fixed rank": {"model.mope.dynamic_rank": False},
    "4-bit base": {"model.quant.bits": 4},
    "float base (no quantization)": {"model.quant.bits": 0},
    "no balance loss": {"model.mope.balance_weight": 0.0},
}
"""Variant name → recipe overrides (the keys `--set` takes when training)."""


def run_ablations(recipe: str | Path, records: str | Path, out: str | Path, steps: int = 40, limit: int | None = 40,
                  caption_limit: int = 10, variants: Sequence[str] | None = None, log=print) -> list[dict]:
    """Train and score every variant; writes ``ablations.json`` and ``ablations.md`` into ``out``; returns the rows."""
    from slava.assistant import Assistant, trained_labels
    from slava.eval import tasks as T
    from slava.eval.data import load_eval_data
    from slava.train.recipe import load_recipe
    from slava.train.trainer import train

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_eval_data(records)
    test = T.stratified(data.split("test"), limit)
    captions = T.stratified([it for it in data.split("test") if any(r.task == "caption" for r in it.refs)], caption_limit)
    for it in captions:
        it.refs = [r for r in it.refs if r.task == "caption"][:1]
    rows = []
    for name in variants or VARIANTS:
        overrides = VARIANTS[name]
        run_dir = out / "runs" / name.split(" (")[0].replace(" ", "_").replace(",", "").replace("=", "")
        log(f"ablation: {name}: training ({steps} steps per stage)…")
        t0 = time.perf_counter()
        if not (run_dir / "train_summary.json").is_file():
            train(load_recipe(recipe, overrides), records, run_dir, max_steps=steps, progress=False)
        train_s = time.perf_counter() - t0
        assistant = Assistant.load(run_dir)
        labels = [c for c in data.labels if c in set(trained_labels(run_dir))]
        scores, _ = T.classify_task(assistant, [it for it in test if it.label in labels], labels)
        text = T.text_task(assistant, captions)
        rows.append({"variant": name, "overrides": overrides, "train_s": round(train_s, 1), "top1": scores["top1"],
                     "macro_f1": scores["macro_f1"], "caption_meteor": text.get("overall", {}).get("meteor"),
                     "n_classify": scores["n"], "n_captions": text.get("n", 0)})
        (out / "ablations.json").write_text(json.dumps(rows, indent=1) + "\n")
    (out / "ablations.md").write_text(ablation_table(rows, steps))
    return rows


def ablation_table(rows: list[dict], steps: int) -> str:
    """The rows as one markdown table."""
    lines = [f"Each variant: {steps} optimizer steps per stage, same records, same test subset.", "",
             "| variant | top-1 | macro-F1 | caption METEOR | train s |", "|---|---|---|---|---|"]
    for r in rows:
        meteor = "–" if r["caption_meteor"] is None else f"{r['caption_meteor']:.3f}"
        lines.append(f"| {r['variant']} | {r['top1']:.3f} | {r['macro_f1']:.3f} | {meteor} | {r['train_s']:.0f} |")
    return "\n".join(lines) + "\n"
