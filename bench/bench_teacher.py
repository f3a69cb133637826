"""Analytic teacher throughput on synthetic 256 px images: load + measure + records.

Prints images/s in one process and in two worker processes (goal: >= 30
images/s on 2 cores), and the time of the text part alone, measured side by
side in one run.

    .venv/bin/python bench/bench_teacher.py [--n 100]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

from slava.data.manifest import read_manifest
from slava.io import load_micrograph
from slava.measure import measure
from slava.synth import write_dataset
from slava.teacher.analytic import AnalyticTeacher

_TEACHER = AnalyticTeacher()


def _one(entry) -> int:
    micrograph = load_micrograph(entry.path)
    return len(_TEACHER.records_for(entry, micrograph, measure(micrograph)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100, help="images (balanced over the ten classes)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        write_dataset(tmp, n=args.n, size=256, seed=0, workers=2)
        entries = read_manifest(tmp).entries

        t0 = time.perf_counter()
        inputs = [(e, load_micrograph(e.path)) for e in entries]
        loaded = time.perf_counter() - t0
        measured = [(e, mg, measure(mg)) for e, mg in inputs]
        one_process = time.perf_counter() - t0

        t0 = time.perf_counter()
        n_records = sum(len(_TEACHER.records_for(e, mg, m)) for e, mg, m in measured)
        text = time.perf_counter() - t0
        one_process += text

        with ProcessPoolExecutor(2) as pool:
            list(pool.map(_one, entries[:4]))  # start the workers before timing
            t0 = time.perf_counter()
            list(pool.map(_one, entries, chunksize=8))
            two_processes = time.perf_counter() - t0

    n = len(entries)
    print(f"{n} images, {n_records} records ({n_records / n:.1f} per image)")
    print(f"load {1000 * loaded / n:.2f} ms/image, measure {1000 * (one_process - loaded - text) / n:.2f} ms/image, "
          f"text {1000 * text / n:.3f} ms/image ({100 * text / one_process:.1f} % of the total)")
    print(f"1 process : {n / one_process:.1f} images/s")
    print(f"2 processes: {n / two_processes:.1f} images/s (goal >= 30)")


if __name__ == "__main__":
    main()
