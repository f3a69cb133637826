"""The evaluation report: PNG plots and one self-contained ``report.html`` (plots and thumbnails inlined)."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    _plt().close(fig)
    return path


def plot_confusion(scores: dict, title: str, path: Path) -> Path:
    """Row-normalised confusion matrix with counts written in the cells."""
    plt = _plt()
    cm = np.asarray(scores["confusion"], dtype=float)
    labels = scores["labels"]
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    side = 2.5 + 0.45 * len(labels)
    fig, ax = plt.subplots(figsize=(side + 1, side))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    for i in range(len(labels)):
        for j in range(len(labels)):
            if cm[i, j]:
                ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7, color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{title}\ntop-1 {scores['top1']:.3f}, macro-F1 {scores['macro_f1']:.3f}", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    return _save(fig, path)


def plot_families(per_family: dict, path: Path) -> Path:
    """METEOR and ROUGE-L per question family."""
    plt = _plt()
    names = list(per_family)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(5, 0.7 * len(names) + 2), 3.5))
    ax.bar(x - 0.2, [per_family[n]["meteor"] for n in names], 0.4, label="METEOR")
    ax.bar(x + 0.2, [per_family[n]["rouge_l"] for n in names], 0.4, label="ROUGE-L")
    ax.set_xticks(x, names, rotation=45, ha="right")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title("caption and VQA scores per question family", fontsize=9)
    return _save(fig, path)


def plot_robustness(robust: dict, path: Path) -> Path:
    """Macro-F1 on clean and shifted sets, one group of bars per set, one bar per model."""
    plt = _plt()
    sets = list(robust["macro_f1"])
    models = sorted({m for s in sets for m in robust["macro_f1"][s]})
    x = np.arange(len(sets))
    w = 0.8 / max(len(models), 1)
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(sets) + 2), 3.5))
    for k, model in enumerate(models):
        ax.bar(x + (k - (len(models) - 1) / 2) * w, [robust["macro_f1"][s].get(model, np.nan) for s in sets], w, label=model)
    ax.set_xticks(x, sets)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("macro-F1")
    # Beside the axes: inside, it hid the first group's bars.
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title("classification under imaging shifts", fontsize=9)
    return _save(fig, path)


def plot_artefacts(arte: dict, clean: float | None, path: Path) -> Path:
    """The student's macro-F1 per instrument artefact, one bar per severity, the clean figure as a line."""
    plt = _plt()
    names, severities = list(arte["macro_f1"]), arte["severities"]
    x = np.arange(len(names))
    w = 0.8 / max(len(severities), 1)
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(names) + 2), 3.5))
    for k, severity in enumerate(severities):
        ax.bar(x + (k - (len(severities) - 1) / 2) * w, [arte["macro_f1"][n][severity]["student"] for n in names], w,
               label=severity)
    if clean is not None:
        ax.axhline(clean, color="k", lw=1, ls="--", label=f"clean {clean:.3f}")
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("macro-F1")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title("the student's classification under instrument artefacts", fontsize=9)
    return _save(fig, path)


def plot_expert_load(load: dict[str, list[float]], path: Path) -> Path:
    """Fraction of tokens routed to each expert, per adapted layer."""
    plt = _plt()
    names = list(load)
    grid = np.asarray([load[n] for n in names], dtype=float)
    fig, ax = plt.subplots(figsize=(2.5 + 0.6 * grid.shape[1], 1.5 + 0.22 * len(names)))
    im = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0)
    # Every name starts with the LM's own path; without it the labels fit beside the plot.
    ax.set_yticks(range(len(names)), [n.removeprefix("lm.model.") for n in names], fontsize=6)
    ax.set_xticks(range(grid.shape[1]), [f"e{i}" for i in range(grid.shape[1])])
    ax.set_title("expert load during evaluation (fraction of tokens)", fontsize=9)
    fig.colorbar(im, ax=ax)
    return _save(fig, path)


def _img(path: Path, width: int | None = None) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    style = f' style="width:{width}px"' if width else ""
    return f'<img src="data:image/png;base64,{data}"{style}>'


def _thumb(image: str, side: int = 160) -> str:
    from PIL import Image

    with Image.open(image) as im:
        im = im.convert("L")
        im.thumbnail((side, side))
        buf = io.BytesIO()
        im.save(buf, format="PNG")
    return f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _fmt(v) -> str:
    if isinstance(v, float):
        return "nan" if v != v else f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"
    return html.escape(str(v))


