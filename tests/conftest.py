"""Fixtures shared across test files: the session's tiny trained run and the training tests' tiny records."""

from __future__ import annotations

from pathlib import Path

import pytest

from test_train_fixtures import make_dataset
from tiny_run import make_tiny_run


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A tiny student trained once per session through the real training API (``tiny_run.make_tiny_run``)."""
    return make_tiny_run(tmp_path_factory.getbasetemp() / "tiny_run")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """records.jsonl of 12 images × 3 tasks, 2 images held out as val."""
    return make_dataset(tmp_path_factory.mktemp("traindata"))


@pytest.fixture(scope="module")
def assistant(tiny_run):
    """The tiny run loaded as an ``Assistant`` on the CPU in fp32, once per test module.

    fp32 whatever the CPU: the tests compare its scores with plain fp32
    forwards to 1e-5, which bf16 (``auto`` on AMX or AVX512-BF16 CPUs) rounds
    beyond.
    """
    import torch

    from slava.assistant import Assistant

    torch.set_num_threads(1)
    return Assistant.load(tiny_run, device="cpu", precision="fp32")
