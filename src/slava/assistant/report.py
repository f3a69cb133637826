"""The summary page of a screening run: class counts, confidences, the least certain images."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Sequence

THUMBNAILS = 12
"""Least certain images shown as thumbnails."""


def _png_b64(fig_or_image) -> str:
    buf = io.BytesIO()
    if hasattr(fig_or_image, "savefig"):
        fig_or_image.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    else:
        fig_or_image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _histogram(probabilities: Sequence[float], n_labels: int) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    ax.hist(list(probabilities), bins=20, range=(0, 1), color="#4472c4")
    ax.axvline(1 / max(n_labels, 1), color="grey", linestyle="--", label="chance")
    ax.set_xlabel("probability of the top label")
    ax.set_ylabel("images")
    ax.legend()
    encoded = _png_b64(fig)
    plt.close(fig)
    return encoded


def _thumbnail(path: Path, side: int = 128) -> str | None:
    try:
        from PIL import Image

        from slava.io import load_micrograph

        pixels = load_micrograph(path).pixels
        image = Image.fromarray((pixels * 255).clip(0, 255).astype("uint8"))
        image.thumbnail((side, side))
        return _png_b64(image)
    except Exception:  # noqa: BLE001 - a thumbnail is decoration; the row already holds any error
        return None


def write_summary(frame, root: Path, out: Path, labels: Sequence[str]) -> Path:
    """Write ``<out>.html`` for a finished screening table; returns its path."""
    ok = frame[frame["error"].isna() & frame["label"].notna()]
    counts = ok["label"].value_counts()
    rows = "".join(
        f"<tr><td>{html.escape(str(label))}</td><td>{int(counts.get(label, 0))}</td>"
        f"<td>{100 * counts.get(label, 0) / max(len(ok), 1):.1f} %</td></tr>"
        for label in list(labels) + sorted(set(counts.index) - set(labels))
    )
    parts = [
        "<!doctype html><meta charset='utf-8'><title>sLAVA screening</title>",
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 10px;text-align:left}"
        "figure{display:inline-block;margin:6px;font-size:12px;width:140px}</style>",
        f"<h1>Screening of {html.escape(str(root))}</h1>",
        f"<p>{len(frame)} images: {len(ok)} classified, {int(frame['error'].notna().sum())} unreadable. "
        f"Table: <code>{html.escape(out.name)}</code>.</p>",
        "<h2>Classes</h2><table><tr><th>label</th><th>images</th><th>share</th></tr>", rows, "</table>",
    ]
    if len(ok):
        parts += ["<h2>Confidence</h2>", f"<img alt='histogram of confidences' src='data:image/png;base64,"
                  f"{_histogram(ok['probability'].astype(float), len(labels))}'>"]
        parts.append("<h2>Least certain images</h2>")
        for _, r in ok.nsmallest(THUMBNAILS, "probability").iterrows():
            thumb = _thumbnail(root / r["path"])
            img = f"<img src='data:image/png;base64,{thumb}'><br>" if thumb else ""
            parts.append(f"<figure>{img}{html.escape(r['path'])}<br>{html.escape(r['label'])} "
                         f"({float(r['probability']):.2f})</figure>")
    bad = frame[frame["error"].notna()]
    if len(bad):
        parts.append("<h2>Unreadable files</h2><table><tr><th>path</th><th>error</th></tr>")
        parts += [f"<tr><td>{html.escape(r['path'])}</td><td>{html.escape(r['error'])}</td></tr>" for _, r in bad.iterrows()]
        parts.append("</table>")
    path = out.with_name(out.name + ".html")
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
