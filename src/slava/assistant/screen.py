"""Screening a folder: one row per image (class, confidence, measurements, optional caption).

Images are decoded, hashed and measured in worker processes (spawn-safe), the
vision encoding and label ranking run batched in the main process (the run's
classification head for the classes it was trained on, LM scoring for labels
it never saw: the ``method`` column says which), and rows
are appended to a journal after every batch with flush + fsync, so a killed
run loses at most the batch in flight and a rerun skips what was written. A
file that cannot be read becomes a row with its error, never a stop. With
``ray_address`` the shards run as Ray tasks, each worker process loading the
assistant once. The finished table is sorted by path and written as CSV or
Parquet, with a summary page ``<out>.html`` beside it.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from slava.data.atomic import write_atomic
from slava.data.locks import OutputLock
from slava.errors import SlavaError
from slava.io import IMAGE_EXTENSIONS
from slava.orphans import exit_with_parent

MEASURE_COLUMNS = (
    "unit", "pixel_size_nm", "particle_count", "mean_particle_diameter", "particle_coverage",
    "fibre_count", "mean_fibre_width", "pore_fraction", "mean_pore_size", "pitch",
)
"""Flat measurement columns; sizes are in ``unit`` (nm when calibrated, else px)."""
COLUMNS = ("path", "sha256", "label", "probability", "top3", "method", *MEASURE_COLUMNS, "caption", "error")
"""Columns of a screening table, in order."""
FORMATS = (".csv", ".parquet")


class ScreenError(SlavaError):
    """A screening request that cannot run (no images, unknown output format, mismatched journal)."""


@dataclass
class ScreenSummary:
    """What one ``screen`` call did."""

    total: int
    """Images in the folder."""
    processed: int
    """Images screened by this call."""
    skipped: int
    """Images already in the output (resumed)."""
    errors: int
    """Rows with an error, over the whole table."""
    seconds: float
    out: str
    html: str | None
    labels: list[str]
    precision: str
    """The compute precision the model ran in (``slava.hardware``)."""
    method: str | None = None
    """What ranked the labels in this call: "head", "lm" (``Assistant.classify_method``), None if nothing was classified."""
    row_seconds: float = 0.0
    """Of ``seconds``, the time spent decoding, classifying and writing rows: without loading the run and
    writing the finished table, which take the same time for ten images as for ten thousand."""

    @property
    def images_per_s(self) -> float:
        """Throughput of this call, from start to finish."""
        return self.processed / self.seconds if self.seconds > 0 else 0.0

    @property
    def rows_per_s(self) -> float:
        """Throughput once the run is loaded: what a long screen approaches."""
        return self.processed / self.row_seconds if self.row_seconds > 0 else 0.0


def list_images(root: Path) -> list[str]:
    """Image files under ``root`` (recursive, hidden ones left out) as sorted posix paths relative to it."""
    found = []
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        # Dangling symlinks are listed too: they become rows with their error, not silent omissions.
        usable = path.is_file() or (path.is_symlink() and not path.exists())
        if usable and path.suffix.lower() in IMAGE_EXTENSIONS and not any(p.startswith(".") for p in rel.parts):
            found.append(rel.as_posix())
    return sorted(found)


# The columns `_flat` writes; texture is left out of screening because no column reads it.
SCREEN_KINDS = ("particles", "fibres", "pores", "periodicity")


def _flat(m) -> dict:
    p, f, o, per = m.particles, m.fibres, m.pores, m.periodicity
    return {
        "unit": m.unit,
        "pixel_size_nm": m.pixel_size_nm,
        "particle_count": p.count if p else None,
        "mean_particle_diameter": p.mean_diameter if p else None,
        "particle_coverage": p.coverage if p else None,
        "fibre_count": f.count if f else None,
        "mean_fibre_width": f.mean_width if f else None,
        "pore_fraction": o.pore_fraction if o else None,
        "mean_pore_size": o.mean_pore_size if o else None,
        "pitch": per.pitch if per and per.strength >= 0.2 else None,
    }


def decode_one(job: tuple[str, str, int, bool]) -> dict:
    """Read, hash, (measure) and resize one image; errors are returned, not raised (runs in workers)."""
    root, rel, size, with_measure = job
    path = Path(root) / rel
    # "file" lets a caption re-read the image for its context (a column-less key, dropped from the table).
    row: dict = {"path": rel, "file": str(path)}
    if path.is_symlink() and not path.exists():
        row["error"] = f"dangling symbolic link (its target {path.readlink()} does not exist)"
        return row
    try:
        data = path.read_bytes()
        row["sha256"] = hashlib.sha256(data).hexdigest()
        from slava.io import load_micrograph_bytes
        from slava.model.pixels import to_model_pixels

        micrograph = load_micrograph_bytes(data, name=rel)
        row["pixels"] = to_model_pixels(micrograph.pixels, size).numpy()
        if with_measure:
            from slava.measure import measure

            row.update(_flat(measure(micrograph, kinds=SCREEN_KINDS)))
    except Exception as exc:  # noqa: BLE001 - any failure of one file becomes its row's error
        row.pop("pixels", None)
        row["error"] = f"{type(exc).__name__}: {exc}"
    return row


_POOLS: dict[int, ProcessPoolExecutor] = {}
"""Decoding pools by worker count, kept for the process's later screens: a spawned worker takes seconds to
import numpy, PIL and torch, as long as screening a few hundred images takes."""


def _start_worker(parent: int) -> None:
    """Decoding worker setup: end with the parent; one torch thread (resizes are small, and the main
    process's tower threads need the cores)."""
    import torch

    exit_with_parent(parent)
    torch.set_num_threads(1)


def _pool(workers: int) -> ProcessPoolExecutor:
    pool = _POOLS.get(workers)
    if pool is None:
        # Workers end with this process, even when it is killed with -9.
        pool = _POOLS[workers] = ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_start_worker,
                                                     initargs=(os.getpid(),))
    return pool


