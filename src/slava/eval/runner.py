"""``evaluate``: every evaluation of one run on one data set, written as ``metrics.json`` + ``report.html``.

Splits: test images are the evaluation set (the trainer never trains on
records of the test split); few-shot support and the baselines' training
images come from the train split. ``limit`` caps the test images of every
task (taken round-robin over classes so the subset stays balanced);
``text_limit`` caps the images whose captions and VQA answers are generated.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import time
from pathlib import Path
from typing import Sequence

from slava.errors import SlavaError
from slava.eval import metrics as M
from slava.eval import tasks as T
from slava.eval.data import add_teacher_references, load_eval_data

TASKS = ("caption", "vqa", "classify", "count")
SHOTS = (1, 5, 10)
CHEAP_BASELINES = ("texture", "efficientnet")


def _machine() -> str:
    return f"{platform.machine()} CPU, {os.cpu_count()} cores"


def _pixels(items):
    from slava.io import load_micrograph

    return [load_micrograph(it.image).pixels for it in items]


def neu_few_shot(assistant, neu_dir: str | Path, shots: int = 5, limit: int | None = None) -> dict:
    """k-shot prototype top-1 on NEU-DET's test split (support from its train split), no NEU training."""
    data = load_eval_data(neu_dir)
    test = T.stratified(data.split("test"), limit)
    res = T.few_shot_task(assistant, test, data.split("train"), data.labels, [shots], in_context_limit=0)
    return res[f"prototype_{shots}"]


def _goals(m: dict) -> list[dict]:
    rows = []

    def add(goal, value, target, ok):
        if value is not None:
            rows.append({"goal": goal, "value": value, "target": target, "met": bool(ok(value))})

    closed = (m.get("classification") or {}).get("closed_set") or {}
    synthetic = m.get("synthetic", True)
    add(f"{'synthetic ' if synthetic else ''}held-out macro-F1", closed.get("macro_f1"), ">= 0.98", lambda v: v >= 0.98)
    robust = m.get("robustness") or {}
    shifted = [s.get("student") for k, s in (robust.get("macro_f1") or {}).items() if k != "clean"]
    add("macro-F1 under shift (worst)", min(shifted) if shifted else None, ">= 0.95", lambda v: v >= 0.95)
    add("METEOR vs teacher", ((m.get("text") or {}).get("overall") or {}).get("meteor"), ">= 0.85", lambda v: v >= 0.85)
    add("particle-count MAE", ((m.get("counting") or {}).get("particle_count") or {}).get("mae"), "<= 1", lambda v: v <= 1)
    abl = (m.get("classification") or {}).get("image_ablation") or {}
    for kind in ("blank", "shuffled") if abl else ():
        add(f"{kind}-image top-1 at chance", abl[kind]["top1"], f"<= chance {abl['chance']:.2f} + 2 s.e.",
            lambda v, kind=kind: abl[kind]["at_chance"])
    neu = m.get("neu") or {}
    add("NEU-DET 5-shot top-1", (neu.get("five_shot") or {}).get("top1"), ">= 0.90", lambda v: v >= 0.90)
    return rows


