"""Evaluation tasks over the Assistant API: text, classification, few-shot, counting, ablation, shifts.

Each task takes an ``Assistant`` and ``EvalItem``s and returns plain dicts
(JSON-ready) for ``metrics.json``.
"""

from __future__ import annotations

import json

import random
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from slava.data.chat import role_markers
from slava.data.run_labels import SUMMARY_FILE, read_run_labels
from slava.errors import SlavaError
from slava.eval import metrics as M
from slava.eval.data import COUNT_KEYS, EvalItem
from slava.teacher.prompts import CAPTION_PROMPT

BATCH = 16


class LeakageError(SlavaError):
    """Zero-shot evaluation was asked for a class the run's training data named."""


def stratified(items: Sequence[EvalItem], limit: int | None) -> list[EvalItem]:
    """At most ``limit`` items taken round-robin over labels, so a limited subset stays balanced."""
    if limit is None or limit >= len(items):
        return list(items)
    by_label: dict = defaultdict(list)
    for it in items:
        by_label[it.label].append(it)
    queues = [by_label[k] for k in sorted(by_label, key=str)]
    out: list[EvalItem] = []
    depth = 0
    while len(out) < limit:
        for q in queues:
            if depth < len(q) and len(out) < limit:
                out.append(q[depth])
        depth += 1
    return out


# ------------------------------------------------------------------ text


def text_task(assistant, items: Sequence[EvalItem], max_new_tokens: int = 128, samples: int = 6,
              progress: bool = False) -> dict:
    """Captions and VQA answers (greedy) against the teacher's references: overall, per task and per family.

    ``hygiene`` counts, over the generated (not measured) answers, numbers in
    neither context nor question, role markers and looping answers (``metrics.hygiene``).
    """
    asked = [(it, ref) for it in items for ref in it.refs if ref.task in ("caption", "vqa")]
    with tqdm(total=len(asked), desc="captions and VQA", unit="answer", disable=not progress) as bar:
        answers = assistant.answer_many(
            [(it.image, CAPTION_PROMPT if ref.task == "caption" else ref.question) for it, ref in asked],
            max_new_tokens=max_new_tokens, progress=bar.update)
    rows = [{"image": it.image, "label": it.label, "task": ref.task, "family": ref.family,
             "question": ref.question, "reference": ref.answer, "answer": answer.text,
             "latency_s": answer.latency_s, "source": answer.source,
             "invented": list(answer.invented), "misplaced": list(answer.misplaced), "context": answer.context}
            for (it, ref), answer in zip(asked, answers)]
    if not rows:
        return {"n": 0}

    def scores(subset):
        return M.text_scores([r["answer"] for r in subset], [r["reference"] for r in subset])

    groups: dict[str, list] = defaultdict(list)
    tasks: dict[str, list] = defaultdict(list)
    for r in rows:
        groups[r["family"]].append(r)
        tasks[r["task"]].append(r)
    return {
        "overall": scores(rows),
        "per_task": {t: scores(v) for t, v in sorted(tasks.items())},
        "per_family": {f: scores(v) for f, v in sorted(groups.items())},
        "mean_latency_s": float(np.mean([r["latency_s"] for r in rows])),
        "hygiene": M.hygiene([r for r in rows if r["source"] == "model"],
                             getattr(assistant, "markers", None) or role_markers()),
        "n": len(rows),
        "samples": _samples(rows, samples),
    }


def _samples(rows: list[dict], n: int) -> list[dict]:
    """One row per image for the first ``n`` images, preferring captions."""
    seen, out = set(), []
    for r in sorted(rows, key=lambda r: r["task"] != "caption"):
        if r["image"] not in seen and len(out) < n:
            seen.add(r["image"])
            out.append(r)
    return out


# ------------------------------------------------------------------ classification


def rank_images(assistant, images: Sequence, labels: Sequence[str], method: str = "auto") -> list[list[str]]:
    """Zero-shot ranked labels of images (paths or arrays), batched through ``classify_batch``."""
    out = []
    for i in range(0, len(images), BATCH):
        batch = assistant.classify_batch(list(images[i : i + BATCH]), labels, method=method)
        out += [[label for label, _ in c.ranked] for c in batch]
    return out


def classify_task(assistant, items: Sequence[EvalItem], labels: Sequence[str],
                  method: str = "auto") -> tuple[dict, list[list[str]]]:
    """Closed-set classification of ``items`` among ``labels``; returns scores (with the ``method`` used) and the ranked labels."""
    ranked = rank_images(assistant, [it.image for it in items], labels, method)
    scores = M.classification_scores([it.label for it in items], ranked, labels)
    scores["method"] = assistant.classify_method(labels, method)
    return scores, ranked


