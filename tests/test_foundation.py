"""The shared pieces every stage stands on: atomic writes, the one JSONL reader, the command map, the layering."""

from __future__ import annotations

import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

from slava.data.atomic import write_atomic, write_text_atomic
from slava.data.records import iter_json_lines, read_records, scan_jsonl

SRC = Path(__file__).resolve().parents[1] / "src" / "slava"


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "summary.json"
    write_text_atomic(target, "old\n")

    def half_then_crash(tmp: Path) -> None:
        tmp.write_text("new but unfinish")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        write_atomic(target, half_then_crash)
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]  # no temporary file left behind
    write_text_atomic(target, "new\n")
    assert target.read_text() == "new\n"


def test_one_jsonl_reader_reports_every_bad_line(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_bytes(b'{"a": 1}\n\nnot json\n[1, 2]\n{"b": 2}\n{"c": 3}')  # the last line was cut off by a kill
    scanned = list(scan_jsonl(path))
    assert [(n, obj) for n, obj, _ in scanned if obj is not None] == [(1, {"a": 1}), (5, {"b": 2})]
    problems = {n: p for n, _, p in scanned if p}
    assert problems[3].startswith("not JSON") and problems[4] == "not a JSON object"
    assert problems[6] == "partial last line (writer was interrupted)"
    assert list(iter_json_lines(path)) == [{"a": 1}, {"b": 2}]
    _, bad = read_records(path)
    assert [b.line for b in bad] == [1, 3, 4, 5, 6]  # {"a": 1} and {"b": 2} are JSON but not records


def test_command_map_names_every_command_module():
    from slava.cli import COMMANDS

    modules = {m.name for m in pkgutil.iter_modules([str(SRC / "cli")]) if not m.name.startswith("_")}
    assert set(COMMANDS) == modules and all(COMMANDS[name] == f"slava.cli.{name}" for name in COMMANDS)
    out = subprocess.run([sys.executable, "-m", "slava.cli", "--help"], capture_output=True, text=True, check=True).stdout
    assert all(re.search(rf"^\s+{name}\s", out, re.M) for name in COMMANDS)


def test_analytic_teacher_answers_every_question_family():
    from slava.teacher.analytic import AnalyticTeacher
    from slava.teacher.prompts import QUESTIONS

    assert set(AnalyticTeacher._ANSWERS) == set(QUESTIONS)


@pytest.mark.parametrize("lower, upper", [("assistant", "train"), ("eval", "train"), ("serve", "train"),
                                           ("data", "synth"), ("data", "train"), ("model", "train")])
def test_layers_do_not_import_upward(lower, upper):
    pattern = re.compile(rf"^\s*(from|import)\s+slava\.{upper}\b", re.M)
    offenders = [str(p.relative_to(SRC)) for p in (SRC / lower).rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == []
