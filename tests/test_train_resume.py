"""kill -9 mid-run, then --resume: the per-step losses match an uninterrupted run (degraded image copies included)."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from test_train_fixtures import RECIPES, cli, steps

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def args(data: Path, out: Path, *extra: str) -> list[str]:
    return cli("train", "--recipe", str(RECIPES / "tiny.yaml"), "--data", str(data), "--out", str(out),
               "--set", "stages.2.epochs=4", "--set", "augment.enabled=true", "--no-progress", *extra)


def latest_meta(out: Path) -> dict | None:
    pointer = out / "checkpoints" / "latest"
    try:
        return json.loads((out / "checkpoints" / pointer.read_text().strip() / "meta.json").read_text())
    except (OSError, ValueError):
        return None


def kill_when(cmd: list[str], ready) -> None:
    """Start ``cmd``, SIGKILL it as soon as ``ready(meta)`` holds for its latest checkpoint."""
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    out = Path(cmd[cmd.index("--out") + 1])
    deadline = time.time() + 120
    while time.time() < deadline:
        meta = latest_meta(out)
        if meta and ready(meta):
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return
        if proc.poll() is not None:
            pytest.fail(f"run ended before the kill point: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.003)
    proc.kill()
    pytest.fail("no checkpoint appeared")


def test_kill9_and_resume_matches_uninterrupted(tmp_path, tiny_data):
    whole = tmp_path / "whole"
    subprocess.run(args(tiny_data, whole), env=ENV, check=True, capture_output=True)

    cut = tmp_path / "cut"
    # Killed mid-base (the tokenizer and LM still training), then mid-instruct
    # (quantized base, experts, rank generator and optimizer all restored).
    kill_when(args(tiny_data, cut), lambda m: m["in_stage"] and m["stage"] == "base")
    kill_when(args(tiny_data, cut, "--resume"), lambda m: m["in_stage"] and m["stage"] == "instruct")
    done = subprocess.run(args(tiny_data, cut, "--resume"), env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]

    a, b = steps(whole / "metrics.jsonl"), steps(cut / "metrics.jsonl")
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, len(a) + 1))
    assert {r["stage"] for r in b} == {"base", "align", "instruct"}
    for x, y in zip(a, b):
        assert x["expert_rank"] == y["expert_rank"]
        assert abs(x["loss"] - y["loss"]) < 1e-5, (x, y)
    val = lambda rows: [r["val_loss"] for r in rows if "val_loss" in r]  # noqa: E731
    rows = lambda p: [json.loads(line) for line in p.read_text().splitlines()]  # noqa: E731
    assert val(rows(whole / "metrics.jsonl")) == pytest.approx(val(rows(cut / "metrics.jsonl")), abs=1e-5)
    wa, wb = load_file(str(whole / "adapter.safetensors")), load_file(str(cut / "adapter.safetensors"))
    assert wa.keys() == wb.keys() and all((wa[k] - wb[k]).abs().max() < 1e-5 for k in wa)
    assert len(list((cut / "checkpoints").glob("ckpt-*"))) == 2