def image_ablation(assistant, items: Sequence[EvalItem], labels: Sequence[str], clean_ranked: list[list[str]],
                   seed: int = 0) -> dict:
    """Accuracy with blank (all-0.5) images and with images shuffled between items, beside chance.

    Classification of one image does not depend on the others, so the
    shuffled run reuses the clean rankings under a derangement of the images.
    """
    truth = [it.label for it in items]
    shape = np.asarray(assistant.prepare(items[0].image).pixels).shape
    blank = rank_images(assistant, [np.full(shape, 0.5, np.float32) for _ in items], labels)
    perm = list(range(len(items)))
    rng = random.Random(seed)
    while len(perm) > 1 and any(i == p for i, p in enumerate(perm)):
        rng.shuffle(perm)
    shuffled = [clean_ranked[p] for p in perm]
    chance = M.chance_accuracy(truth)
    out = {"chance": chance, "uniform_chance": 1 / len(labels), "n": len(items)}
    for name, ranked in (("blank", blank), ("shuffled", shuffled)):
        acc = M.topk_accuracy(truth, ranked, 1)
        # Chance plus two binomial standard errors: what a label-blind answer reaches by luck.
        margin = 2 * np.sqrt(chance * (1 - chance) / max(len(items), 1))
        out[name] = {"top1": acc, "at_chance": bool(acc <= chance + margin)}
    return out


def leaked_classes(run_dir: str | Path, classes: Sequence[str]) -> dict[str, str]:
    """Classes of ``classes`` that the run's training data named, with where (``slava.data.run_labels``)."""
    from slava.teacher.prompts import label_name

    labels = read_run_labels(run_dir)
    if labels is None:
        raise LeakageError(f"{Path(run_dir) / SUMMARY_FILE} is missing: cannot tell which classes the run saw, "
                           "so zero-shot is refused")
    meta = set(labels.get("meta_classes") or {})
    answers = {k.lower() for k in (labels.get("class_names_in_answers") or {})}
    out = {}
    for cls in classes:
        if cls in meta:
            out[cls] = "a training record is labelled with it"
        elif {cls.lower(), cls.replace("_", " ").lower(), label_name(cls).lower()} & answers:
            out[cls] = "its name appears in training answers"
    return out


def refuse_leaks(run_dir: str | Path, classes: Sequence[str]) -> None:
    """Raise ``LeakageError`` naming every class of ``classes`` that the run's training data named."""
    leaked = leaked_classes(run_dir, classes)
    if leaked:
        detail = "; ".join(f"{c}: {why}" for c, why in leaked.items())
        raise LeakageError(f"zero-shot evaluation refused: the run was tuned on data naming held-out class(es) ({detail})")


def zero_shot_task(assistant, run_dir, items: Sequence[EvalItem], classes: Sequence[str]) -> dict:
    """Zero-shot classification among ``classes``, refused when the run's data named any of them."""
    refuse_leaks(run_dir, classes)
    if len(classes) < 2:
        return {"skipped": "fewer than two classes unseen in training"}
    subset = [it for it in items if it.label in classes]
    scores, _ = classify_task(assistant, subset, list(classes))
    return scores


def _embeddings(assistant, images: Sequence[str]):
    import torch

    out = []
    with assistant.inference():
        for i in range(0, len(images), BATCH):
            mg = [assistant.prepare(p) for p in images[i : i + BATCH]]
            out.append(assistant.model.few_shot_embedding(assistant.pixels(mg)).float())
    return torch.cat(out) if out else torch.zeros(0)


def few_shot_task(assistant, items: Sequence[EvalItem], support: Sequence[EvalItem], labels: Sequence[str],
                  shots: Sequence[int], in_context_limit: int = 10) -> dict:
    """Prototype few-shot classification with k support images per class from the train split, for each k.

    The embeddings of every image are computed once (``Assistant.classify``
    with ``mode="prototype"`` encodes the support for each query, the same
    arithmetic at k× the cost). In-context mode is tried at one shot on the
    first ``in_context_limit`` items and reported as unsupported when the
    model's context cannot hold one example per class.
    """
    from slava.assistant.fewshot import prototype_probs, prototypes

    pool = {label: [it.image for it in support if it.label == label] for label in labels}
    short = {label: len(v) for label, v in pool.items() if len(v) < max(shots)}
    query = _embeddings(assistant, [it.image for it in items])
    sup = {label: _embeddings(assistant, paths[: max(shots)]) for label, paths in pool.items() if paths}
    truth = [it.label for it in items]
    out: dict = {"support_split": "train", "short_classes": short}
    for k in shots:
        names, protos, centre = prototypes({label: e[:k] for label, e in sup.items()})
        probs = prototype_probs(query, protos, centre)
        ranked = [[names[j] for j in row] for row in probs.argsort(dim=1, descending=True).tolist()]
        out[f"prototype_{k}"] = M.classification_scores(truth, ranked, labels)
    out["in_context_1"] = _in_context(assistant, items[:in_context_limit], pool, labels)
    return out