def _table(rows: list[dict], columns: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(r.get(c, ''))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _class_rows(m: dict) -> list[dict]:
    rows = []
    cls = m.get("classification") or {}
    closed = cls.get("closed_set") or {}
    for name, s in ((f"student (closed set, {closed.get('method', 'lm')})", closed),
                    ("student (closed set, LM scoring)", cls.get("closed_set_lm")),
                    ("student zero-shot (unseen classes)", cls.get("zero_shot"))):
        if isinstance(s, dict) and "top1" in s:
            rows.append({"model": name, "top-1": s["top1"], "top-3": s["top3"], "macro-F1": s["macro_f1"], "n": s["n"]})
    for key, s in (m.get("few_shot") or {}).items():
        if isinstance(s, dict) and "top1" in s:
            rows.append({"model": f"student few-shot {key}", "top-1": s["top1"], "top-3": s["top3"], "macro-F1": s["macro_f1"], "n": s["n"]})
    for name, b in (m.get("baselines") or {}).items():
        s = b.get("clean") or {}
        if "top1" in s:
            rows.append({"model": f"baseline {name}", "top-1": s["top1"], "top-3": s["top3"], "macro-F1": s["macro_f1"],
                         "n": s["n"], "train s": b.get("train_s")})
    return rows


def write_report(metrics: dict, out: Path) -> Path:
    """Write the plots and ``report.html`` for ``metrics`` into ``out``; returns the HTML path."""
    out = Path(out)
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    parts = [f"<h1>sLAVA evaluation</h1><p>run <code>{html.escape(metrics['run'])}</code>, data "
             f"<code>{html.escape(metrics['data'])}</code>, {html.escape(metrics['date'])}, "
             f"{metrics['elapsed_s']:.0f} s on {html.escape(metrics['machine'])} "
             f"({html.escape(metrics.get('cpu', ''))}, torch capability {html.escape(metrics.get('cpu_capability', ''))}).</p>"
             f"<p>Precision <b>{html.escape(metrics.get('precision', ''))}</b> with {metrics.get('threads')} threads: "
             f"{html.escape(metrics.get('precision_reason', ''))}.</p>"]
    goals = metrics.get("goals") or []
    if goals:
        parts.append("<h2>Goals</h2>" + _table(goals, ["goal", "value", "target", "met"]))

    text = metrics.get("text") or {}
    if text.get("n"):
        rows = [{"set": "overall", **text["overall"]}] + [{"set": k, **v} for k, v in text["per_task"].items()]
        rows += [{"set": f"family: {k}", **v} for k, v in text["per_family"].items()]
        parts.append("<h2>Captions and VQA against teacher references</h2>"
                     "<p>BLEU on sacrebleu's 0–100 scale (corpus); METEOR (nltk, WordNet) and ROUGE-L F in 0–1, per answer, averaged.</p>"
                     + _table(rows, ["set", "bleu2", "bleu4", "meteor", "rouge_l", "n"]))
        parts.append(_img(plot_families(text["per_family"], plots / "families.png")))
        hyg = text.get("hygiene") or {}
        if hyg.get("generated") is not None:
            parts.append("<h2>Answer hygiene</h2><p>Over the generated (not measured) answers: numbers in neither the "
                         "image context nor the question, context numbers the model stated as another quantity (their "
                         "sentences are cut from the answers shown), role markers, and answers "
                         "repeating a word 4-gram three times (goal 0 each).</p>"
                         + _table([hyg], ["generated", "invented_numbers", "answers_with_invented", "misplaced_numbers",
                                          "role_markers", "loops"]))
            if hyg.get("examples"):
                parts.append("<ul>" + "".join(
                    f"<li>{html.escape(e['answer'][:300])} <i>(invented {html.escape(', '.join(e['invented']) or 'none')}"
                    f"; markers {e['role_markers']}; loop {e['loop']})</i></li>" for e in hyg["examples"]) + "</ul>")

    rows = _class_rows(metrics)
    if rows:
        parts.append("<h2>Classification</h2>" + _table(rows, ["model", "top-1", "top-3", "macro-F1", "n", "train s"]))
        cms = []
        closed = (metrics.get("classification") or {}).get("closed_set")
        if isinstance(closed, dict) and "confusion" in closed:
            cms.append(plot_confusion(closed, "student", plots / "confusion_student.png"))
        for name, b in (metrics.get("baselines") or {}).items():
            if "confusion" in (b.get("clean") or {}):
                cms.append(plot_confusion(b["clean"], f"baseline {name}", plots / f"confusion_{name}.png"))
        parts.append("".join(_img(p, 380) for p in cms))
        zs = (metrics.get("classification") or {}).get("zero_shot")
        if isinstance(zs, dict) and "skipped" in zs:
            parts.append(f"<p>Zero-shot: {html.escape(zs['skipped'])}.</p>")

    abl = (metrics.get("classification") or {}).get("image_ablation")
    if abl:
        parts.append("<h2>Image ablation</h2><p>Top-1 with every image replaced by uniform grey, and with images "
                     "shuffled between test items; a model that reads the image falls to chance.</p>"
                     + _table([{"input": k, "top-1": abl[k]["top1"], "chance": abl["chance"], "at chance": abl[k]["at_chance"]}
                               for k in ("blank", "shuffled")], ["input", "top-1", "chance", "at chance"]))

    count = metrics.get("counting") or {}
    qty = [{"quantity": k, **v} for k, v in count.items() if k != "samples"]
    if qty:
        parts.append("<h2>Counting and sizes (grounded answers vs ground truth)</h2>"
                     + _table(qty, ["quantity", "mae", "mape", "n", "unanswered"]))

    robust = metrics.get("robustness")
    if robust:
        rows = [{"set": s, **{m: v for m, v in robust["macro_f1"][s].items()},
                 "particle count MAE": robust.get("count_mae", {}).get(s)} for s in robust["macro_f1"]]
        models = sorted({m for s in robust["macro_f1"].values() for m in s})
        parts.append("<h2>Robustness (macro-F1)</h2>" + _table(rows, ["set", *models, "particle count MAE"]))
        parts.append(_img(plot_robustness(robust, plots / "robustness.png")))

    arte = metrics.get("artefacts")
    if arte:
        rows = [{"artefact": n, "severity": sev, **arte["macro_f1"][n][sev], "particle count MAE": arte["count_mae"][n].get(sev)}
                for n in arte["macro_f1"] for sev in arte["severities"]]
        models = sorted({k for n in arte["macro_f1"].values() for row in n.values() for k in row})
        clean = ((metrics.get("classification") or {}).get("closed_set") or {}).get("macro_f1")
        parts.append("<h2>Instrument artefacts (macro-F1 on the test images, each artefact alone)</h2>"
                     + _table(rows, ["artefact", "severity", *models, "particle count MAE"]))
        parts.append(_img(plot_artefacts(arte, clean, plots / "artefacts.png")))

    load = metrics.get("expert_load")
    if load:
        parts.append("<h2>Expert load</h2>" + _img(plot_expert_load(load, plots / "expert_load.png")))

    neu = metrics.get("neu")
    if neu:
        parts.append("<h2>NEU-DET (real steel-surface images)</h2>" + _table(
            [{"setting": k, "top-1": v["top1"], "macro-F1": v["macro_f1"], "n": v["n"]} for k, v in neu.items() if "top1" in v],
            ["setting", "top-1", "macro-F1", "n"]))

    real = metrics.get("real_captions") or {}
    if real.get("rows"):
        hyg = real["hygiene"]
        cells = []
        for r in real["rows"]:
            named = "" if r["names_object"] is None else \
                f" · names {'/'.join(r['object_words'])}: {'yes' if r['names_object'] else '<b>no</b>'}"
            invented = f" · <b>invented: {html.escape(', '.join(r['invented']))}</b>" if r["invented"] else ""
            if r["misplaced"]:
                invented += f" · <b>misplaced, cut: {html.escape(', '.join(r['misplaced']))}</b>"
            cells.append(f"<div class=s>{_img(Path(r['thumbnail']))}<div><p><b>{html.escape(r['set'])}</b> "
                         f"{html.escape(Path(r['image']).name)}{named}{invented}</p>"
                         f"<p><b>context:</b> <code>{html.escape(r['context'] or '')}</code></p>"
                         f"<p><b>sLAVA:</b> {html.escape(r['answer'])}</p></div></div>")
        parts.append(f"<h2>Captions of real micrographs ({real['n']})</h2><p>Invented numbers: {hyg['invented_numbers']}, "
                     f"misplaced (cut): {hyg['misplaced_numbers']}, "
                     f"role markers: {hyg['role_markers']}, loops: {hyg['loops']}; naming the set's object: "
                     f"{_fmt(real['names_object'])}; ending a sentence: {_fmt(real['ends_sentence'])}.</p>" + "".join(cells))

    samples = (text.get("samples") or []) + (count.get("samples") or [])
    if samples:
        cells = []
        for s in samples:
            ref = f"<p><b>teacher:</b> {html.escape(s['reference'])}</p>" if "reference" in s else \
                f"<p><b>truth:</b> {html.escape(str(s['truth']))}</p>"
            context = f"<p><b>context:</b> <code>{html.escape(s['context'])}</code></p>" if s.get("context") else ""
            cells.append(f"<div class=s>{_thumb(s['image'])}<div>{context}<p><b>Q:</b> {html.escape(s['question'])}</p>"
                         f"<p><b>sLAVA:</b> {html.escape(s['answer'])}</p>{ref}</div></div>")
        parts.append("<h2>Sample questions and answers</h2>" + "".join(cells))

    style = ("body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}table{border-collapse:collapse;margin:.5em 0}"
             "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:right}th{background:#eee}"
             "td:first-child{text-align:left}.s{display:flex;gap:12px;margin:8px 0;border-bottom:1px solid #eee}"
             ".s p{margin:3px 0;font-size:13px}img{margin:4px}")
    page = f"<!doctype html><html><head><meta charset=utf-8><title>sLAVA evaluation</title><style>{style}</style></head><body>"
    page += "\n".join(parts) + "<details><summary>metrics.json</summary><pre>" + html.escape(
        json.dumps({k: v for k, v in metrics.items() if k not in ("text",)}, indent=1)[:20000]) + "</pre></details></body></html>"
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
