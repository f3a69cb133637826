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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from slava.errors import SlavaError
from slava.eval import metrics as M
from slava.eval import tasks as T
from slava.eval.data import add_teacher_references, load_eval_data
from slava.eval.real_sem import real_captions

TASKS = ("caption", "vqa", "classify", "count")
SHOTS = (1, 5, 10)


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


LM_SCORING_IMAGES = 30
"""Held-out images on which a run with a head also has its LM rank the trained classes (``closed_set_lm``)."""


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
    arte = m.get("artefacts") or {}
    for severity, target in (("moderate", 0.90), ("strong", 0.75)):
        add(f"macro-F1 under artefacts, {severity} (worst)", arte.get(f"worst_{severity}"), f">= {target}",
            lambda v, target=target: v >= target)
    add("METEOR vs teacher", ((m.get("text") or {}).get("overall") or {}).get("meteor"), ">= 0.85", lambda v: v >= 0.85)
    hyg = (m.get("text") or {}).get("hygiene") or {}
    if hyg.get("generated"):
        add("invented numbers (greedy)", hyg["invented_numbers"], f"0 in {hyg['generated']} answers", lambda v: v == 0)
        add("misplaced numbers written, cut from the answers (greedy)", hyg["misplaced_numbers"], f"0 in {hyg['generated']} answers",
            lambda v: v == 0)
        add("role markers or loops", hyg["role_markers"] + hyg["loops"], f"0 in {hyg['generated']} answers",
            lambda v: v == 0)
    add("particle-count MAE", ((m.get("counting") or {}).get("particle_count") or {}).get("mae"), "<= 1", lambda v: v <= 1)
    abl = (m.get("classification") or {}).get("image_ablation") or {}
    for kind in ("blank", "shuffled") if abl else ():
        add(f"{kind}-image top-1 at chance", abl[kind]["top1"], f"<= chance {abl['chance']:.2f} + 2 s.e.",
            lambda v, kind=kind: abl[kind]["at_chance"])
    neu = m.get("neu") or {}
    add("NEU-DET 5-shot top-1", (neu.get("five_shot") or {}).get("top1"), ">= 0.90", lambda v: v >= 0.90)
    real = m.get("real_captions") or {}
    if real.get("n"):
        add("real captions: invented numbers", real["hygiene"]["invented_numbers"], f"0 in {real['n']} captions",
            lambda v: v == 0)
        add("real captions: misplaced numbers written, cut", real["hygiene"]["misplaced_numbers"], f"0 in {real['n']} captions",
            lambda v: v == 0)
        add("real captions naming their object", real["names_object"], "1.0", lambda v: v == 1.0)
    return rows


@dataclass
class _Run:
    """What every task block of one evaluation shares; ``m`` is the metrics dict being filled."""

    assistant: object
    run: Path
    ds: object
    test: list
    seen: list[str]
    unseen: list[str]
    out: Path
    seed: int
    m: dict
    log: Callable
    closed_items: list = field(default_factory=list)
    clean_ranked: list | None = None
    fitted: dict = field(default_factory=dict)

    def timed(self, name: str, fn):
        """Run ``fn``, logging its name and recording its seconds under ``timings_s``."""
        t0 = time.perf_counter()
        self.log(f"eval: {name}…")
        result = fn()
        self.m["timings_s"][name] = round(time.perf_counter() - t0, 1)
        return result


def _classification(r: _Run, zero_shot: Sequence[str] | None, shots: Sequence[int]) -> None:
    """Closed-set classification with its image ablation, zero-shot on held-out classes, few-shot prototypes."""
    cls: dict = {}
    if len(r.seen) >= 2 and r.closed_items:
        cls["closed_set"], r.clean_ranked = r.timed("classify", lambda: T.classify_task(r.assistant, r.closed_items, r.seen))
        if cls["closed_set"]["method"] == "head":
            # The head ranks trained classes; the LM's own ranking of them is scored beside it, on a class-balanced
            # subset: one LM forward per image and label made it the costliest classification figure.
            lm_items = T.stratified(r.closed_items, LM_SCORING_IMAGES)
            cls["closed_set_lm"] = r.timed("classify (LM scoring)",
                                           lambda: T.classify_task(r.assistant, lm_items, r.seen, "lm")[0])
        cls["image_ablation"] = r.timed(
            "image ablation", lambda: T.image_ablation(r.assistant, r.closed_items, r.seen, r.clean_ranked, r.seed))
    held = list(zero_shot) if zero_shot else r.unseen
    if not zero_shot:
        skipped = T.leaked_classes(r.run, held)
        held = [c for c in held if c not in skipped]
        if skipped:
            cls["zero_shot_excluded"] = skipped
    cls["zero_shot"] = r.timed("zero-shot", lambda: T.zero_shot_task(r.assistant, r.run, r.test, held))
    r.m["classification"] = cls
    if shots:
        r.m["few_shot"] = r.timed(
            "few-shot", lambda: T.few_shot_task(r.assistant, r.test, r.ds.split("train"), r.ds.labels, list(shots)))


