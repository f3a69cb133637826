"""Throughput of the synthetic SEM generator at 256 px: one process vs a pool over all cores.

Printed, not asserted: `python bench/bench_synth.py [N]`.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

from slava.synth import CLASSES, generate, write_dataset


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    generate("particles", 0)  # warm imports and font loading
    t, cpu = time.perf_counter(), time.process_time()
    for i in range(n // 2):
        generate(CLASSES[i % len(CLASSES)], i)
    single = (n // 2) / (time.perf_counter() - t)
    per_cpu = (n // 2) / (time.process_time() - cpu)
    # On a shared machine wall time includes waiting for a core; CPU time does not.
    print(f"generate() in one process : {single:6.1f} images/s wall, {per_cpu:6.1f} images/s per CPU-second (n={n // 2}, 256 px)")
    for cls in CLASSES:
        t = time.perf_counter()
        for i in range(5):
            generate(cls, i)
        print(f"  {cls:26s} {(time.perf_counter() - t) / 5 * 1e3:6.1f} ms/image")
    workers = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        write_dataset(d, n, size=256, seed=0, workers=workers)
        rate = n / (time.perf_counter() - t)
    print(f"write_dataset, {workers} workers : {rate:6.1f} images/s (n={n}, PNG + truth + sheet)  ratio {rate / single:.2f}x")


if __name__ == "__main__":
    main()
