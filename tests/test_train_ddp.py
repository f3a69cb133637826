"""torchrun with 2 CPU processes (gloo) gives the run of one process with the same global batch."""

import os
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file

from test_train_fixtures import RECIPES, cli, steps

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
# fp32 and no router losses: the balance loss is taken per process (as in
# Switch/GShard), so with it the two runs differ by design, not by rounding.
# Augmentation on: every process must pick and render the same degraded copies.
SETTINGS = ["--set", "precision=fp32", "--set", "model.mope.balance_weight=0", "--set", "model.mope.z_weight=0",
            "--set", "augment.enabled=true", "--max-steps", "3", "--no-progress"]


def train_args(data: Path, out: Path) -> list[str]:
    return ["train", "--recipe", str(RECIPES / "tiny.yaml"), "--data", str(data), "--out", str(out), *SETTINGS]


def test_two_processes_match_one(tmp_path, tiny_data):
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run(cli(*train_args(tiny_data, one)), env=ENV, check=True, capture_output=True)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "slava.cli"]
    done = subprocess.run(torchrun + train_args(tiny_data, two), env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]

    a, b = steps(one / "metrics.jsonl"), steps(two / "metrics.jsonl")
    assert len(a) == len(b) == 9 and {r["stage"] for r in b} == {"base", "align", "instruct"}
    for x, y in zip(a, b):
        assert abs(x["ce"] - y["ce"]) < 1e-4, (x, y)
        assert abs(x["grad_norm"] - y["grad_norm"]) < 1e-4 * max(1.0, x["grad_norm"])
    wa, wb = load_file(str(one / "adapter.safetensors")), load_file(str(two / "adapter.safetensors"))
    assert wa.keys() == wb.keys()
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-4
    ba, bb = load_file(str(one / "base.safetensors")), load_file(str(two / "base.safetensors"))
    assert max(float((ba[k].float() - bb[k].float()).abs().max()) for k in ba) < 1e-4