def _text(r: _Run, text_tasks: Sequence[str], limit: int | None) -> None:
    """Captions and VQA answers against the teacher's references, and the experts' load while generating them."""
    items = T.stratified(r.ds.split("test"), limit)
    add_teacher_references(r.ds, items, r.seed)
    for it in items:
        it.refs = [ref for ref in it.refs if ref.task in text_tasks]
    model = r.assistant.model
    model.reset_expert_usage()
    r.m["text"] = r.timed("captions and VQA", lambda: T.text_task(r.assistant, items, progress=True))
    usage = model.expert_usage()
    r.m["expert_load"] = {k: [c / max(sum(v), 1) for c in v] for k, v in usage.items() if sum(v)}


def _baselines(r: _Run, names: Sequence[str], precision: str) -> None:
    """Each baseline fitted on the train split and scored on the closed-set test images; kept for the shifts."""
    from slava.eval.baselines import BASELINES, make_baseline

    train_items = r.ds.split("train")
    train_px = _pixels(train_items)
    test_px = _pixels(r.closed_items)
    r.m["baselines"] = {}
    for name in names:
        if name not in BASELINES:
            raise SlavaError(f"unknown baseline {name!r}; known: {', '.join(BASELINES)}")

        def fit_and_score(name=name):
            model = make_baseline(name, r.seed, precision).fit(train_px, [it.label for it in train_items])
            ranked = model.rank(test_px)
            return model, {"train_s": model.train_s,
                           "clean": M.classification_scores([it.label for it in r.closed_items], ranked, r.seen)}

        r.fitted[name], r.m["baselines"][name] = r.timed(f"baseline {name}", fit_and_score)


def _robustness(r: _Run, shifts: Sequence[str], count: bool) -> None:
    """The closed-set classification (student and fitted baselines) and particle counts on shifted twins."""
    if r.ds.synth is None:
        raise SlavaError("--shifts needs a synthetic set folder as --data (its seed renders the shifted twins)")
    m = r.m

    def robustness():
        truth = [it.label for it in r.closed_items]
        out = {"macro_f1": {"clean": {"student": m["classification"]["closed_set"]["macro_f1"]}}, "top1": {},
               "count_mae": {}, "drop": {}}
        for name, b in m.get("baselines", {}).items():
            out["macro_f1"]["clean"][name] = b["clean"]["macro_f1"]
        clean_count = (m.get("counting") or {}).get("particle_count", {}).get("mae")
        if clean_count is not None:
            out["count_mae"]["clean"] = clean_count
        for shift in shifts:
            items = T.shifted_items(r.closed_items, r.ds.synth, shift, r.out / "shifted" / shift)
            scores, _ = T.classify_task(r.assistant, items, r.seen)
            out["macro_f1"][shift] = {"student": scores["macro_f1"]}
            out["top1"][shift] = scores["top1"]
            out["drop"][shift] = out["macro_f1"]["clean"]["student"] - scores["macro_f1"]
            if r.fitted:
                px = _pixels(items)
                for name, model in r.fitted.items():
                    out["macro_f1"][shift][name] = M.macro_f1(truth, [x[0] for x in model.rank(px)], r.seen)
            if count:
                counted = T.counting_task(r.assistant, [it for it in items if "particle_count" in it.truth])
                if "particle_count" in counted:
                    out["count_mae"][shift] = counted["particle_count"]["mae"]
        return out

    m["robustness"] = r.timed("robustness", robustness)


def _artefact_robustness(r: _Run, artefacts: Sequence[str], severities: Sequence[str], count: bool) -> None:
    """Closed-set macro-F1 (student and fitted baselines) and particle counts with the test images under each
    instrument artefact at each severity (``slava.artefacts``): works on any data, real images included."""
    m = r.m

    def robustness():
        truth = [it.label for it in r.closed_items]
        out: dict = {"severities": list(severities), "macro_f1": {}, "count_mae": {}}
        for name in artefacts:
            out["macro_f1"][name], out["count_mae"][name] = {}, {}
            for severity in severities:
                items = T.artefact_items(r.closed_items, name, severity, r.seed)
                scores, _ = T.classify_task(r.assistant, items, r.seen)
                row = {"student": scores["macro_f1"]}
                if r.fitted:
                    px = [it.image.pixels for it in items]
                    for base, model in r.fitted.items():
                        row[base] = M.macro_f1(truth, [x[0] for x in model.rank(px)], r.seen)
                out["macro_f1"][name][severity] = row
                if count:
                    counted = T.counting_task(r.assistant, [it for it in items if "particle_count" in it.truth])
                    if "particle_count" in counted:
                        out["count_mae"][name][severity] = counted["particle_count"]["mae"]
        for severity in severities:
            out[f"worst_{severity}"] = min(out["macro_f1"][n][severity]["student"] for n in artefacts)
        return out

    m["artefacts"] = r.timed("artefacts", robustness)


