"""The teacher runner and ``slava teach``: every image ends once in records or rejects, and runs resume."""

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from fake_openai_server import FakeOpenAIServer
from PIL import Image

from slava.cli import main
from slava.data.manifest import read_manifest
from slava.data.records import read_records
from slava.teacher.openai_client import OpenAITeacher, OpenAITeacherConfig
from slava.teacher.runner import run_teacher

KEY = "sk-test"


def _folder(root: Path, n: int, corrupt: bool = False) -> dict[str, int]:
    """An ImageFolder of noise PNGs of distinct widths; returns relpath -> width."""
    widths = {}
    rng = np.random.default_rng(0)
    for i in range(n):
        label = ("particles", "fibres")[i % 2]
        path = root / label / f"img{i:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        width = 40 + i
        Image.fromarray((rng.random((32, width)) * 255).astype(np.uint8)).save(path)
        widths[f"{label}/img{i:02d}.png"] = width
    if corrupt:
        (root / "particles" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    return widths


def _teacher(server, **config):
    config = {"base_url": server.url, "model": "fake-vlm", "timeout_s": 2.0, "backoff_base_s": 0.01, **config}
    return OpenAITeacher(OpenAITeacherConfig(**config), per_image=1, environ={"SLAVA_TEACHER_API_KEY": KEY})


def _images(path: Path, root: Path) -> Counter:
    """How often each image (relative to ``root``) appears among the records of ``path``: once per image."""
    records, bad = read_records(path)
    assert bad == []
    first = {}
    for rec in records:
        first.setdefault(rec["meta"]["cache_key"], rec)
        assert (path.parent / rec["image"]).exists()
    per_key = Counter(rec["meta"]["cache_key"] for rec in records)
    for key, rec in first.items():
        assert per_key[key] == rec["meta"]["image_records"], "an image's records are all there, once"
    return Counter(str((path.parent / r["image"]).resolve().relative_to(root.resolve())) for r in first.values())


def _rejects(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def server():
    with FakeOpenAIServer(api_key=KEY, hang_s=1.5) as srv:
        yield srv


def test_every_image_ends_once_in_records_or_rejects(tmp_path, server):
    widths = _folder(tmp_path / "data", 8, corrupt=True)
    # One request at a time, so the script meets the images in manifest order.
    server.hang_s = 4.0
    server.push(("429", 0.2), "500", "hang", "malformed", "malformed")  # 1st image: bad twice after retries
    server.push("wrong_schema", "ok")  # 2nd: repaired
    server.push("absurd", "absurd")  # 3rd: rejected
    server.push("unknown_family")  # 4th: repaired
    out = tmp_path / "out" / "records.jsonl"
    summary = run_teacher(tmp_path / "data", out, _teacher(server, concurrency=1, timeout_s=1.5), progress=False)

    done = _images(out, tmp_path / "data")
    rejects = _rejects(out.parent / "rejects.jsonl")
    root = (tmp_path / "data").resolve()
    rejected = Counter(str((out.parent / r["image"]).resolve().relative_to(root)) for r in rejects)
    assert max(done.values()) == 1 and max(rejected.values()) == 1
    assert set(done) | set(rejected) == set(widths) | {"particles/broken.png"}
    assert not set(done) & set(rejected)
    order = [e.relpath for e in read_manifest(tmp_path / "data").entries]
    assert set(rejected) == {order[0], order[2], "particles/broken.png"}
    reasons = {r["image"].rsplit("/", 1)[1]: r["reason"] for r in rejects}
    assert reasons["broken.png"].startswith("unreadable image")
    assert "invalid answer after repair" in reasons[order[0].rsplit("/", 1)[1]]
    assert "count -4 is below zero" in reasons[order[2].rsplit("/", 1)[1]]
    assert (summary.done, summary.rejected, summary.skipped) == (6, 3, 0)
    assert summary.tokens == 100 * (len(server.requests) - 3)  # the 429, the 500 and the hang carry no usage
    # Every readable image was sent, as a PNG data URL, and the broken one never was.
    assert {w for w, _ in server.image_sizes()} == set(widths.values())


def test_retry_after_is_honoured_by_the_runner(tmp_path, server, monkeypatch):
    """The wait before the retry is the server's Retry-After (1 s), not the 0.01 s backoff; recorded, not timed."""
    import asyncio

    from slava.teacher import openai_client

    waits, real_sleep = [], asyncio.sleep

    async def recorded(seconds, *args, **kwargs):
        waits.append(seconds)
        await real_sleep(0)

    monkeypatch.setattr(openai_client.asyncio, "sleep", recorded)
    _folder(tmp_path / "data", 1)
    server.push(("429", 1))
    summary = run_teacher(tmp_path / "data", tmp_path / "r.jsonl", _teacher(server), progress=False)
    assert summary.done == 1 and len(server.requests) == 2
    assert waits.count(1.0) == 1 and not any(0 < w < 0.05 for w in waits)  # no backoff-sized wait


def test_concurrency_is_bounded(tmp_path, server):
    _folder(tmp_path / "data", 8)
    server.delay_s = 0.15
    summary = run_teacher(tmp_path / "data", tmp_path / "r.jsonl", _teacher(server, concurrency=3), progress=False)
    assert summary.done == 8
    assert 2 <= server.max_in_flight <= 3


def test_a_rerun_skips_finished_work(tmp_path, server):
    _folder(tmp_path / "data", 5, corrupt=True)
    server.push("absurd", "absurd")
    out = tmp_path / "r.jsonl"
    first = run_teacher(tmp_path / "data", out, _teacher(server, concurrency=1), progress=False)
    sent = len(server.requests)
    before = out.read_bytes()
    again = run_teacher(tmp_path / "data", out, _teacher(server), progress=False)
    assert (first.done, first.rejected) == (4, 2)
    assert (again.done, again.rejected, again.skipped) == (0, 0, 6)
    assert len(server.requests) == sent and out.read_bytes() == before


def test_retryable_rejects_are_tried_again(tmp_path, server):
    _folder(tmp_path / "data", 2)
    server.push("500", "500")
    out = tmp_path / "r.jsonl"
    first = run_teacher(tmp_path / "data", out, _teacher(server, max_retries=1, concurrency=1), progress=False)
    assert (first.done, first.rejected) == (1, 1) and _rejects(tmp_path / "rejects.jsonl")[0]["retryable"]
    again = run_teacher(tmp_path / "data", out, _teacher(server), progress=False)
    assert (again.done, again.skipped) == (1, 1)
    assert sorted(_images(out, tmp_path / "data").values()) == [1, 1]


def test_token_budget_stops_cleanly_and_a_rerun_finishes(tmp_path, server):
    _folder(tmp_path / "data", 10)
    out = tmp_path / "r.jsonl"
    summary = run_teacher(
        tmp_path / "data", out, _teacher(server, concurrency=2, max_tokens_budget=350), progress=False
    )
    # No new image starts once 350 tokens are spent; the ones in flight are still written.
    assert 4 <= summary.done <= 5 and summary.done == len(server.requests)
    assert summary.stopped == "token budget reached" and summary.remaining == 10 - summary.done
    assert "images left for a rerun" in summary.line()
    assert sum(_images(out, tmp_path / "data").values()) == summary.done
    rest = run_teacher(tmp_path / "data", out, _teacher(server), progress=False)
    assert rest.done == 10 - summary.done and rest.skipped == summary.done
    assert sorted(_images(out, tmp_path / "data").values()) == [1] * 10


def test_an_image_cut_off_between_its_records_is_redone_whole(tmp_path, server):
    _folder(tmp_path / "data", 3)
    out = tmp_path / "r.jsonl"
    run_teacher(tmp_path / "data", out, _teacher(server), progress=False)
    complete = out.read_text()
    lines = complete.splitlines(keepends=True)
    out.write_text("".join(lines[:-1]) + lines[-1][:20])  # a kill mid-image, mid-line
    summary = run_teacher(tmp_path / "data", out, _teacher(server), progress=False)
    assert (summary.done, summary.skipped) == (1, 2)
    assert sorted(out.read_text().splitlines()) == sorted(complete.splitlines())


def test_kill_9_mid_run_then_rerun_completes_without_duplicates(tmp_path):
    _folder(tmp_path / "data", 12)
    out = tmp_path / "r.jsonl"
    env = {
        **os.environ,
        "SLAVA_TEACHER_BASE_URL": "",
        "SLAVA_TEACHER_MODEL": "fake-vlm",
        "SLAVA_TEACHER_API_KEY": KEY,
    }
    cmd = [sys.executable, "-m", "slava.cli", "teach", "--data", str(tmp_path / "data"), "--out", str(out)]
    cmd += ["--teacher", "openai", "--per-image", "1", "--concurrency", "2", "--no-progress"]
    with FakeOpenAIServer(api_key=KEY, delay_s=0.3) as server:
        env["SLAVA_TEACHER_BASE_URL"] = server.url
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while (not out.exists() or out.read_bytes().count(b"\n") < 8) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        killed_at = len(server.requests)
        # No partial line; the last image may be cut off between its records, which the rerun repairs.
        records, bad = read_records(out)
        assert bad == [] and out.read_bytes().endswith(b"\n")
        assert 0 < len({r["image"] for r in records}) < 12

        rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert rerun.returncode == 0, rerun.stderr
        summary = rerun.stdout.strip().splitlines()[-1]
        done = int(summary.split("done ")[1].split(",")[0])
        skipped = int(summary.split("skipped ")[1].split(",")[0])
        assert done + skipped == 12 and skipped > 0
        assert len(server.requests) - killed_at == done
    assert sorted(_images(out, tmp_path / "data").values()) == [1] * 12


def test_teach_command_reports_bad_arguments(tmp_path, capsys):
    assert main(["teach", "--data", str(tmp_path), "--out", str(tmp_path / "r.jsonl"), "--tasks", "dance"]) == 1
    assert "unknown task" in capsys.readouterr().err


def test_analytic_teacher_writes_valid_records_in_process_and_in_a_pool(tmp_path, capsys):
    from slava.synth import write_dataset

    data = write_dataset(tmp_path / "synth", 6, size=128, seed=3)
    args = ["teach", "--data", str(data), "--teacher", "analytic", "--no-progress"]
    assert main(args + ["--out", str(tmp_path / "a" / "r.jsonl"), "--workers", "1"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "done 6, skipped 0, rejected 0, tokens 0"
    images = _images(tmp_path / "a" / "r.jsonl", data)
    assert len(images) == 6 and set(images.values()) == {1}
    assert main(args + ["--out", str(tmp_path / "b" / "r.jsonl"), "--workers", "2"]) == 0
    serial, _ = read_records(tmp_path / "a" / "r.jsonl")
    pooled, _ = read_records(tmp_path / "b" / "r.jsonl")
    assert sorted(serial, key=lambda r: r["id"]) == sorted(pooled, key=lambda r: r["id"])
    assert main(args + ["--out", str(tmp_path / "a" / "r.jsonl")]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "done 0, skipped 6, rejected 0, tokens 0"
