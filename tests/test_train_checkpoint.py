"""Checkpoints: atomic, pruned to the last two, loadable with weights_only, intact after a full disk."""

import errno
import json

import pytest
import torch

from slava.train import checkpoint as C
from slava.train.checkpoint import CheckpointError, CheckpointManager, capture_rng, restore_rng


def save(mgr: CheckpointManager, step: int):
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.ones(3))], lr=0.1)
    opt.param_groups[0]["name"] = "lm"
    opt.param_groups[0]["params"][0].grad = torch.ones(3)
    opt.step()
    tensors, plain = capture_rng({"rank": torch.Generator().manual_seed(step)})
    return mgr.save({"w": torch.full((2,), float(step))}, {"optimizer": opt.state_dict(), "rng": tensors},
                    {"global_step": step, "rng": plain})


def test_keeps_last_two_and_pointer(tmp_path):
    mgr = CheckpointManager(tmp_path, keep=2)
    for step in (1, 2, 3):
        save(mgr, step)
    assert [p.name for p in mgr.complete()] == ["ckpt-000002-step2", "ckpt-000003-step3"]
    assert (tmp_path / "latest").read_text().strip() == "ckpt-000003-step3"
    ck = mgr.load()
    assert ck.weights["w"].tolist() == [3.0, 3.0] and ck.meta["global_step"] == 3
    # state.pt holds only tensors and plain containers: the weights_only loader accepts it.
    state = torch.load(ck.path / "state.pt", weights_only=True)
    assert state["optimizer"]["param_groups"][0]["name"] == "lm"


def test_disk_full_on_second_checkpoint_keeps_the_first(tmp_path, monkeypatch):
    mgr = CheckpointManager(tmp_path, keep=2)
    first = save(mgr, 1)
    real = C.save_file

    def full_disk(tensors, path, *args, **kwargs):
        real(tensors, path, *args, **kwargs)  # a partial file exists when the disk fills up
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(C, "save_file", full_disk)
    with pytest.raises(CheckpointError, match="No space left on device.*intact"):
        save(mgr, 2)
    monkeypatch.setattr(C, "save_file", real)
    assert mgr.latest() == first and [p.name for p in mgr.complete()] == [first.name]
    assert not list(tmp_path.glob(".tmp-*"))
    assert mgr.load().weights["w"].tolist() == [1.0, 1.0]


def test_torn_pointer_falls_back_to_newest_complete(tmp_path):
    mgr = CheckpointManager(tmp_path)
    save(mgr, 1)
    newest = save(mgr, 2)
    (tmp_path / "latest").write_text("ckpt-999999-step9\n")
    (tmp_path / ".tmp-ckpt-000003-step3-1").mkdir()  # a crash mid-save
    assert mgr.latest() == newest


def test_rng_round_trip_through_json():
    gen = torch.Generator().manual_seed(3)
    import random

    import numpy as np

    tensors, plain = capture_rng({"rank": gen})
    plain = json.loads(json.dumps(plain))
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)), int(torch.randint(9, (1,), generator=gen)))
    restore_rng(tensors, plain, {"rank": gen})
    assert (random.random(), float(np.random.rand()), float(torch.rand(1)), int(torch.randint(9, (1,), generator=gen))) == expected
