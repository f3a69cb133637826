#!/usr/bin/env bash
# NEU-DET (real steel-surface defect images) end to end:
#  (a) 5-shot prototype classification with the synthetic run, no NEU training;
#  (b) analytic-teacher records from NEU labels + measurements, a run tuned on
#      its train split with the tiny-cpu recipe, shortened (timed), top-1 on its test split;
#  (c) `slava adapt`: the run's head fitted again on NEU's train split (and degraded
#      copies), scored on its test split, in minutes.
# Splits are slava.data.manifest's (hash of each file's path: 70/10/20).
# Usage: bash scripts/neu.sh [NEU_DIR] [OUT]   (PATH must hold the venv's slava)
set -euo pipefail
NEU=${1:-../shared/data/neu-det/images}
OUT=${2:-neu}
RUN=${RUN:-runs/tiny-cpu}
LABELS=crazing,inclusion,patches,pitted_surface,rolled-in_scale,scratches
[ -d "$NEU" ] || { echo "no NEU-DET folder at $NEU" >&2; exit 1; }
mkdir -p "$OUT"

slava eval --run "$RUN" --data "$NEU" --out "$OUT/five-shot" --tasks classify --shots 5

# Captions and labels only, and shorter stages than the synthetic recipe: NEU has
# 4.5x the demo's images, and classification is what is scored here.
slava teach --data "$NEU" --out "$OUT/records.jsonl" --teacher analytic --labels "$LABELS" \
  --tasks caption,classify --no-progress
if [ ! -f "$OUT/run/train_summary.json" ]; then
  start=$(date +%s)
  slava train --recipe recipes/tiny-cpu.yaml --data "$OUT/records.jsonl" --out "$OUT/run" --no-progress \
    --set stages.0.epochs=1 --set stages.1.epochs=2 --set stages.2.max_steps="${INSTRUCT_STEPS:-120}"
  echo "$(( $(date +%s) - start ))" > "$OUT/train_seconds.txt"
fi
slava eval --run "$OUT/run" --data "$OUT/records.jsonl" --out "$OUT/tuned" --tasks classify --shots 0
[ -f "$OUT/adapted/train_summary.json" ] || slava adapt --run "$RUN" --images "$NEU" --out "$OUT/adapted"

python - "$OUT" <<'EOF'
import json, sys
out = sys.argv[1]
five = json.load(open(f"{out}/five-shot/metrics.json"))["few_shot"]["prototype_5"]
tuned = json.load(open(f"{out}/tuned/metrics.json"))["classification"]["closed_set"]
seconds = open(f"{out}/train_seconds.txt").read().strip()
adapted = json.load(open(f"{out}/adapted/train_summary.json"))["adapted"]
lines = [
    "| NEU-DET setting | top-1 | macro-F1 | test images |",
    "|---|---|---|---|",
    f"| 5-shot prototypes, no NEU training | {five['top1']:.3f} | {five['macro_f1']:.3f} | {five['n']} |",
    f"| tuned on NEU train split ({seconds} s training) | {tuned['top1']:.3f} | {tuned['macro_f1']:.3f} | {tuned['n']} |",
    f"| `slava adapt` ({adapted['time_s']:.0f} s) | — | {adapted['held_out']['test']['macro_f1']:.3f} | "
    f"{adapted['held_out']['test']['images']} |",
]
open(f"{out}/neu_report.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
print(f"reports: {out}/five-shot/report.html {out}/tuned/report.html")
EOF
