"""The precision and thread rules of slava.hardware, the recipe keys that carry them, and `slava env`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from slava import hardware as H
from slava.config import ConfigError
from slava.errors import SlavaError
from slava.train.recipe import load_recipe

AVX2 = H.CpuInfo(model="AMD EPYC", capability="AVX2", amx=False, avx512_bf16=False)
AMX = H.CpuInfo(model="Intel Xeon", capability="AVX512", amx=True, avx512_bf16=True)
AVX512_BF16 = H.CpuInfo(model="AMD EPYC 9004", capability="AVX512", amx=False, avx512_bf16=True)
AVX512_ONLY = H.CpuInfo(model="Intel Xeon Skylake", capability="AVX512", amx=False, avx512_bf16=False)
# An AMX machine told to imitate AVX2 (ATEN_CPU_CAPABILITY=avx2): torch's kernels then stay at AVX2.
AMX_AS_AVX2 = H.CpuInfo(model="Intel Xeon", capability="AVX2", amx=True, avx512_bf16=True)


@pytest.mark.parametrize("cpu, expected", [
    (AVX2, "fp32"), (AMX, "bf16"), (AVX512_BF16, "bf16"), (AVX512_ONLY, "fp32"), (AMX_AS_AVX2, "fp32"),
])
def test_auto_takes_bf16_only_where_the_cpu_runs_it_natively(cpu, expected):
    chosen = H.choose_precision("auto", "cpu", cpu=cpu)
    assert chosen.name == expected
    assert chosen.reason.startswith("auto: ") and cpu.capability in chosen.reason


@pytest.mark.parametrize("bf16_supported, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_on_cuda_follows_the_device(bf16_supported, expected):
    assert H.choose_precision("auto", "cuda", cuda_bf16=bf16_supported).name == expected


def test_explicit_settings_are_honoured_and_say_when_emulated():
    forced = H.choose_precision("bf16", "cpu", cpu=AVX2)
    assert forced.name == "bf16" and "emulated" in forced.reason
    assert H.choose_precision("fp32", "cpu", cpu=AMX).name == "fp32"
    assert H.choose_precision("fp16", "cpu", cpu=AVX2).dtype == torch.float16
    with pytest.raises(SlavaError, match="choose one of auto, fp32, bf16, fp16"):
        H.choose_precision("half")


def test_detection_reads_torch_capability(monkeypatch):
    """The rule applied to what torch reports, patched to look like an AMX Xeon, an AVX2 EPYC and a CUDA GPU."""
    H.cpu_info.cache_clear()
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    try:
        assert H.choose_precision("auto", "cpu").name == "bf16"
        H.cpu_info.cache_clear()
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
        assert H.choose_precision("auto", "cpu").name == "fp32"
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
        assert H.choose_precision("auto", "cuda").name == "bf16"
    finally:
        H.cpu_info.cache_clear()


def test_autocast_runs_in_the_chosen_dtype():
    x = torch.randn(4, 8)
    layer = torch.nn.Linear(8, 3)
    with H.Precision("bf16", "test").autocast("cpu"):
        assert layer(x).dtype == torch.bfloat16
    with H.Precision("fp32", "test").autocast("cpu"):
        assert layer(x).dtype == torch.float32


def test_threads_auto_is_the_affinity_mask_shared_among_processes(monkeypatch):
    monkeypatch.setattr(H.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5})
    assert H.resolve_threads("auto") == 6
    assert H.resolve_threads("auto", processes=2) == 3
    assert H.resolve_threads("auto", processes=8) == 1
    assert H.resolve_threads(3) == 3
    for bad in (0, -1, True, "two"):
        with pytest.raises(SlavaError, match="threads"):
            H.resolve_threads(bad)


def test_old_bf16_key_is_refused_naming_its_successor(tmp_path):
    recipe = tmp_path / "old.yaml"
    recipe.write_text("bf16: true\nstages: [{name: base, lr: {lm: 1.0e-3}}]\n")
    with pytest.raises(ConfigError, match=r"bf16: this key was replaced; use `precision: auto \| fp32 \| bf16 \| fp16`"):
        load_recipe(recipe)
    recipe.write_text("stages: [{name: base, lr: {lm: 1.0e-3}}]\n")
    with pytest.raises(ConfigError, match="precision"):
        load_recipe(recipe, {"bf16": False})
    assert load_recipe(recipe, {"precision": "fp32"}).precision == "fp32"
    assert load_recipe(recipe).precision == "auto" and load_recipe(recipe).threads == "auto"


def test_shipped_recipes_leave_precision_and_threads_to_the_hardware():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "recipes"
    for name in ("tiny-cpu.yaml", "llama7b-gpu.yaml"):
        recipe = load_recipe(root / name)
        assert recipe.precision == "auto", name
    assert load_recipe(root / "tiny-cpu.yaml").threads == "auto"


def test_env_command_reports_the_choice_and_both_speeds():
    out = subprocess.run([sys.executable, "-m", "slava.cli", "env", "--json"], capture_output=True, text=True,
                         check=True, timeout=120)
    env = json.loads(out.stdout)
    assert env["precision"]["name"] == H.choose_precision("auto", env["device"]).name
    assert env["cpu"]["capability"] == torch.backends.cpu.get_cpu_capability()
    assert env["threads"]["chosen"] == H.available_cores()
    assert env["matmul_gflops"]["fp32"] > 0 and env["matmul_gflops"]["bf16"] > 0
    text = subprocess.run([sys.executable, "-m", "slava.cli", "env", "--no-bench"], capture_output=True, text=True,
                          check=True, timeout=120).stdout
    assert f"precision   {env['precision']['name']} (auto: " in text and "matmul" not in text
