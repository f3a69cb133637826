"""The one teacher runner: manifest in, instruction records out, resumable.

Every image gets a cache key (image sha256, prompt version, teacher, task
settings). Its records are appended one line at a time, each fsynced, and
carry the key and the number of records the image produced; a rerun reads the
keys back and skips finished images, so a killed run loses only the requests
in flight. Images that cannot be taught (unreadable files, answers invalid
even after repair, requests that kept failing) go to ``rejects.jsonl`` beside
the output with the reason; rejects marked ``retryable`` are tried again by
the next run.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import multiprocessing
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from tqdm import tqdm

from slava.data.atomic import write_bytes_atomic
from slava.data.locks import OutputLock
from slava.data.records import JsonlAppender, iter_json_lines, validate_record

POOL_MIN_IMAGES = 64
"""Below this many images a process pool costs more to start than it saves."""


@dataclass
class TeachResult:
    """What a teacher made of one image: records, or a reject and its reason."""

    records: list[dict] = field(default_factory=list)
    reject: str | None = None
    retryable: bool = False
    """A reject that a later run should try again (transport failures, teacher bugs)."""
    tokens: int = 0
    raw: str | None = None
    """The teacher's last answer, kept in the reject line for inspection."""


@dataclass
class TeachSummary:
    """Counts of one run, in images (``records`` counts lines written)."""

    done: int = 0
    skipped: int = 0
    rejected: int = 0
    tokens: int = 0
    records: int = 0
    remaining: int = 0
    """Images not started because the run stopped early."""
    stopped: str | None = None

    def line(self) -> str:
        """The final line printed by ``slava teach``."""
        text = f"done {self.done}, skipped {self.skipped}, rejected {self.rejected}, tokens {self.tokens}"
        if self.stopped:
            text += f" (stopped: {self.stopped}; {self.remaining} images left for a rerun)"
        return text


def make_cache_key(sha256: str, prompt_version: str, source: str, settings: dict | None = None) -> str:
    """Key of one image's work: the same image, prompts, teacher and settings give the same key."""
    payload = json.dumps([sha256, prompt_version, source, settings or {}], sort_keys=True, default=list)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


class AnalyticBackend:
    """Runs an ``AnalyticTeacher`` on one image: load, measure, write records.

    Picklable, so the runner can fan it out over a process pool.
    """

    source = "analytic"

    def __init__(self, teacher: Any):
        self.teacher = teacher
        self.prompt_version = teacher.prompt_version
        self.settings = {k: getattr(teacher, k, None) for k in ("tasks", "per_image", "no_label_leak", "seed", "names")}

    def cache_key(self, entry: Any) -> str:
        """See :func:`make_cache_key`."""
        return make_cache_key(entry.sha256, self.prompt_version, self.source, self.settings)

    def __call__(self, entry: Any) -> TeachResult:
        from slava.io import load_micrograph
        from slava.io.micrograph import MicrographError
        from slava.measure import MeasureError
        from slava.measure.context import micrograph_context

        try:
            micrograph = load_micrograph(entry.path)
        except MicrographError as exc:
            return TeachResult(reject=f"unreadable image: {exc.cause}")
        try:
            context = micrograph_context(micrograph)
        except MeasureError as exc:
            # The image itself is unusable (too small, blank): the same every run, so never retried.
            return TeachResult(reject=f"unusable image: {exc}")
        try:
            records = self.teacher.records_for(entry, micrograph, context.measurements, context)
        except Exception as exc:  # one odd image must not end a run of thousands
            return TeachResult(reject=f"analytic teacher failed: {type(exc).__name__}: {exc}", retryable=True)
        return TeachResult(records=records)


_POOL_BACKEND: AnalyticBackend | None = None


def _init_pool(backend: AnalyticBackend) -> None:
    from slava.orphans import exit_with_parent

    global _POOL_BACKEND
    _POOL_BACKEND = backend
    # A worker's parent is the forkserver, which itself exits with the run.
    exit_with_parent()


def _pool_call(item: tuple[int, Any]) -> tuple[int, TeachResult]:
    index, entry = item
    assert _POOL_BACKEND is not None
    return index, _POOL_BACKEND(entry)


