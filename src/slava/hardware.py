"""What this machine computes fast: the precision and thread count every command runs with.

One rule, used by training, evaluation (baselines included), the assistant,
screening and the server: ``precision: auto`` takes bf16 only where the
hardware computes it natively (a CUDA device with bf16 support, or a CPU with
AMX or AVX512-BF16 that torch's kernels may use) and fp32 everywhere else.
On a 2-core AMD EPYC with AVX2 only, bf16 autocast is emulated: the tiny-cpu
recipe trained at about 100 tokens/s in bf16 against 1,850 in fp32 (18x);
on a Xeon with AMX a 4096² matmul took 26 ms in bf16 against 148 ms in fp32
(FINDINGS.md). ``slava env`` prints the choice, the reason and both speeds.
torch is imported inside the functions, so command-line parsers can name the
choices without paying for it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Literal

from slava.errors import SlavaError

if TYPE_CHECKING:
    import torch

PrecisionSetting = Literal["auto", "fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")
ThreadSetting = int | Literal["auto"]



def _dtype(name: str) -> "torch.dtype":
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


@dataclass(frozen=True)
class CpuInfo:
    """The CPU as torch sees it."""

    model: str
    """Model name from /proc/cpuinfo (or the platform's processor string)."""
    capability: str
    """``torch.backends.cpu.get_cpu_capability()``: the widest vector ISA ATen dispatches to
    (``AVX2``, ``AVX512``, …); ``ATEN_CPU_CAPABILITY=avx2`` lowers it."""
    amx: bool
    """AMX tiles present (bf16 matmuls in hardware)."""
    avx512_bf16: bool
    """AVX512-BF16 instructions present."""

    @property
    def native_bf16(self) -> bool:
        """bf16 runs in hardware: AMX or AVX512-BF16, and torch is allowed its AVX-512 kernels."""
        return (self.amx or self.avx512_bf16) and self.capability.upper().startswith("AVX512")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.cache
def cpu_info() -> CpuInfo:
    """This machine's CPU (read once per process)."""
    import torch

    return CpuInfo(
        model=_cpu_model(),
        capability=torch.backends.cpu.get_cpu_capability(),
        amx=bool(torch.cpu._is_amx_tile_supported()),
        avx512_bf16=bool(torch.cpu._is_avx512_bf16_supported()),
    )


@dataclass(frozen=True)
class Precision:
    """The compute precision a run uses, and why it was chosen."""

    name: Literal["fp32", "bf16", "fp16"]
    reason: str

    @property
    def dtype(self) -> torch.dtype:
        """The autocast dtype (float32 means no autocast)."""
        return _dtype(self.name)

    def autocast(self, device_type: str) -> contextlib.AbstractContextManager:
        """Autocast to this precision on ``device_type``; a no-op for fp32. Weights stay fp32 either way."""
        import torch

        if self.name == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type, dtype=self.dtype)

    def to_dict(self) -> dict:
        """Plain dict for JSON records."""
        return asdict(self)


def choose_precision(
    setting: str = "auto", device: "str | torch.device" = "cpu", cpu: CpuInfo | None = None, cuda_bf16: bool | None = None
) -> Precision:
    """The precision for ``setting`` on ``device``; ``auto`` picks bf16 only where it is native.

    ``cpu`` and ``cuda_bf16`` default to this machine (tests pass their own).
    An explicit ``bf16`` or ``fp16`` is honoured even where it is emulated,
    with the reason saying so.
    """
    import torch

    if setting not in PRECISIONS:
        raise SlavaError(f"precision {setting!r}: choose one of {', '.join(PRECISIONS)}")
    device_type = torch.device(device).type
    if device_type == "cuda":
        if cuda_bf16 is None:
            cuda_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        native = cuda_bf16
        where = "this CUDA device " + ("supports bf16" if native else "lacks bf16")
    else:
        cpu = cpu or cpu_info()
        native = cpu.native_bf16
        features = [name for name, on in (("AMX", cpu.amx), ("AVX512-BF16", cpu.avx512_bf16)) if on]
        where = f"CPU capability {cpu.capability}" + (f" with {'/'.join(features)}" if features else ", no AMX or AVX512-BF16")
    if setting == "auto":
        if native:
            return Precision("bf16", f"auto: {where}, so bf16 runs in hardware")
        return Precision("fp32", f"auto: {where}, so bf16 would be emulated, about 18x slower than fp32 on AVX2")
    if setting == "bf16" and not native:
        return Precision("bf16", f"set explicitly; {where}, so bf16 is emulated and slow here")
    return Precision(setting, f"set explicitly; {where}")  # type: ignore[arg-type]


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def resolve_threads(setting: ThreadSetting = "auto", processes: int = 1) -> int:
    """torch threads for ``setting``: ``auto`` shares this process's cores among ``processes`` on the node."""
    if setting == "auto":
        return max(1, available_cores() // max(processes, 1))
    if isinstance(setting, bool) or not isinstance(setting, int) or setting < 1:
        raise SlavaError(f"threads {setting!r}: give a positive integer or 'auto'")
    return setting


def use_threads(setting: ThreadSetting = "auto", processes: int = 1) -> int:
    """Set torch's CPU thread count from ``setting`` and return it."""
    import torch

    n = resolve_threads(setting, processes)
    torch.set_num_threads(n)
    return n


def matmul_gflops(dtype: "torch.dtype", size: int = 384, budget_s: float = 0.1) -> float:
    """Square-matmul throughput in ``dtype`` on the CPU, measured for about ``budget_s`` after one warm-up."""
    import torch

    gen = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(dtype)
    b = torch.randn(size, size, generator=gen).to(dtype)
    torch.mm(a, b)
    reps, start = 0, time.perf_counter()
    while True:
        torch.mm(a, b)
        reps += 1
        elapsed = time.perf_counter() - start
        if elapsed >= budget_s and reps >= 2:
            break
    return 2 * size**3 * reps / elapsed / 1e9


def environment(precision: str = "auto", threads: ThreadSetting = "auto", measure: bool = True) -> dict:
    """What ``slava env`` prints: CPU, torch, the precision ``precision`` resolves to and why, threads, matmul speed."""
    import torch

    cpu = cpu_info()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    chosen = choose_precision(precision, device)
    env = {
        "cpu": {**asdict(cpu), "native_bf16": cpu.native_bf16},
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if device == "cuda" else None,
        "device": device,
        "precision": chosen.to_dict(),
        "threads": {"chosen": resolve_threads(threads), "available_cores": available_cores(),
                    "machine_cores": os.cpu_count()},
    }
    if measure:
        previous = torch.get_num_threads()
        torch.set_num_threads(env["threads"]["chosen"])
        try:
            env["matmul_gflops"] = {name: round(matmul_gflops(_dtype(name)), 1) for name in ("fp32", "bf16")}
        finally:
            torch.set_num_threads(previous)
        env["matmul_gflops"]["bf16_vs_fp32"] = round(env["matmul_gflops"]["bf16"] / env["matmul_gflops"]["fp32"], 2)
    return env


def describe_run(precision: Precision, threads: int) -> dict:
    """The precision and threads a run used, as recorded in train_summary.json and metrics.json."""
    cpu = cpu_info()
    return {"precision": precision.name, "precision_reason": precision.reason, "threads": threads,
            "cpu": cpu.model, "cpu_capability": cpu.capability}
