#!/usr/bin/env bash
# The main job on the embedded default data set.
set -euo pipefail
OUT=${OUT:-demo}
mkdir -p "$OUT"
slava synth --n 200 --out "$OUT/synth" --seed 0
echo "synthetic set, contact sheet and summary in $OUT/synth"