def evaluate(
    run: str | Path,
    data: str | Path,
    out: str | Path,
    tasks: Sequence[str] = TASKS,
    shots: Sequence[int] = SHOTS,
    shifts: Sequence[str] = (),
    baselines: Sequence[str] = (),
    limit: int | None = None,
    text_limit: int | None = None,
    zero_shot: Sequence[str] | None = None,
    neu: str | Path | None = None,
    seed: int = 0,
    precision: str = "auto",
    threads: int | str = "auto",
    log=print,
) -> dict:
    """Evaluate ``run`` on ``data`` and write ``metrics.json`` and ``report.html`` into ``out``; returns the metrics.

    ``zero_shot`` names held-out classes to classify zero-shot (refused with
    ``LeakageError`` if the run's data named any); by default the data's
    classes the run never saw are used, and any of them found in the run's
    answers is left out with a note. ``precision`` and ``threads`` follow
    ``slava.hardware`` (auto: bf16 only where native; the cores this process may use).
    """
    from slava.assistant import Assistant, trained_labels
    from slava.hardware import describe_run, use_threads
    from slava.model.mope import expert_usage, reset_expert_usage
    from slava.synth import SHIFTS

    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        raise SlavaError(f"unknown eval task(s) {unknown}; known: {', '.join(TASKS)}")
    bad = sorted(set(shifts) - set(SHIFTS))
    if bad:
        raise SlavaError(f"unknown shift(s) {bad}; known: {', '.join(SHIFTS)}")
    started = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n_threads = use_threads(threads)
    assistant = Assistant.load(run, precision=precision)
    ds = load_eval_data(data)
    test = T.stratified(ds.split("test"), limit)
    trained = set(trained_labels(run))
    seen = [c for c in ds.labels if c in trained]
    unseen = [c for c in ds.labels if c not in trained]
    if zero_shot:
        # Refused before any work is done, not after minutes of other tasks.
        T.refuse_leaks(run, zero_shot)
    m: dict = {
        "run": str(run), "data": str(data), "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": _machine(), **describe_run(assistant.precision, n_threads), "synthetic": ds.synth is not None, "limit": limit, "splits": {"eval": "test", "support_and_baselines": "train"},
        "labels": {"eval": ds.labels, "seen_in_training": seen, "unseen": unseen}, "timings_s": {},
    }

    def timed(name, fn):
        t0 = time.perf_counter()
        log(f"eval: {name}…")
        result = fn()
        m["timings_s"][name] = round(time.perf_counter() - t0, 1)
        return result

    closed_items = [it for it in test if it.label in seen]
    clean_ranked = None
    if "classify" in tasks:
        cls: dict = {}
        if len(seen) >= 2 and closed_items:
            cls["closed_set"], clean_ranked = timed("classify", lambda: T.classify_task(assistant, closed_items, seen))
            cls["image_ablation"] = timed("image ablation", lambda: T.image_ablation(assistant, closed_items, seen, clean_ranked, seed))
        held = list(zero_shot) if zero_shot else unseen
        if not zero_shot:
            skipped = T.leaked_classes(run, held)
            held = [c for c in held if c not in skipped]
            if skipped:
                cls["zero_shot_excluded"] = skipped
        cls["zero_shot"] = timed("zero-shot", lambda: T.zero_shot_task(assistant, run, test, held))
        m["classification"] = cls
        if shots:
            m["few_shot"] = timed("few-shot", lambda: T.few_shot_task(assistant, test, ds.split("train"), ds.labels, list(shots)))

    text_tasks = [t for t in ("caption", "vqa") if t in tasks]
    if text_tasks:
        items = T.stratified(ds.split("test"), text_limit or limit)
        add_teacher_references(ds, items, seed)
        for it in items:
            it.refs = [r for r in it.refs if r.task in text_tasks]
        reset_expert_usage(assistant.model)
        m["text"] = timed("captions and VQA", lambda: T.text_task(assistant, items))
        usage = expert_usage(assistant.model)
        m["expert_load"] = {k: [c / max(sum(v), 1) for c in v] for k, v in usage.items() if sum(v)}

    if "count" in tasks:
        m["counting"] = timed("counting", lambda: T.counting_task(assistant, [it for it in test if it.truth]))

    fitted = {}
    if baselines:
        train_items = ds.split("train")
        train_px = _pixels(train_items)
        test_px = _pixels(closed_items)
        m["baselines"] = {}
        from slava.eval.baselines import BASELINES, make_baseline

        for name in baselines:
            if name not in BASELINES:
                raise SlavaError(f"unknown baseline {name!r}; known: {', '.join(BASELINES)}")

            def fit_and_score(name=name):
                model = make_baseline(name, seed, precision).fit(train_px, [it.label for it in train_items])
                ranked = model.rank(test_px)
                return model, {"train_s": model.train_s,
                               "clean": M.classification_scores([it.label for it in closed_items], ranked, seen)}

            fitted[name], m["baselines"][name] = timed(f"baseline {name}", fit_and_score)

    if shifts and clean_ranked is not None:
        if ds.synth is None:
            raise SlavaError("--shifts needs a synthetic set folder as --data (its seed renders the shifted twins)")

        def robustness():
            truth = [it.label for it in closed_items]
            r = {"macro_f1": {"clean": {"student": m["classification"]["closed_set"]["macro_f1"]}}, "top1": {}, "count_mae": {},
                 "drop": {}}
            for name, b in m.get("baselines", {}).items():
                r["macro_f1"]["clean"][name] = b["clean"]["macro_f1"]
            clean_count = (m.get("counting") or {}).get("particle_count", {}).get("mae")
            if clean_count is not None:
                r["count_mae"]["clean"] = clean_count
            for shift in shifts:
                items = T.shifted_items(closed_items, ds.synth, shift, out / "shifted" / shift)
                scores, _ = T.classify_task(assistant, items, seen)
                r["macro_f1"][shift] = {"student": scores["macro_f1"]}
                r["top1"][shift] = scores["top1"]
                r["drop"][shift] = r["macro_f1"]["clean"]["student"] - scores["macro_f1"]
                if fitted:
                    px = _pixels(items)
                    for name, model in fitted.items():
                        r["macro_f1"][shift][name] = M.macro_f1(truth, [x[0] for x in model.rank(px)], seen)
                if "count" in tasks:
                    counted = T.counting_task(assistant, [it for it in items if "particle_count" in it.truth])
                    if "particle_count" in counted:
                        r["count_mae"][shift] = counted["particle_count"]["mae"]
            return r

        m["robustness"] = timed("robustness", robustness)

    if neu is not None:
        m["neu"] = {"five_shot": timed("NEU-DET 5-shot", lambda: neu_few_shot(assistant, neu, 5, limit))}

    m["goals"] = _goals(m)
    m["elapsed_s"] = round(time.perf_counter() - started, 1)
    (out / "metrics.json").write_text(json.dumps(m, indent=1, default=float) + "\n")
    from slava.eval.report import write_report

    write_report(m, out)
    return m