class _Sink:
    """Writes finished images: records to the output, rejects beside it; counts both."""

    def __init__(self, out_path: Path, rejects_path: Path, source: str, summary: TeachSummary, bar: tqdm,
                 rejected: set[tuple[str, str]] | None = None):
        self.out_dir = out_path.parent.resolve()
        self.records = JsonlAppender(out_path)
        self.rejects_path = rejects_path
        self._rejects: JsonlAppender | None = None
        self.rejected = rejected if rejected is not None else set()
        """(cache key, reason) of reject lines already written: a retry failing the same way adds none."""
        self.source = source
        self.summary = summary
        self.bar = bar

    def image_path(self, path: str) -> str:
        # Records name images relative to the records file, as the schema says.
        # A dangling symlink is named by where it lies, not by the target that is missing.
        where = Path(path).resolve() if Path(path).exists() else Path(os.path.abspath(path))
        return Path(os.path.relpath(where, self.out_dir)).as_posix()

    def add(self, entry: Any, key: str, result: TeachResult) -> None:
        self.summary.tokens += result.tokens
        if result.reject is None:
            problems = [f"{r.get('id')}: {'; '.join(p)}" for r in result.records if (p := validate_record(r))]
            if problems:
                result = TeachResult(reject="invalid records: " + " | ".join(problems), retryable=True)
            elif not result.records:
                result = TeachResult(reject="teacher wrote no records")
        if result.reject is not None:
            self.reject(entry.path, key, result.reject, result.retryable, result.raw)
        else:
            image = self.image_path(entry.path)
            for rec in result.records:
                meta = dict(rec.get("meta") or {}, cache_key=key, image_records=len(result.records))
                self.records.write({**rec, "image": image, "meta": meta})
            self.summary.done += 1
            self.summary.records += len(result.records)
        self.bar.update(1)
        if self.summary.tokens:
            self.bar.set_postfix(tokens=self.summary.tokens, refresh=False)

    def reject(self, path: str, key: str, reason: str, retryable: bool = False, raw: str | None = None) -> None:
        self.summary.rejected += 1
        if (key, reason) in self.rejected:
            return
        self.rejected.add((key, reason))
        if self._rejects is None:
            self._rejects = JsonlAppender(self.rejects_path)
        line = {"image": self.image_path(path), "cache_key": key, "reason": reason, "retryable": retryable}
        line["source"] = self.source
        if raw:
            line["answer"] = raw
        self._rejects.write(line)

    def close(self) -> None:
        self.records.close()
        if self._rejects is not None:
            self._rejects.close()


def _rejected_before(rejects_path: Path) -> set[tuple[str, str]]:
    """(cache key, reason) of every line of the rejects file."""
    return {(obj["cache_key"], str(obj.get("reason"))) for obj in iter_json_lines(rejects_path)
            if isinstance(obj.get("cache_key"), str)}


def _finished_keys(out_path: Path, rejects_path: Path) -> set[str]:
    """Keys of images already finished; records of images cut off mid-write are removed."""
    counts: Counter[str] = Counter()
    expected: dict[str, int] = {}
    for obj in iter_json_lines(out_path):
        meta = obj.get("meta")
        if isinstance(meta, dict) and isinstance(meta.get("cache_key"), str):
            counts[meta["cache_key"]] += 1
            expected[meta["cache_key"]] = int(meta.get("image_records") or 1)
    finished = {k for k, n in counts.items() if n >= expected[k]}
    partial = set(counts) - finished
    if partial:
        _drop_records(out_path, partial)
    for obj in iter_json_lines(rejects_path):
        if isinstance(obj.get("cache_key"), str) and not obj.get("retryable"):
            finished.add(obj["cache_key"])
    return finished


def _drop_records(path: Path, keys: set[str]) -> None:
    # A kill between two records of one image left it half written: drop its
    # records (atomically) so the rerun writes the image whole, without duplicates.
    kept = []
    with open(path, "rb") as fh:
        for raw in fh:
            if not raw.endswith(b"\n"):
                break
            try:
                key = (json.loads(raw).get("meta") or {}).get("cache_key")
            except (ValueError, AttributeError):
                key = None
            if key not in keys:
                kept.append(raw)
    write_bytes_atomic(path, b"".join(kept))


def _file_key(path: str, source: str) -> str:
    try:
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        digest = "unreadable:" + str(Path(path).resolve())
    return make_cache_key(digest, "unreadable", source)


