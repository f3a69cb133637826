"""The training loop: stages in order, exact resume, the same result on 1 or N processes.

Determinism is by construction. Every optimizer step's examples come from a
permutation seeded by (seed, stage, epoch), and so does the copy of its image
each example sees (clean or degraded, ``slava.train.augment``); the expert
rank comes from a dedicated generator; the loss of a step is the sum of per-token losses divided
by the step's global target-token count (known up front from the labels), so
splitting a step over micro-batches or processes changes only rounding. A
checkpoint is taken between optimizer steps and holds everything that step
depends on, so a resumed run continues the same trajectory.

Weights trained by a finished stage (the tiny LM after ``base``) are written to
``stages/`` and replayed on resume before the later stage's ``prepare_stage``
quantizes them, so a resumed run rebuilds the exact same frozen base.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from slava.config import ConfigError, to_dict
from slava.data.chat import IGNORE_INDEX, render_text
from slava.data.locks import OutputLock, OutputLocked
from slava.data.records import read_records, resolve_image
from slava.data.run_labels import SUMMARY_FILE, label_vocabulary
from slava.errors import SlavaError
from slava.hardware import choose_precision, describe_run, use_threads
from slava.train import distributed as D
from slava.train.augment import choose_variants, degrade, variant_seed
from slava.data.atomic import write_text_atomic
from slava.train.checkpoint import Checkpoint, CheckpointManager, capture_rng, restore_rng, save_tensors_atomic
from slava.train.dataset import (Example, ImageStore, build_examples, collate, split_records, tag_records,
                                 target_tokens)
from slava.train.metrics import MetricsLog, load_entropy, truncate_after
from slava.train.recipe import Recipe, StageConfig, recipe_to_yaml
from slava.train.schedule import make_scheduler

log = logging.getLogger("slava.train")
_LAYER = re.compile(r"layers\.(\d+)\.")


def _recipe_hash(recipe: Recipe) -> str:
    return hashlib.sha256(json.dumps(to_dict(recipe), sort_keys=True).encode()).hexdigest()[:16]


def _peak_memory_mb(device: torch.device) -> dict:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {"peak_rss_mb": round(rss, 1)}
    if device.type == "cuda":
        out["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


@dataclass
class _Stage:
    """What every step of one stage shares (``Trainer._begin_stage``)."""

    index: int
    config: StageConfig
    examples: list[Example]
    val_examples: list[Example]
    features: dict[tuple[str, int], torch.Tensor] | None
    text_only: bool
    per_step: int
    """Examples per optimizer step (batch size x accumulation)."""
    steps_per_epoch: int
    total: int
    start: int
    """First step to run (after a resumed checkpoint)."""
    optimizer: torch.optim.Optimizer
    scheduler: object
    trainable: dict[str, torch.nn.Parameter]
    rank_gen: torch.Generator
    net: torch.nn.Module
    """The model, wrapped in DDP under torchrun."""
    autocast: contextlib.AbstractContextManager
    routed: bool
    """Experts with a router are attached (their losses and load are logged)."""
    summary: dict
    load_sum: dict[int, torch.Tensor] = field(default_factory=dict)


class Trainer:
    """One run of a recipe into ``out``; see the module docstring."""

    def __init__(self, recipe: Recipe, data: Path, out: Path, info: D.DistInfo, max_steps: int | None, progress: bool):
        self.recipe, self.data, self.out, self.info = recipe, Path(data), Path(out), info
        self.max_steps = max_steps
        self.progress = progress and info.is_main
        self.ckpts = CheckpointManager(self.out / "checkpoints", recipe.keep_checkpoints)
        self.global_step = 0
        self.stage_summaries: dict[str, dict] = {}
        self.started = time.time()
        self.features: dict[tuple[str, int], torch.Tensor] = {}
        self.precision = choose_precision(recipe.precision, info.device)
        processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        self.threads = use_threads(recipe.threads, processes) if info.device.type == "cpu" else torch.get_num_threads()
        if info.is_main:
            log.info("precision %s (%s); %d threads", self.precision.name, self.precision.reason, self.threads)

    # -- setup -------------------------------------------------------------------

    def _read_data(self) -> None:
        if not self.data.is_file():
            what = "is a directory, not a records file" if self.data.is_dir() else "no such records file"
            raise SlavaError(f"{self.data}: {what} (--data takes the JSONL written by `slava teach`)")
        records, bad = read_records(self.data)
        if bad:
            log.warning("%s: skipped %d invalid lines (e.g. line %d: %s)", self.data, len(bad), bad[0].line, bad[0].reason)
        if not records:
            raise SlavaError(f"{self.data}: no valid records to train on")
        self.root = self.data.parent
        self.train_records, self.val_records, self.n_test = split_records(records, self.recipe.val_fraction)
        self.n_invalid = len(bad)

    def _tokenizer(self, resumed: bool):
        from slava.model.language import pretrained_dir
        from slava.model.tokenizer import SlavaTokenizer, from_pretrained_dir, train_tokenizer

        lm = self.recipe.model.lm
        if lm.kind in ("hf", "gguf"):
            return from_pretrained_dir(pretrained_dir(lm))
        tok_dir = self.out / "tokenizer"
        if not (resumed and (tok_dir / "slava_tokenizer.json").is_file()) and self.info.is_main:
            texts = [render_text(r["conversations"]).replace("<image>\n", "") for r in self.train_records]
            train_tokenizer(texts, lm.vocab_size).save(tok_dir)
        D.barrier(self.info)
        return SlavaTokenizer.load(tok_dir)

    # -- run ---------------------------------------------------------------------

    def run(self, resume: bool, resume_or_start: bool = False) -> dict:
        """Train every stage not yet done; returns the summary written to ``train_summary.json``.

        The records are read before the run directory is created, and the
        directory is locked (``slava.data.locks``) for the whole run.
        """
        self._read_data()
        lock, problem = None, None
        if self.info.is_main:
            try:
                lock = OutputLock(self.out).acquire()
            except OutputLocked as exc:
                problem = str(exc)
        # Every rank learns of a refused lock, so none waits at a barrier for a main process that left.
        if D.all_reduce_sum([1.0 if problem else 0.0], self.info)[0] > 0:
            raise OutputLocked(problem or f"{self.out} is locked by another process (see the main process's error)")
        try:
            return self._run(resume or resume_or_start, resume_or_start)
        finally:
            if lock is not None:
                lock.release()

    def _run(self, resume: bool, resume_or_start: bool) -> dict:
        from slava.model.vlm import SlavaModel

        latest = self.ckpts.latest()
        if latest is not None and not resume:
            raise SlavaError(f"{self.out} already holds a run (checkpoint {latest.name}); pass --resume or choose another --out")
        ckpt = self.ckpts.load() if resume else None
        if resume and ckpt is None:
            if not resume_or_start:
                raise SlavaError(f"{self.out}: no checkpoint to resume from (nothing in {self.ckpts.root}); check --out, "
                                 "or pass --resume-or-start to start a new run there")
            log.warning("%s: no checkpoint to resume from; starting from the beginning", self.out)
        if ckpt is not None and ckpt.meta.get("recipe_hash") != _recipe_hash(self.recipe):
            log.warning("the recipe differs from the one the checkpoint was written with; the run will not match")
        self.out.mkdir(parents=True, exist_ok=True)
        if self.info.is_main:
            truncate_after(self.out / "metrics.jsonl", ckpt.meta["global_step"] if ckpt else -1)
            write_text_atomic(self.out / "recipe.yaml", recipe_to_yaml(self.recipe))
        D.barrier(self.info)
        tokenizer = self._tokenizer(resumed=ckpt is not None)
        torch.manual_seed(self.recipe.seed)
        model = SlavaModel.build(self.recipe.model, tokenizer).to(self.info.device)
        self.images = ImageStore(model.image_size, self.recipe.cache_images)
        if any(self._uses_images(i) for i in range(len(self.recipe.stages))):
            paths = [resolve_image(r, self.root) for r in self.train_records + self.val_records]
            self.images.preload(paths, self.recipe.num_workers)
        self.head = self.head_summary = None
        if self.recipe.head.tags:
            self._tag_prompts(model)

        first, resume_state = 0, None
        if ckpt is not None:
            self.global_step = ckpt.meta["global_step"]
            self.stage_summaries = ckpt.meta.get("stage_summaries", {})
            first = ckpt.meta["completed_stages"]
            for i in range(first):
                model.prepare_stage(self.recipe.stages[i].name, images=self._uses_images(i), freeze=self.recipe.stages[i].freeze)
                self._load_weights(model, self._stage_product(i), f"stage {i} product")
            if ckpt.meta["in_stage"]:
                resume_state = ckpt
            else:
                restore_rng(ckpt.state["rng"], ckpt.meta["rng"])

        self.metrics = MetricsLog(self.out / "metrics.jsonl", self.info.is_main)
        try:
            for i in range(first, len(self.recipe.stages)):
                self._run_stage(model, i, resume_state if i == first else None)
        finally:
            self.metrics.close()
        return self._finish(model)

    def _uses_images(self, i: int) -> bool:
        stage = self.recipe.stages[i]
        return stage.images if stage.images is not None else stage.name != "base"

    def _stage_product(self, i: int) -> Path:
        return self.out / "stages" / f"{i}-{self.recipe.stages[i].name}.safetensors"

    @staticmethod
    def _trainable(model) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in model.named_parameters() if p.requires_grad}

    def _load_weights(self, model, source, what: str) -> None:
        from safetensors.torch import load_file

        tensors = load_file(str(source)) if isinstance(source, Path) else source
        own = self._trainable(model)
        if set(tensors) != set(own):
            diff = sorted(set(tensors) ^ set(own))
            raise SlavaError(f"{what}: tensors do not match the model ({len(diff)} differ, e.g. {diff[0]})")
        with torch.no_grad():
            for name, p in own.items():
                p.copy_(tensors[name].to(p.device))

    def _optimizer(self, model, index: int):
        stage = self.recipe.stages[index]
        groups = []
        for name, params in model.param_groups().items():
            if not params:
                continue
            lr = stage.lr.get(name, stage.lr.get("default"))
            if lr is None:
                raise ConfigError(f"stages[{index}].lr: no learning rate for parameter group {name!r} (name it or give `default`)")
            matrices = [p for p in params if p.ndim >= 2]
            vectors = [p for p in params if p.ndim < 2]
            groups.append({"params": matrices, "lr": lr, "weight_decay": stage.weight_decay, "name": name})
            if vectors:
                groups.append({"params": vectors, "lr": lr, "weight_decay": 0.0, "name": f"{name}.no_decay"})
        if not groups:
            raise SlavaError(f"stage {stage.name}: nothing to train")
        return torch.optim.AdamW(groups, betas=(0.9, 0.999), eps=1e-8)

    def _permutation(self, index: int, epoch: int, n: int) -> tuple[list[int], int]:
        seed = (self.recipe.seed * 1_000_003 + index * 10_007 + epoch) % 2**63
        return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist(), seed

    # -- one stage -----------------------------------------------------------------

    def _begin_stage(self, model, index: int, ckpt: Checkpoint | None) -> _Stage:
        """Examples, cached features, step budget, optimizer and schedule of one stage, restored from ``ckpt`` if given."""
        stage = self.recipe.stages[index]
        info, recipe = self.info, self.recipe
        text_only = not self._uses_images(index)
        model.prepare_stage(stage.name, images=not text_only, freeze=stage.freeze)
        model.train()
        autocast = self.precision.autocast(info.device.type)
        common = dict(
            root=self.root, tokenizer=model.tokenizer, num_image_tokens=model.num_image_tokens,
            max_len=recipe.max_len, images=self.images, text_only=text_only, tasks=stage.tasks,
            label_text=stage.name == "base",
        )
        records = [r for r in self.train_records for _ in range(stage.repeat.get(r.get("task"), 1))]
        train_ex, skipped = build_examples(records, what=f"stage {stage.name}, training records", **common)
        val_ex, _ = build_examples(self.val_records, what=f"stage {stage.name}, validation records", **common)
        if recipe.val_max is not None and len(val_ex) > recipe.val_max:
            val_ex = val_ex[:: -(-len(val_ex) // recipe.val_max)]
        features = None if text_only else self._tower_features(model, train_ex, val_ex, autocast)
        per_step = stage.batch_size * stage.grad_accum
        steps_per_epoch = len(train_ex) // per_step
        if steps_per_epoch == 0:
            raise SlavaError(
                f"stage {stage.name}: {len(train_ex)} usable examples, fewer than one step "
                f"(batch_size {stage.batch_size} x grad_accum {stage.grad_accum})"
            )
        total = stage.epochs * steps_per_epoch
        for cap in (stage.max_steps, self.max_steps):
            if cap is not None:
                total = min(total, cap)

        optimizer = self._optimizer(model, index)
        scheduler = make_scheduler(optimizer, total, stage.warmup_ratio)
        trainable = self._trainable(model)
        rank_gen = torch.Generator().manual_seed(recipe.seed * 7919 + index)
        start = 0
        if ckpt is not None:
            self._load_weights(model, ckpt.weights, f"checkpoint {ckpt.path}")
            optimizer.load_state_dict(ckpt.state["optimizer"])
            scheduler.load_state_dict(ckpt.state["scheduler"])
            restore_rng(ckpt.state["rng"], ckpt.meta["rng"], {"rank": rank_gen})
            start = ckpt.meta["stage_step"]

        net = model
        if info.distributed:
            from torch.nn.parallel import DistributedDataParallel

            net = DistributedDataParallel(
                model, device_ids=[info.device.index] if info.device.type == "cuda" else None, broadcast_buffers=False
            )
        summary = {"examples": len(train_ex), "val_examples": len(val_ex), "skipped": dict(skipped.counts), "steps": total}
        self.stage_summaries[stage.name] = summary
        return _Stage(
            index=index, config=stage, examples=train_ex, val_examples=val_ex, features=features, text_only=text_only,
            per_step=per_step, steps_per_epoch=steps_per_epoch, total=total, start=start, optimizer=optimizer,
            scheduler=scheduler, trainable=trainable, rank_gen=rank_gen, net=net, autocast=autocast,
            routed=model.adapted and recipe.model.mope.num_experts > 1, summary=summary,
        )

    def _run_stage(self, model, index: int, ckpt: Checkpoint | None) -> None:
        """Every remaining step of one stage, validation at each epoch end, checkpoints, then the stage's product."""
        from tqdm import tqdm

        st = self._begin_stage(model, index, ckpt)
        bar = tqdm(total=st.total, initial=st.start, desc=st.config.name, disable=not self.progress, dynamic_ncols=True)
        perm_cache: dict[int, tuple[list[int], int, list[int]]] = {}
        row = None
        for step in range(st.start, st.total):
            epoch, position = divmod(step, st.steps_per_epoch)
            if epoch not in perm_cache:
                perm, perm_seed = self._permutation(index, epoch, len(st.examples))
                views = [0] * len(st.examples) if st.text_only else choose_variants(self.recipe.augment, perm_seed, len(st.examples))
                perm_cache = {epoch: (perm, perm_seed, views)}
            perm, perm_seed, views = perm_cache[epoch]
            row = self._step(model, st, perm[position * st.per_step : (position + 1) * st.per_step], views)
            row.update(stage_step=step + 1, epoch=epoch)
            self._log_step(model, st, row, bar)

            last = step == st.total - 1
            if position == st.steps_per_epoch - 1 or last:
                self._end_epoch(model, st, epoch)
            if not last and self.global_step % self.recipe.checkpoint_every == 0:
                self._checkpoint(st.trainable, index, step + 1, True, st.optimizer, st.scheduler, st.rank_gen,
                                 {"epoch": epoch, "position": position + 1, "perm_seed": perm_seed})
        bar.close()
        st.summary["final_loss"] = row["loss"] if row is not None else st.summary.get("final_loss")
        if self.info.is_main:
            (self.out / "stages").mkdir(exist_ok=True)
            save_tensors_atomic(dict(st.trainable), self._stage_product(index))
        self._checkpoint({}, index + 1, 0, False, None, None, None, {})

    def _step(self, model, st: _Stage, chosen: list[int], views: list[int]) -> dict:
        """One optimizer step over the examples ``chosen`` (all micro-batches, all processes); returns its metrics row."""
        info, stage, mope = self.info, st.config, self.recipe.model.mope
        t0 = time.perf_counter()
        rank = model.sample_rank(st.rank_gen)
        model.set_rank(rank)
        if st.routed:
            model.reset_expert_usage()
        # Micro-batches of like lengths pad less; the step's examples, and so its result, are unchanged.
        by_length = sorted(chosen, key=lambda j: len(st.examples[j].ids))
        micro = [by_length[m * stage.batch_size : (m + 1) * stage.batch_size] for m in range(stage.grad_accum)]
        global_tokens = sum(target_tokens(st.examples[j]) for idx in micro for j in idx)
        sums = [0.0, 0.0, 0.0, 0.0]  # ce sum, balance, z, tokens seen (padding excluded)
        for m, idx in enumerate(micro):
            mine = D.shard(idx, info)
            batch = self._batch([st.examples[j] for j in mine], model, st.features, [views[j] for j in mine])
            sync = m == stage.grad_accum - 1 or not info.distributed
            with contextlib.nullcontext() if sync else st.net.no_sync():
                with st.autocast:
                    out = st.net(batch.get("pixels"), batch["input_ids"], batch["attention_mask"], batch["labels"],
                                 tower_tokens=batch.get("tower_tokens"), reduction="sum")
                ce_sum = out.loss
                # DDP averages gradients over processes; scaling by world size turns that into a sum.
                loss = ce_sum * (info.world_size / global_tokens)
                if st.routed:
                    loss = loss + (mope.balance_weight * out.balance_loss + mope.z_weight * out.z_loss) / stage.grad_accum
                loss.backward()
            sums[0] += ce_sum.item()
            sums[1] += float(out.balance_loss.detach()) / stage.grad_accum
            sums[2] += float(out.z_loss.detach()) / stage.grad_accum
            sums[3] += float(batch["attention_mask"].sum())
        params = list(st.trainable.values())
        grad_norm = torch.nn.utils.clip_grad_norm_(params, stage.grad_clip if stage.grad_clip > 0 else math.inf)
        lr = st.optimizer.param_groups[0]["lr"]
        st.optimizer.step()
        st.scheduler.step()
        st.optimizer.zero_grad(set_to_none=True)
        self.global_step += 1

        ce_sum, balance, z, tokens = D.all_reduce_sum(sums, info)
        ce = ce_sum / global_tokens
        balance, z = balance / info.world_size, z / info.world_size
        elapsed = time.perf_counter() - t0
        return {
            "step": self.global_step, "stage": stage.name,
            "loss": ce + (mope.balance_weight * balance + mope.z_weight * z if st.routed else 0.0),
            "ce": ce, "balance": balance, "z": z, "lr": lr, "grad_norm": float(grad_norm),
            "tokens_per_s": tokens / elapsed, "step_s": elapsed, "expert_rank": rank,
        }

    def _log_step(self, model, st: _Stage, row: dict, bar) -> None:
        """Expert load of the step (routed stages), then the row to metrics.jsonl and the progress bar."""
        if st.routed:
            row["expert_entropy"], counts = self._expert_load(model.expert_usage(), self.info)
            for layer, c in counts.items():
                st.load_sum[layer] = st.load_sum.get(layer, 0) + c
        self.metrics.write(row)
        bar.update(1)
        bar.set_postfix(loss=f"{row['loss']:.3f}", lr=f"{row['lr']:.2e}", tok_s=f"{row['tokens_per_s']:.0f}")

    def _end_epoch(self, model, st: _Stage, epoch: int) -> None:
        """Validation loss and the epoch's expert load, logged and kept in the stage summary."""
        val = self._validate(model, st.val_examples, st.config.batch_size, st.autocast, st.features)
        extra = {"expert_load": {str(k): (v / v.sum()).tolist() for k, v in sorted(st.load_sum.items())}} if st.load_sum else {}
        self.metrics.write({"step": self.global_step, "stage": st.config.name, "epoch": epoch, "val_loss": val, **extra})
        st.summary["val_loss"] = val
        model.train()

    def _expert_load(self, usage: dict[str, list[int]], info: D.DistInfo) -> tuple[list[float], dict[int, torch.Tensor]]:
        """Mean normalised load entropy per decoder layer, and summed counts per layer (all processes)."""
        names = sorted(usage)
        flat = D.all_reduce_sum([c for n in names for c in usage[n]], info)
        width = len(usage[names[0]])
        by_layer: dict[int, list[list[float]]] = {}
        for k, name in enumerate(names):
            match = _LAYER.search(name)
            by_layer.setdefault(int(match.group(1)) if match else -1, []).append(flat[k * width : (k + 1) * width])
        entropy = [sum(load_entropy(c) for c in rows) / len(rows) for _, rows in sorted(by_layer.items())]
        counts = {layer: torch.tensor(rows, dtype=torch.float64).sum(0) for layer, rows in by_layer.items()}
        return entropy, counts

    def _view(self, image: str, variant: int) -> torch.Tensor:
        """Model-input pixels of one copy of an image: 0 is the clean one, the others degraded (``slava.train.augment``)."""
        pixels = self.images.get(image)
        return pixels if variant == 0 else degrade(pixels, variant_seed(self.recipe.seed, image, variant))

    @torch.no_grad()
    def _tower_features(self, model, train_ex: list[Example], val_ex: list[Example], autocast):
        """The frozen tower's output per (image, copy), computed once and kept for later stages; None while the tower trains.

        Every record of an image, in every epoch and stage, otherwise runs the
        same frozen tower again: on 2 CPU cores that was a fifth of a step.
        Validation images only need their clean copy.
        """
        if not self.recipe.cache_features or any(p.requires_grad for p in model.tower.parameters()):
            self.features.clear()
            return None
        aug = self.recipe.augment
        copies = range(aug.variants if aug.enabled else 1)
        keys = {(e.image, v) for e in train_ex for v in copies} | {(e.image, 0) for e in val_ex}
        todo = sorted(keys - set(self.features))
        # Frozen here, so its inference copy gives the same tokens in less time.
        tower = model.tower.for_inference() if todo else None
        for i in range(0, len(todo), 32):
            chunk = todo[i : i + 32]
            pixels = torch.stack([self._view(*key) for key in chunk]).to(self.info.device)
            with autocast:
                out = tower(pixels)
            self.features.update(zip(chunk, out.unbind(0)))
        return self.features

    def _batch(self, examples: list[Example], model, features: dict[tuple[str, int], torch.Tensor] | None,
               variants: list[int] | None = None) -> dict:
        """Collated tensors on the device: the chosen copy of each image as pixels, or its cached ``tower_tokens``."""
        batch = collate(examples, model.tokenizer.pad_id)
        if all(e.image is not None for e in examples):
            keys = list(zip((e.image for e in examples), variants or [0] * len(examples)))
            if features is not None:
                batch["tower_tokens"] = torch.stack([features[k] for k in keys])
            else:
                batch["pixels"] = torch.stack([self._view(*k) for k in keys])
        return {k: v.to(self.info.device) for k, v in batch.items()}

    @torch.no_grad()
    def _validate(self, model, examples: list[Example], batch_size: int, autocast,
                  features: dict[tuple[str, int], torch.Tensor] | None) -> float | None:
        """Mean per-token loss over the validation examples, at full expert rank (sharded over processes)."""
        if not examples:
            return None
        model.eval()
        model.set_rank(None)
        mine = examples[self.info.rank :: self.info.world_size]
        ce_sum = tokens = 0.0
        for i in range(0, len(mine), batch_size):
            batch = self._batch(mine[i : i + batch_size], model, features)
            with autocast:
                out = model(batch.get("pixels"), batch["input_ids"], batch["attention_mask"], batch["labels"],
                            tower_tokens=batch.get("tower_tokens"), reduction="sum")
            ce_sum += out.loss.item()
            tokens += float((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        ce_sum, tokens = D.all_reduce_sum([ce_sum, tokens], self.info)
        return ce_sum / max(tokens, 1.0)

    def _checkpoint(self, weights, stage_index, stage_step, in_stage, optimizer, scheduler, rank_gen, order) -> None:
        """Write a checkpoint from the main process (every process holds identical state)."""
        if not self.info.is_main:
            return
        rng_tensors, rng_plain = capture_rng({"rank": rank_gen} if rank_gen is not None else None)
        state = {"rng": rng_tensors}
        if optimizer is not None:
            state["optimizer"] = optimizer.state_dict()
            state["scheduler"] = scheduler.state_dict()
        meta = {
            "global_step": self.global_step,
            "completed_stages": stage_index,
            "stage": self.recipe.stages[stage_index].name if stage_index < len(self.recipe.stages) else None,
            "stage_step": stage_step,
            "in_stage": in_stage,
            "data_order": order,
            "rng": rng_plain,
            "recipe_hash": _recipe_hash(self.recipe),
            "world_size": self.info.world_size,
            "stage_summaries": self.stage_summaries,
            "time": time.time(),
        }
        self.ckpts.save(weights, state, meta)

    # -- end ---------------------------------------------------------------------

    def _classed_images(self, records: list[dict]) -> dict[str, str]:
        """{image key: class} of the records that name a class (``meta.class``), one entry per readable image.

        An image training skipped as missing or unreadable is left out here too.
        """
        found = {resolve_image(r, self.root): str(c) for r in records if (c := (r.get("meta") or {}).get("class")) is not None}
        return {im: c for im, c in found.items() if self._readable(im)}

    def _readable(self, image: str) -> bool:
        try:
            self.images.get(image)
        except SlavaError:
            return False
        return True

    @torch.no_grad()
    def _head_features(self, tower, images: list[str], kind: str,
                       memo: dict[tuple[str, int, int], torch.Tensor] | None = None, variant: int = 0,
                       turn: int = 0) -> torch.Tensor:
        """The head's features of one copy of each image (0: the clean one, ``_view``), in view ``turn`` of
        ``towers.dihedral_view`` (0: as it is): the cached tower output where training kept it, else one
        forward of ``tower`` (the model's tower's inference copy: nothing trains here).

        ``memo`` ((image, copy, turn) → feature) keeps what was computed for a later call with the same frozen tower.
        """
        from slava.model.class_head import pooled_tokens, tower_head_features
        from slava.model.towers import dihedral_view

        if kind == "pooled" and turn == 0 and all((im, variant) in self.features for im in images):
            return torch.stack([pooled_tokens(self.features[(im, variant)][None])[0] for im in images])
        keys = [(im, variant, turn) for im in images]
        memo = {} if memo is None else memo
        todo = [k for k in dict.fromkeys(keys) if k not in memo]
        for i in range(0, len(todo), 32):
            chunk = todo[i : i + 32]
            pixels = torch.stack([dihedral_view(self._view(im, v), t) for im, v, t in chunk]).to(self.info.device)
            with self.precision.autocast(self.info.device.type):
                memo.update(zip(chunk, tower_head_features(tower, pixels, kind).float().cpu().unbind(0)))
        return torch.stack([memo[k] for k in keys])

    def _fitted_head(self, model, memo: dict[tuple[str, int, int], torch.Tensor] | None = None):
        """(classification head, its summary) fitted on the training images (``slava.train.class_head``), or (None, None).

        ``memo`` is ``_head_features``'.
        """
        from slava.data.run_head import HEAD_FILE
        from slava.model.towers import DIHEDRAL
        from slava.train.class_head import fit_head, head_macro_f1

        cfg = self.recipe.head
        train = self._classed_images(self.train_records)
        if not cfg.enabled or len(set(train.values())) < 2:
            return None, None
        model.eval()
        start = time.perf_counter()
        views = DIHEDRAL if cfg.turns else 1
        copies = [(0, t) for t in range(views)] + [(v, 0) for v in range(1, cfg.augment + 1)]
        tower = model.tower.for_inference()
        feats = torch.cat([self._head_features(tower, list(train), cfg.features, memo, v, t) for v, t in copies])
        head = fit_head(feats, list(train.values()) * len(copies), cfg, self.recipe.seed)
        out = {"file": HEAD_FILE, "kind": head.kind, "features": head.features, "labels": head.labels,
               "train_images": len(train), "views": views, "degraded_copies": cfg.augment}
        val = {im: c for im, c in self._classed_images(self.val_records).items() if c in head.labels}
        if val:
            f1 = head_macro_f1(head, self._head_features(tower, list(val), cfg.features, memo), list(val.values()))
            out.update(val_images=len(val), val_macro_f1=round(f1, 4))
        out["fit_s"] = round(time.perf_counter() - start, 2)
        log.info("classification head (%s on %s features): %s", head.kind, head.features,
                 f"held-out macro-F1 {out['val_macro_f1']}" if val else "no held-out images")
        return head, out

    def _tag_prompts(self, model) -> None:
        """Fit the head before the first stage and tag every record's image prompt with its top class (``HeadConfig.tags``)."""
        from slava.model.class_head import image_tags

        # The tower is frozen throughout (validate_recipe), so each image's features are computed once here.
        memo: dict[tuple[str, int, int], torch.Tensor] = {}
        self.head, self.head_summary = self._fitted_head(model, memo)
        if self.head is None:
            raise SlavaError("head.tags needs a classification head: enable it, with records naming at least two "
                             "classes (meta.class)")
        tower = model.tower.for_inference()
        for which in ("train_records", "val_records"):
            records = getattr(self, which)
            images = sorted({im for r in records if r.get("image") and self._readable(im := resolve_image(r, self.root))})
            feats = self._head_features(tower, images, self.head.features, memo) if images else None
            tags = dict(zip(images, image_tags(self.head, feats))) if images else {}
            setattr(self, which, tag_records(records, tags, self.root))
        log.info("image prompts tagged with the head's class (%d training records)", len(self.train_records))

    def _finish(self, model) -> dict:
        from slava.train.plots import plot_run

        summary = {
            "global_steps": self.global_step,
            "time_s": round(time.time() - self.started, 1),
            "world_size": self.info.world_size,
            "records": {
                "train": len(self.train_records), "val": len(self.val_records),
                "test_excluded": self.n_test, "invalid_lines": self.n_invalid,
            },
            "stages": self.stage_summaries,
            **_peak_memory_mb(self.info.device),
            **describe_run(self.precision, self.threads),
            "labels": label_vocabulary(self.train_records),
        }
        if self.info.is_main:
            from slava.data.run_head import HEAD_FILE, save_head

            head, classifier = (self.head, self.head_summary) if self.head is not None else self._fitted_head(model)
            (self.out / HEAD_FILE).unlink(missing_ok=True)
            if head is not None:
                save_head(head, self.out / HEAD_FILE)
                summary["classifier"] = {**classifier, "tags": head.tags}
            model.save(self.out)
            write_text_atomic(self.out / SUMMARY_FILE, json.dumps(summary, indent=1) + "\n")
            plot_run(self.out)
        D.barrier(self.info)
        return summary


def train(
    recipe: Recipe, data: str | Path, out: str | Path, resume: bool = False, max_steps: int | None = None,
    progress: bool = True, resume_or_start: bool = False,
) -> dict:
    """Run ``recipe`` on the records in ``data`` into the run directory ``out``.

    ``resume`` continues from the latest checkpoint (the losses then match an
    uninterrupted run); ``max_steps`` caps every stage (for smoke tests). Under
    ``torchrun`` every process calls this; the main one writes the files.
    ``resume`` without a checkpoint in ``out`` is an error (a mistyped
    directory would cost a whole run), unless ``resume_or_start``.
    """
    if max_steps is not None and (isinstance(max_steps, bool) or max_steps < 1):
        raise SlavaError(f"max_steps must be at least 1, got {max_steps}")
    info = D.init_distributed()
    try:
        return Trainer(recipe, Path(data), Path(out), info, max_steps, progress).run(resume, resume_or_start)
    finally:
        D.shutdown(info)
