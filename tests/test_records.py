import json
import os
import subprocess
import sys

from slava.data.records import JsonlAppender, iter_json_lines, read_records, validate_record


def _record(i=0, answer="A porous network."):
    return {
        "id": f"r{i}",
        "image": "a.png",
        "task": "vqa",
        "conversations": [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": answer}],
        "meta": {"family": "material"},
    }


def test_valid_record_has_no_problems():
    assert validate_record(_record()) == []


def test_invalid_records_are_explained():
    assert validate_record([]) == ["record is not a JSON object"]
    assert any("empty value" in p for p in validate_record(_record(answer="  ")))
    rec = _record()
    rec["conversations"][0]["value"] = "no image"
    assert any("<image>" in p for p in validate_record(rec))
    rec = _record()
    rec["task"] = "dance"
    assert any("unknown task" in p for p in validate_record(rec))
    rec = _record()
    rec["conversations"] = rec["conversations"][::-1]
    assert any("turn 0" in p for p in validate_record(rec))


def test_read_records_reports_bad_lines_and_keeps_good(tmp_path):
    path = tmp_path / "r.jsonl"
    lines = [json.dumps(_record(0)), "{not json", json.dumps({"id": 1}), "", json.dumps(_record(1))]
    path.write_text("\n".join(lines) + "\n" + '{"id": "partial')
    records, bad = read_records(path)
    assert [r["id"] for r in records] == ["r0", "r1"]
    assert [b.line for b in bad] == [2, 3, 6]
    assert "partial" in bad[-1].reason


def test_appender_cuts_partial_tail_and_fsyncs(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_bytes(json.dumps(_record(0)).encode() + b"\n" + b'{"id": "half')
    with JsonlAppender(path) as out:
        out.write(_record(1))
    assert [r["id"] for r in iter_json_lines(path)] == ["r0", "r1"]
    assert path.read_bytes().endswith(b"\n")


def test_killed_writer_never_leaves_partial_line(tmp_path):
    path = tmp_path / "k.jsonl"
    code = (
        "import sys\nfrom slava.data.records import JsonlAppender\n"
        f"out = JsonlAppender({str(path)!r})\n"
        "for i in range(10**6):\n"
        "    out.write({'id': str(i), 'pad': 'x' * 2000})\n"
        "    if i == 50: print('go', flush=True)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"go"
    proc.kill()
    proc.wait()
    with JsonlAppender(path):
        pass
    ids = [int(r["id"]) for r in iter_json_lines(path)]
    assert len(ids) > 50 and ids == list(range(len(ids)))
    assert path.read_bytes().endswith(b"\n")
    assert os.path.getsize(path) == sum(len(json.dumps({"id": str(i), "pad": "x" * 2000})) + 1 for i in ids)