def run_teacher(
    source: Any,
    out_path: str | Path,
    backend: Any,
    rejects_path: str | Path | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> TeachSummary:
    """Teach every image of ``source`` into ``out_path``, resuming earlier runs.

    ``source`` is anything ``read_manifest`` accepts (image folder, synth set,
    ``.jsonl`` manifest) or a ``Manifest``. ``backend`` is an ``AnalyticTeacher``
    (run in-process, or over ``workers`` processes) or an async teacher such as
    ``OpenAITeacher`` (run with its own bounded concurrency). Rejects go to
    ``rejects_path``, by default ``rejects.jsonl`` beside ``out_path``.
    """
    from slava.data.manifest import read_manifest

    manifest = read_manifest(source) if isinstance(source, (str, os.PathLike)) else source
    out_path = Path(out_path)
    rejects_path = Path(rejects_path) if rejects_path else out_path.with_name("rejects.jsonl")
    is_async = inspect.iscoroutinefunction(getattr(backend, "teach", None))
    if not is_async and not isinstance(backend, AnalyticBackend):
        backend = AnalyticBackend(backend)
    if hasattr(backend, "prepare"):
        backend.prepare(manifest.entries)

    # Held for the whole run: a second writer would duplicate or drop records.
    with OutputLock(out_path):
        return _teach_locked(manifest, out_path, rejects_path, backend, is_async, workers, progress)


def _teach_locked(manifest: Any, out_path: Path, rejects_path: Path, backend: Any, is_async: bool,
                  workers: int | None, progress: bool) -> TeachSummary:
    finished = _finished_keys(out_path, rejects_path)
    summary = TeachSummary()
    pending = []
    for entry in manifest.entries:
        key = backend.cache_key(entry)
        if key in finished:
            summary.skipped += 1
        else:
            pending.append((entry, key))
    broken = []
    for error in manifest.errors:
        path, cause = (error.path, error.cause) if hasattr(error, "path") else tuple(error)
        key = _file_key(str(path), backend.source)
        if key in finished:
            summary.skipped += 1
        else:
            broken.append((str(path), key, f"unreadable image: {cause}"))

    bar = tqdm(total=len(pending) + len(broken), unit="img", disable=not progress, desc="teach")
    sink = _Sink(out_path, rejects_path, backend.source, summary, bar, _rejected_before(rejects_path))
    try:
        for path, key, reason in broken:
            sink.reject(path, key, reason)
            bar.update(1)
        if is_async:
            asyncio.run(_run_async(backend, pending, sink))
        else:
            _run_sync(backend, pending, sink, workers)
    finally:
        sink.close()
        bar.close()
    return summary


def _run_sync(backend: AnalyticBackend, pending: Sequence[tuple[Any, str]], sink: _Sink, workers: int | None) -> None:
    if workers is None:
        workers = min(os.cpu_count() or 1, 4) if len(pending) >= POOL_MIN_IMAGES else 1
    if workers <= 1 or len(pending) < 2:
        for entry, key in pending:
            sink.add(entry, key, backend(entry))
        return
    # forkserver: safe beside threads (test servers, tqdm), and the preload
    # makes each worker a cheap fork of an interpreter with the imports done.
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["slava.teacher.runner", "slava.io", "slava.measure", "slava.teacher.analytic"])
    items = [(i, entry) for i, (entry, _) in enumerate(pending)]
    with ctx.Pool(workers, initializer=_init_pool, initargs=(backend,)) as pool:
        for index, result in pool.imap_unordered(_pool_call, items, chunksize=4):
            entry, key = pending[index]
            sink.add(entry, key, result)


async def _run_async(backend: Any, pending: Sequence[tuple[Any, str]], sink: _Sink) -> None:
    from slava.io import load_micrograph
    from slava.io.micrograph import MicrographError

    queue = iter(pending)
    started = 0

    async def worker() -> None:
        nonlocal started
        for entry, key in queue:
            if backend.budget_exhausted:
                sink.summary.stopped = "token budget reached"
                return
            started += 1
            try:
                micrograph = await asyncio.to_thread(load_micrograph, entry.path)
            except MicrographError as exc:
                sink.reject(entry.path, key, f"unreadable image: {exc.cause}")
                sink.bar.update(1)
                continue
            sink.add(entry, key, await backend.teach(entry, micrograph, key))

    async with backend:
        tasks = [asyncio.create_task(worker()) for _ in range(backend.concurrency)]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    sink.summary.remaining = len(pending) - started
