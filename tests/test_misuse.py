"""Misuse that must be caught before work starts: locked outputs, bad recipes and inputs, huge headers,
orphaned workers, silent omissions (issue 14). Real processes, real files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
TINY_RECIPE = ROOT / "tests" / "recipes" / "tiny.yaml"


def slava(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "slava.cli", *map(str, args)], env=ENV, capture_output=True,
                          text=True, timeout=300, **kwargs)


def cli(capsys, *args) -> tuple[int, str, str]:
    """``slava ARGS`` in this process (no interpreter start-up): (exit code, stdout, stderr)."""
    from slava.cli import main

    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def taught(tmp_path_factory) -> tuple[Path, Path]:
    """A small image folder and its analytic records: (folder, records.jsonl)."""
    from slava.teacher.analytic import AnalyticTeacher
    from slava.teacher.runner import run_teacher

    root = tmp_path_factory.mktemp("taught")
    data = noise_folder(root / "data")
    run_teacher(data, root / "r.jsonl", AnalyticTeacher(), workers=1, progress=False)
    return data, root / "r.jsonl"


def noise_folder(root: Path, n: int = 3, size: int = 64) -> Path:
    """An ImageFolder tree of ``n`` grainy images with bright discs (something to measure)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        img = rng.normal(60, 8, (size, size))
        for _ in range(6):
            cy, cx = rng.integers(8, size - 8, 2)
            img[(yy - cy) ** 2 + (xx - cx) ** 2 < 25] = 200
        (root / "a").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / "a" / f"img{i}.png")
    return root


class Holder:
    """Another real process holding the lock of ``output`` until stopped."""

    def __init__(self, output: Path):
        code = ("import sys, time; from slava.data.locks import lock_output; lock_output(sys.argv[1]); "
                "print('locked', flush=True); time.sleep(120)")
        self.proc = subprocess.Popen([sys.executable, "-c", code, str(output)], env=ENV, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "locked"

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


# -- 1. one writer per output ------------------------------------------------------


def test_second_writer_of_teach_screen_train_is_refused_with_the_holders_pid(tmp_path, taught, capsys):
    data, records = taught
    before = records.read_bytes()
    run = tmp_path / "run"
    for output, command in (
        (records, ["teach", "--data", data, "--out", records, "--workers", "1", "--no-progress"]),
        (tmp_path / "table.csv", ["screen", data, "--out", tmp_path / "table.csv", "--run", tmp_path / "no-run"]),
        (run, ["train", "--recipe", TINY_RECIPE, "--data", records, "--out", run, "--max-steps", "1"]),
    ):
        holder = Holder(output)
        try:
            code, _, err = cli(capsys, *command)
        finally:
            holder.stop()
        assert code == 1 and f"PID {holder.proc.pid}" in err, err
    assert records.read_bytes() == before
    assert not run.exists()
    # Once the holder is gone (killed, here), the lock is free again.
    code, out, _ = cli(capsys, "teach", "--data", data, "--out", records, "--workers", "1", "--no-progress")
    assert code == 0 and out.startswith("done ")


def test_two_concurrent_teach_runs_never_duplicate_records(tmp_path):
    data = noise_folder(tmp_path / "data", n=40)  # enough work that the two runs overlap
    records = tmp_path / "r.jsonl"
    cmd = [sys.executable, "-m", "slava.cli", "teach", "--data", str(data), "--out", str(records), "--workers", "1",
           "--no-progress"]
    procs = [subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0 or "being written by another process (PID" in err, err[-2000:]
    lines = [json.loads(line) for line in records.read_text().splitlines()]
    ids = [r["id"] for r in lines]
    assert len(ids) == len(set(ids)) and {r["image"] for r in lines} == {f"data/a/img{i}.png" for i in range(40)}


# -- 3. recipes checked whole at load; 6. and 7. train inputs --------------------------


@pytest.mark.parametrize("key, value, message", [
    ("model.mope.top_k", 5, "top_k"),
    ("model.mope.min_rank", 9, "min_rank"),
    ("model.lm.hidden", 0, "model.lm.hidden"),
    ("model.lm.heads", 3, "multiple of heads"),
    ("stages.0.batch_size", 0, "batch_size"),
    ("stages.0.max_steps", 0, "max_steps"),
    ("val_max", 0, "val_max"),
    ("model.projector.pool", 0, "pool"),
])
def test_recipe_cross_field_constraints_fail_at_load(key, value, message):
    from slava.config import ConfigError
    from slava.train.recipe import load_recipe

    with pytest.raises(ConfigError, match=message):
        load_recipe(TINY_RECIPE, {key: value})


def test_train_refuses_bad_inputs_before_creating_the_run(tmp_path, taught, capsys):
    _, records = taught
    run = tmp_path / "run"
    code, _, err = cli(capsys, "train", "--recipe", TINY_RECIPE, "--data", tmp_path / "missing.jsonl", "--out", run)
    assert code == 1 and "no such records file" in err
    code, _, err = cli(capsys, "train", "--recipe", TINY_RECIPE, "--data", records, "--out", run, "--max-steps", "-1")
    assert code == 1 and "max_steps must be at least 1" in err
    code, _, err = cli(capsys, "train", "--recipe", TINY_RECIPE, "--data", records, "--out", run, "--set",
                       "model.mope.top_k=9")
    assert code == 1 and "top_k" in err
    assert not run.exists()
    code, _, err = cli(capsys, "train", "--recipe", TINY_RECIPE, "--data", records, "--out", run, "--resume")
    assert code == 1 and "no checkpoint to resume from" in err and "--resume-or-start" in err
    assert not (run / "metrics.jsonl").exists()


def test_resume_or_start_starts_a_run_where_there_is_no_checkpoint(tiny_run, tmp_path, capsys):
    records = tiny_run.parent / "records.jsonl"
    run = tmp_path / "run"
    code, out, err = cli(capsys, "train", "--recipe", TINY_RECIPE, "--data", records, "--out", run,
                         "--resume-or-start", "--max-steps", "1", "--no-progress", "--set", "max_len=512",
                         "--set", "model.lm.max_len=512")
    assert code == 0, err[-2000:]
    assert json.loads(out.splitlines()[-1])["global_steps"] == 3 and (run / "config.json").is_file()


# -- 6. ask/classify read the image before the model --------------------------------


@pytest.mark.parametrize("command", [["ask", "QUESTION"], ["classify"], ["caption"]])
def test_single_image_commands_check_the_image_before_loading_a_model(tmp_path, command):
    # The run does not exist either: the image's error coming first shows the order.
    cmd = [command[0], tmp_path / "missing.png", *command[1:], "--run", tmp_path / "no-run"]
    result = slava(*cmd)
    assert result.returncode == 1 and "missing.png: no such file" in result.stderr, result.stderr


# -- 2. bounded memory on huge headers ------------------------------------------------


def _huge_png(path: Path, side: int = 9500, rgb: bool = False, dpi: float | None = None) -> Path:
    a = np.zeros((side, side), np.uint8)
    a[::50] = 255
    image = Image.fromarray(np.stack([a] * 3, -1) if rgb else a)
    image.save(path, optimize=True, **({"dpi": (dpi, dpi)} if dpi else {}))
    return path


# VmHWM, not ru_maxrss: Linux carries a parent's peak into ru_maxrss across fork and exec.
RSS_SCRIPT = """
import re, sys
from slava.io import load_micrograph
from slava.measure import measure
m = load_micrograph(sys.argv[1])
measure(m)
peak = int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) // 1024
print(m.pixels.shape[0], m.pixels.shape[1], m.metadata.get("downscale"), m.pixel_size_nm, peak)
"""


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux /proc")
def test_a_small_file_with_a_huge_header_is_read_reduced_with_bounded_memory(tmp_path):
    path = _huge_png(tmp_path / "huge.png", dpi=25.4e6 / 2.0)  # pHYs: 2 nm per file pixel
    assert path.stat().st_size < 200_000
    out = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(path)], env=ENV, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    height, width, downscale, pixel_nm, peak_mb = out.stdout.split()
    assert int(height) == int(width) == -(-9500 // 3) and float(downscale) == 3.0
    assert float(pixel_nm) == pytest.approx(6.0, rel=1e-3)  # the calibration follows the reduction
    # The file decoded whole is 90 MB of samples; unreduced, reading and measuring it peaked at 1.8 GB.
    assert int(peak_mb) < 400, f"peak RSS {peak_mb} MB"


def test_reduction_keeps_the_image(tmp_path):
    from slava.io import load_micrograph
    from slava.io.readers import MAX_WORK_PIXELS

    rng = np.random.default_rng(1)
    small = (rng.random((40, 50)) * 255).astype(np.uint8)
    big = np.kron(small, np.ones((120, 120), np.uint8))  # 4800 x 6000, blocks of 120
    Image.fromarray(big).save(tmp_path / "big.png")
    m = load_micrograph(tmp_path / "big.png", crop_data_bar=False)
    assert m.height * m.width <= MAX_WORK_PIXELS and m.metadata["downscale"] == 2.0
    assert m.metadata["file_size"] == [6000, 4800]
    assert np.allclose(m.pixels[::60, ::60], small / 255.0, atol=1e-6)


# -- 9. silent omissions ----------------------------------------------------------------


def test_all_nan_or_inf_images_are_refused(tmp_path):
    import tifffile

    from slava.io import MicrographError, load_micrograph, micrograph_from_array

    for name, value in (("nan", np.nan), ("inf", np.inf)):
        tifffile.imwrite(tmp_path / f"{name}.tif", np.full((32, 32), value, np.float32))
        with pytest.raises(MicrographError, match="every sample is NaN or infinite"):
            load_micrograph(tmp_path / f"{name}.tif")
    with pytest.raises(MicrographError, match="NaN"):
        micrograph_from_array(np.full((8, 8), -np.inf))
    partly = np.zeros((32, 32), np.float32)
    partly[0, 0] = np.nan
    assert load_micrograph_ok(tmp_path, partly)


def load_micrograph_ok(tmp_path: Path, array: np.ndarray) -> bool:
    import tifffile

    from slava.io import load_micrograph

    tifffile.imwrite(tmp_path / "partly.tif", array)
    return load_micrograph(tmp_path / "partly.tif").pixels.shape == array.shape


def test_multi_page_tiff_names_the_page_read_and_page_picks_another(tmp_path):
    import tifffile

    path = tmp_path / "stack.tif"
    with tifffile.TiffWriter(path) as tw:
        for value in (10, 120, 240):
            tw.write(np.full((64, 64), value, np.uint8), photometric="minisblack")
    first = slava("inspect", path, "--json")
    assert first.returncode == 0 and "3 pages; page 1 was read (choose another with --page)" in first.stderr
    third = slava("inspect", path, "--json", "--page", "3")
    assert json.loads(third.stdout)["page"] == 3 and "page 3 was read" in third.stderr
    from slava.io import load_micrograph

    assert load_micrograph(path, page=2).pixels.mean() == pytest.approx(240 / 255)
    missing = slava("inspect", path, "--page", "4")
    assert missing.returncode == 1 and "has 3 page(s); page 4 does not exist" in missing.stderr


def test_dangling_symlinks_are_listed_by_teach_and_screen(tmp_path):
    from slava.assistant.screen import decode_one, list_images
    from slava.data.manifest import read_manifest

    data = noise_folder(tmp_path / "data", n=1)
    (data / "a" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    manifest = read_manifest(data)
    assert [Path(e.path).name for e in manifest.errors] == ["gone.png"]
    assert "dangling symbolic link" in manifest.errors[0].cause
    assert list_images(data) == ["a/gone.png", "a/img0.png"]
    assert "dangling symbolic link" in decode_one((str(data), "a/gone.png", 32, False))["error"]
    slava("teach", "--data", data, "--out", tmp_path / "r.jsonl", "--workers", "1", "--no-progress")
    rejects = [json.loads(line) for line in (tmp_path / "rejects.jsonl").read_text().splitlines()]
    assert [r["image"] for r in rejects] == ["data/a/gone.png"] and not rejects[0]["retryable"]


def test_a_tiny_image_is_a_final_reject_written_once(tmp_path):
    data = noise_folder(tmp_path / "data", n=1)
    Image.fromarray(np.full((1, 1), 128, np.uint8)).save(data / "a" / "dot.png")
    for _ in range(3):
        result = slava("teach", "--data", data, "--out", tmp_path / "r.jsonl", "--workers", "1", "--no-progress")
        assert result.returncode == 0
    rejects = [json.loads(line) for line in (tmp_path / "rejects.jsonl").read_text().splitlines()]
    assert len(rejects) == 1 and rejects[0]["image"] == "data/a/dot.png"
    assert rejects[0]["retryable"] is False and rejects[0]["reason"].startswith("unusable image")
    assert "skipped 2" in result.stdout


def test_uncalibrated_answers_state_no_length_in_nm():
    from slava.assistant.grounding import UNCALIBRATED_NOTE, grounded_kind, without_unknown_lengths

    assert grounded_kind("How wide is the image?") == "field_width"
    assert grounded_kind("What does the image span?") == "field_width"
    text, changed = without_unknown_lengths("SEM image of spheres. The image spans 124 nm across. They are round.")
    assert changed and "124" not in text and text.endswith(UNCALIBRATED_NOTE) and "They are round." in text
    assert without_unknown_lengths("Fibres run left to right.") == ("Fibres run left to right.", False)


def test_an_uncalibrated_answer_left_with_no_sentence_states_the_measurements():
    from slava.assistant.grounding import UNCALIBRATED_NOTE, without_unknown_lengths

    context = "Measured: uncalibrated; field 512 px wide; 349 particles, mean 15.9 px, cover 40.3 %"
    text, changed = without_unknown_lengths("The precipitates are 15.9 nm across. They cover 40.3 nm.", context)
    assert changed and "nm across" not in text and "40.3 nm" not in text
    assert text == f"Measured on this image: uncalibrated; field 512 px wide; 349 particles, mean 15.9 px, cover 40.3 %. {UNCALIBRATED_NOTE}"
    kept, _ = without_unknown_lengths("Bright spheres. They are 15.9 nm across.", context)
    assert kept == f"Bright spheres. {UNCALIBRATED_NOTE}"


def test_ask_gives_no_nm_for_an_uncalibrated_image(tiny_run, tmp_path, capsys):
    run = tiny_run
    noise_folder(tmp_path, n=1)
    code, out, err = cli(capsys, "ask", tmp_path / "a" / "img0.png", "How wide is the image?", "--run", run, "--json")
    assert code == 0, err[-2000:]
    answer = json.loads(out)
    assert answer["source"] == "measurement" and " nm" not in answer["text"] and "px" in answer["text"]


def test_generation_stops_when_asked(tiny_run, tmp_path):
    from slava.assistant import Assistant
    from slava.model.generate import GenerationConfig

    assistant = Assistant.load(tiny_run)
    noise_folder(tmp_path, n=1)
    calls = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) >= 3

    answer = assistant.chat(tmp_path / "a" / "img0.png", [{"from": "human", "value": "Describe the image."}],
                            GenerationConfig(max_new_tokens=200), should_stop=stop)
    assert answer.finish_reason == "cancelled" and answer.tokens <= 3


# -- 4. no orphans after kill -9 ----------------------------------------------------------


def _children(pid: int) -> set[int]:
    found = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found |= {int(c) for c in (task / "children").read_text().split()}
        except OSError:
            pass
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_kill_9_on_screen_leaves_no_worker_processes(tiny_run, tmp_path):
    run = tiny_run
    data = noise_folder(tmp_path / "data", n=80, size=256)
    proc = subprocess.Popen([sys.executable, "-m", "slava.cli", "screen", str(data), "--out", str(tmp_path / "t.csv"),
                             "--run", str(run), "--workers", "2", "--batch-size", "4", "--no-progress"],
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kids: set[int] = set()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        kids |= _children(proc.pid)
        if len(kids) >= 3 and (tmp_path / "t.csv").is_file():  # two workers and the resource tracker, rows flowing
            break
        time.sleep(0.05)
    assert proc.poll() is None and len(kids) >= 3, "screen never started its workers"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(_alive(k) for k in kids):
        time.sleep(0.1)
    left = [k for k in kids if _alive(k)]
    for k in left:
        os.kill(k, signal.SIGKILL)
    assert not left, f"{len(left)} worker process(es) outlived screen"