def decoded_batches(jobs: list[tuple], workers: int, batch_size: int) -> Iterator[list[dict]]:
    """``decode_one`` of each job, in batches of ``batch_size``, each batch decoded by the pool while the
    caller waits.

    One batch at a time, not streamed ahead: on 2 cores, workers decoding
    while the tower runs preempt its threads, and every preemption stalls a
    whole parallel op. Taking turns, decoding then the tower, classified
    1,024 images in less time than overlapping them, and the tower's share of
    a screen with measurements shrank (Xeon with AMX, 2026-12-03; README).
    """
    if workers <= 0 or len(jobs) < 2:
        yield from _batches(map(decode_one, jobs), batch_size)
        return
    pool = _pool(workers)
    for start in range(0, len(jobs), batch_size):
        part = jobs[start : start + batch_size]
        try:
            # Small chunks keep both workers busy to the batch's end when some images take longer.
            yield list(pool.map(decode_one, part, chunksize=max(1, len(part) // (4 * workers))))
        except BrokenProcessPool:
            # A worker that died (killed, out of memory) breaks its pool: the next screen starts a fresh one.
            _POOLS.pop(workers, None).shutdown(wait=False, cancel_futures=True)
            raise


def _batches(items: Iterable[dict], size: int) -> Iterator[list[dict]]:
    batch: list[dict] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def finish_rows(assistant, batch: list[dict], labels: Sequence[str], caption: bool) -> list[dict]:
    """Classify (and caption) the decoded images of one batch; return complete rows."""
    import torch

    from slava.teacher.prompts import CAPTION_PROMPT

    good = [r for r in batch if "pixels" in r]
    if good:
        pixels = torch.from_numpy(np.stack([r.pop("pixels") for r in good]))
        try:
            results = assistant.classify_pixels(pixels, labels)
        except Exception as exc:  # noqa: BLE001 - a failing batch is reported per row, the run goes on
            for r in good:
                r["error"] = f"{type(exc).__name__}: {exc}"
            results = []
        for r, res in zip(good, results):
            r["label"], r["probability"] = res.label, round(res.probability, 6)
            r["top3"] = json.dumps([[lab, round(p, 6)] for lab, p in res.ranked[:3]])
            r["method"] = res.method
        if caption and results:
            # As Assistant.caption words them: the file's own context line, the same hygiene, batched.
            answers = assistant.answer_many([(r["file"], CAPTION_PROMPT) for r in good], max_new_tokens=96,
                                            batch_size=len(good))
            for r, answer in zip(good, answers):
                r["caption"] = answer.text
    return [{c: r.get(c) for c in COLUMNS} for r in batch]


# -- journal --------------------------------------------------------------------


def _journal_path(out: Path) -> Path:
    return out if out.suffix == ".csv" else out.with_name(out.name + ".journal.csv")


def _read_csv_rows(path: Path) -> list[dict]:
    """Rows of a journal; a last line cut off by a kill is dropped (and truncated away)."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        data = data[: data.rfind(b"\n") + 1]
        with open(path, "r+b") as fh:
            fh.truncate(len(data))
    lines = data.decode("utf-8").splitlines(keepends=True)
    if not lines:
        return []
    reader = csv.DictReader(lines)
    if tuple(reader.fieldnames or ()) != COLUMNS:
        raise ScreenError(f"{path}: not a screening table of this version (columns differ); remove it or choose another --out")
    return list(reader)


class _Journal:
    """Append-only CSV: each batch written, flushed and fsync'd before the next starts."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        new = not path.is_file() or path.stat().st_size == 0
        self.fh = open(path, "a", newline="", encoding="utf-8")
        self.writer = csv.DictWriter(self.fh, fieldnames=COLUMNS)
        if new:
            self.writer.writeheader()
            self._sync()

    def _sync(self) -> None:
        self.fh.flush()
        os.fsync(self.fh.fileno())

    def write(self, rows: list[dict]) -> None:
        self.writer.writerows(rows)
        self._sync()

    def close(self) -> None:
        self.fh.close()


def _existing_rows(out: Path) -> list[dict]:
    rows = _read_csv_rows(_journal_path(out))
    if out.suffix == ".parquet" and out.is_file():
        import pandas as pd

        rows = pd.read_parquet(out).astype(object).where(lambda d: d.notna(), None).to_dict("records") + rows
    return rows


def _finalise(out: Path, rows: list[dict]) -> "object":
    """Write the whole table sorted by path (atomically) and return it as a DataFrame."""
    import pandas as pd

    frame = pd.DataFrame(rows, columns=list(COLUMNS)).drop_duplicates("path", keep="last")
    frame = frame.sort_values("path", kind="stable").reset_index(drop=True)
    for col in ("probability", "pixel_size_nm", "mean_particle_diameter", "particle_coverage", "mean_fibre_width",
                "pore_fraction", "mean_pore_size", "pitch", "particle_count", "fibre_count"):
        frame[col] = pd.to_numeric(frame[col], errors="coerce")
    for col in ("sha256", "label", "top3", "unit", "caption", "error"):
        frame[col] = frame[col].map(lambda v: None if v is None or (isinstance(v, float) and np.isnan(v)) or v == "" else str(v))
    if out.suffix == ".csv":
        write_atomic(out, lambda tmp: frame.to_csv(tmp, index=False))
    else:
        write_atomic(out, lambda tmp: frame.to_parquet(tmp, index=False))
    journal = _journal_path(out)
    if journal != out and journal.exists():
        journal.unlink()
    return frame


# -- ray -----------------------------------------------------------------------

_RAY_ASSISTANT: dict = {}


def _ray_shard(run_dir: str, root: str, rels: list[str], labels: list[str], caption: bool, with_measure: bool,
               batch_size: int, precision: str) -> list[dict]:
    """Screen one shard inside a Ray worker; the assistant is loaded once per worker process."""
    import torch

    torch.set_num_threads(1)
    if run_dir not in _RAY_ASSISTANT:
        from slava.assistant.assistant import Assistant

        _RAY_ASSISTANT[run_dir] = Assistant.load(run_dir, device="cpu", precision=precision)
    assistant = _RAY_ASSISTANT[run_dir]
    jobs = [(root, rel, assistant.model.image_size, with_measure) for rel in rels]
    rows = []
    for batch in _batches(map(decode_one, jobs), batch_size):
        rows += finish_rows(assistant, batch, labels, caption)
    return rows


def _ray_rows(address: str, run_dir: str, root: Path, pending: list[str], labels, caption, with_measure, batch_size,
              workers: int, precision: str) -> Iterator[list[dict]]:
    import ray

    if not ray.is_initialized():
        if address == "local":
            ray.init(num_cpus=max(workers, 1), include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    task = ray.remote(num_cpus=1)(_ray_shard)
    shard = max(batch_size, 1) * 2
    refs = [task.remote(run_dir, str(root), pending[i : i + shard], list(labels), caption, with_measure, batch_size,
                        precision)
            for i in range(0, len(pending), shard)]
    while refs:
        done, refs = ray.wait(refs, num_returns=1)
        yield ray.get(done[0])


# -- the command ---------------------------------------------------------------


def screen(
    folder: str | Path,
    run_dir: str | Path,
    out: str | Path,
    labels: Sequence[str] | None = None,
    workers: int = 2,
    caption: bool = False,
    ray_address: str | None = None,
    batch_size: int = 32,
    max_images: int | None = None,
    with_measure: bool = True,
    progress: bool = True,
    html: bool = True,
    precision: str = "auto",
) -> ScreenSummary:
    """Screen every image under ``folder`` into ``out`` (.csv or .parquet) and ``<out>.html``.

    ``labels`` default to the classes the run was trained on. Rows already in
    ``out`` (or its journal) are skipped, so a rerun resumes. ``max_images``
    stops after that many new images (the table is then left unfinished, as
    after a kill). ``ray_address`` ("local" or a cluster address) fans the
    shards out over Ray. ``precision`` is resolved per device by ``slava.hardware``.
    """
    start = time.perf_counter()
    root, out = Path(folder).expanduser().resolve(), Path(out)
    if out.suffix not in FORMATS:
        raise ScreenError(f"{out}: the output must end in {' or '.join(FORMATS)}")
    if not root.is_dir():
        raise ScreenError(f"{root}: no such folder")
    files = list_images(root)
    if not files:
        raise ScreenError(f"{root}: no images found ({', '.join(IMAGE_EXTENSIONS)})")
    # Held for the whole run: two screens appending to one journal would interleave and duplicate rows.
    with OutputLock(out):
        return _screen_locked(root, run_dir, out, files, labels, workers, caption, ray_address, batch_size, max_images,
                              with_measure, progress, html, precision, start)


def _screen_locked(root: Path, run_dir, out: Path, files: list[str], labels, workers: int, caption: bool,
                   ray_address: str | None, batch_size: int, max_images: int | None, with_measure: bool,
                   progress: bool, html: bool, precision: str, start: float) -> ScreenSummary:
    from slava.assistant.assistant import Assistant
    from slava.hardware import choose_precision

    existing = _existing_rows(out)
    done = {r["path"] for r in existing}
    pending = [f for f in files if f not in done]
    if max_images is not None:
        pending = pending[:max_images]
    assistant = None
    if ray_address is None or not labels:
        assistant = Assistant.load(run_dir, precision=precision)
    chosen = assistant.precision if assistant is not None else choose_precision(precision, "cpu")
    labels = list(labels) if labels else assistant.labels
    if len(labels) < 2:
        raise ScreenError("screening needs at least two labels: pass --labels a,b,c (the run lists none)")

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(pending), unit="img", desc="screen", dynamic_ncols=True)
    journal = _Journal(_journal_path(out))
    written, methods = 0, set()
    rows_start = time.perf_counter()
    try:
        if ray_address:
            chunks = _ray_rows(ray_address, str(run_dir), root, pending, labels, caption, with_measure, batch_size, workers,
                               precision)
        else:
            jobs = [(str(root), rel, assistant.model.image_size, with_measure) for rel in pending]
            chunks = (finish_rows(assistant, b, labels, caption) for b in decoded_batches(jobs, workers, batch_size))
        for rows in chunks:
            journal.write(rows)
            written += len(rows)
            methods |= {r["method"] for r in rows if r.get("method")}
            if bar is not None:
                bar.update(len(rows))
    finally:
        journal.close()
        if bar is not None:
            bar.close()
    row_seconds = time.perf_counter() - rows_start
    finished = len(done) + written >= len(files)
    html_path = None
    if finished:
        frame = _finalise(out, _existing_rows(out))
        errors = int(frame["error"].notna().sum())
        if html:
            from slava.assistant.report import write_summary

            html_path = str(write_summary(frame, root, out, labels))
    else:
        errors = sum(1 for r in _existing_rows(out) if r.get("error"))
    return ScreenSummary(len(files), written, len(done), errors, time.perf_counter() - start, str(out), html_path, labels,
                         chosen.name, "+".join(sorted(methods)) or None, row_seconds)