def evaluate(
    run: str | Path,
    data: str | Path,
    out: str | Path,
    tasks: Sequence[str] = TASKS,
    shots: Sequence[int] = SHOTS,
    shifts: Sequence[str] = (),
    artefacts: Sequence[str] = (),
    severities: Sequence[str] = ("moderate", "strong"),
    baselines: Sequence[str] = (),
    limit: int | None = None,
    text_limit: int | None = None,
    zero_shot: Sequence[str] | None = None,
    neu: str | Path | None = None,
    real: str | Path | None = None,
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
    ``artefacts`` are ``slava.artefacts`` names applied to the test images at
    each of ``severities``; ``shifts`` are synthetic twins rendered under a
    shift (synthetic sets only). ``real`` is a folder of real sets (``slava.eval.real_sem``) whose captions
    are shown beside their images and checked.
    """
    from slava.assistant import Assistant, trained_labels
    from slava.hardware import describe_run, use_threads
    from slava.artefacts import ARTEFACTS, SEVERITIES
    from slava.synth import SHIFTS

    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        raise SlavaError(f"unknown eval task(s) {unknown}; known: {', '.join(TASKS)}")
    bad = sorted(set(shifts) - set(SHIFTS))
    if bad:
        raise SlavaError(f"unknown shift(s) {bad}; known: {', '.join(SHIFTS)}")
    bad = sorted(set(artefacts) - set(ARTEFACTS)) + sorted(set(severities) - set(SEVERITIES))
    if bad:
        raise SlavaError(f"unknown artefact(s) or severity(ies) {bad}; artefacts: {', '.join(ARTEFACTS)}; "
                         f"severities: {', '.join(SEVERITIES)}")
    if zero_shot:
        # Refused before any work is done, not after minutes of other tasks.
        T.refuse_leaks(run, zero_shot)
    started = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n_threads = use_threads(threads)
    assistant = Assistant.load(run, precision=precision)
    ds = load_eval_data(data)
    trained = set(trained_labels(run))
    seen = [c for c in ds.labels if c in trained]
    m: dict = {
        "run": str(run), "data": str(data), "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": _machine(), **describe_run(assistant.precision, n_threads), "synthetic": ds.synth is not None,
        "limit": limit, "splits": {"eval": "test", "support_and_baselines": "train"},
        "labels": {"eval": ds.labels, "seen_in_training": seen, "unseen": [c for c in ds.labels if c not in trained]},
        "timings_s": {},
    }
    r = _Run(assistant, Path(run), ds, T.stratified(ds.split("test"), limit), seen, m["labels"]["unseen"], out, seed, m, log)
    r.closed_items = [it for it in r.test if it.label in seen]

    if "classify" in tasks:
        _classification(r, zero_shot, shots)
    text_tasks = [t for t in ("caption", "vqa") if t in tasks]
    if text_tasks:
        _text(r, text_tasks, text_limit or limit)
    if "count" in tasks:
        m["counting"] = r.timed("counting", lambda: T.counting_task(assistant, [it for it in r.test if it.truth]))
    if baselines:
        _baselines(r, baselines, precision)
    if shifts and r.clean_ranked is not None:
        _robustness(r, shifts, "count" in tasks)
    if artefacts and severities and r.clean_ranked is not None:
        _artefact_robustness(r, artefacts, severities, "count" in tasks)
    if neu is not None:
        m["neu"] = {"five_shot": r.timed("NEU-DET 5-shot", lambda: neu_few_shot(assistant, neu, 5, limit))}

    if real is not None:
        m["real_captions"] = r.timed("real-set captions", lambda: real_captions(assistant, real, out / "real"))

    m["goals"] = _goals(m)
    m["elapsed_s"] = round(time.perf_counter() - started, 1)
    (out / "metrics.json").write_text(json.dumps(m, indent=1, default=float) + "\n")
    from slava.eval.report import write_report

    write_report(m, out)
    return m