def _in_context(assistant, items, pool, labels) -> dict:
    from slava.assistant.fewshot import SupportError

    try:
        ranked = [[label for label, _ in assistant.classify(it.image, labels, support={k: v[:1] for k, v in pool.items()},
                                                            mode="in_context").ranked] for it in items]
    except SupportError as exc:
        return {"unsupported": str(exc)}
    return M.classification_scores([it.label for it in items], ranked, labels)


# ------------------------------------------------------------------ counting


def counting_task(assistant, items: Sequence[EvalItem], samples: int = 4) -> dict:
    """MAE and MAPE of grounded measurement answers against ground truth, per quantity."""
    from slava.teacher.prompts import MEASURE_QUESTIONS

    pairs: dict[str, list] = defaultdict(list)
    missing: dict[str, int] = defaultdict(int)
    examples = []
    for it in items:
        for key, kind in COUNT_KEYS.items():
            if key not in it.truth:
                continue
            answer = assistant.ask(it.image, MEASURE_QUESTIONS[kind][0])
            value = answer.numbers.get(key)
            if value is None or answer.source != "measurement":
                missing[key] += 1
                continue
            pairs[key].append((float(it.truth[key]), float(value)))
            if len(examples) < samples:
                examples.append({"image": it.image, "question": MEASURE_QUESTIONS[kind][0], "answer": answer.text,
                                 "truth": it.truth[key], "quantity": key})
    out = {}
    for key in COUNT_KEYS:
        got = pairs.get(key, [])
        if got or missing.get(key):
            t, p = [a for a, _ in got], [b for _, b in got]
            out[key] = {"mae": M.mae(t, p), "mape": M.mape(t, p), "n": len(got), "unanswered": missing.get(key, 0)}
    out["samples"] = examples
    return out


# ------------------------------------------------------------------ shifted sets


def shifted_items(items: Sequence[EvalItem], summary: dict, shift: str, out_dir: Path) -> list[EvalItem]:
    """The synthetic twins of ``items`` (same class and image seed) rendered under ``shift``, as PNG files.

    Each carries its pixel size as the originals do, in pHYs, plus a sidecar
    ``<file>.json`` where a zoomed twin's pixel is finer than pHYs can
    express, so reading it never falls back to OCR of its data bar.
    """
    from slava.eval.data import _truth_from_quantities
    from slava.synth import generate
    from slava.synth.dataset import png_bytes
    from slava.synth.params import image_seed

    out_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for it in items:
        stem = Path(it.image).stem
        index = int(stem.rsplit("-", 1)[1])
        image, truth = generate(it.label, image_seed(summary["seed"], index), size=summary["size"], shift=shift)
        path = out_dir / f"{stem}.png"
        path.write_bytes(png_bytes(image, truth["pixel_size_nm"]))
        path.with_suffix(".json").write_text(json.dumps({"pixel_size_nm": truth["pixel_size_nm"]}))
        out.append(EvalItem(str(path), it.label, "test", _truth_from_quantities(it.label, truth["quantities"])))
    return out


def artefact_items(items: Sequence[EvalItem], artefact: str, severity: str, seed: int) -> list[EvalItem]:
    """``items`` with each image under ``artefact`` at ``severity`` (``slava.artefacts``), as in-memory micrographs.

    Any image can be shifted this way, synthetic or real. Each keeps its
    pixel size, and its truth except after ``magnification``, whose field is
    another one; the artefact's seed differs per image.
    """
    from dataclasses import replace

    from slava.artefacts import shifted
    from slava.io import load_micrograph, micrograph_from_array

    out = []
    for i, it in enumerate(items):
        m = load_micrograph(it.image)
        pixels = shifted(m.pixels, artefact, severity, seed * 100_003 + i)
        moved = micrograph_from_array(pixels, pixel_size_nm=m.pixel_size_nm, crop_data_bar=False, read_bar=False,
                                      path=f"{it.image} ({artefact}, {severity})")
        truth = {} if artefact == "magnification" else it.truth
        out.append(replace(it, image=moved, truth=truth))
    return out
