"""PNG plots of a run from its ``metrics.jsonl``: loss curves and per-layer expert load."""

from __future__ import annotations

from pathlib import Path

from slava.errors import SlavaError
from slava.train.metrics import read_metrics


def plot_run(run_dir: str | Path) -> list[Path]:
    """Write ``loss.png`` (and ``expert_load.png`` when experts were routed) into ``run_dir``; returns the files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    run_dir = Path(run_dir)
    rows = read_metrics(run_dir / "metrics.jsonl")
    steps = [r for r in rows if "loss" in r]
    if not steps:
        raise SlavaError(f"{run_dir}: no training steps in metrics.jsonl to plot")
    written = []

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for stage in dict.fromkeys(r["stage"] for r in steps):
        mine = [r for r in steps if r["stage"] == stage]
        ax.plot([r["step"] for r in mine], [r["ce"] for r in mine], lw=1, label=f"{stage} train")
        val = [r for r in rows if r.get("stage") == stage and r.get("val_loss") is not None]
        if val:
            ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o--", label=f"{stage} val")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy per answer token")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(run_dir / "loss.png", dpi=100)
    plt.close(fig)
    written.append(run_dir / "loss.png")

    routed = [r for r in steps if r.get("expert_entropy")]
    if routed:
        loads = [r["expert_load"] for r in rows if r.get("expert_load")]
        fig, axes = plt.subplots(1, 2 if loads else 1, figsize=(12 if loads else 7, 4.5), squeeze=False)
        ent = np.array([r["expert_entropy"] for r in routed]).T
        im = axes[0, 0].imshow(ent, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest",
                               extent=(routed[0]["step"] - 0.5, routed[-1]["step"] + 0.5, ent.shape[0] - 0.5, -0.5))
        axes[0, 0].set(xlabel="optimizer step", ylabel="decoder layer", title="expert-load entropy (1 = balanced)")
        fig.colorbar(im, ax=axes[0, 0])
        axes[0, 0].yaxis.set_major_locator(MaxNLocator(integer=True))
        if loads:
            last = loads[-1]
            share = np.array([last[k] for k in sorted(last, key=int)])
            im = axes[0, 1].imshow(share, aspect="auto", cmap="magma", vmin=0, interpolation="nearest")
            axes[0, 1].set(xlabel="expert", ylabel="decoder layer", title="share of routed tokens (stage so far)")
            axes[0, 1].xaxis.set_major_locator(MaxNLocator(integer=True))
            axes[0, 1].yaxis.set_major_locator(MaxNLocator(integer=True))
            fig.colorbar(im, ax=axes[0, 1])
        fig.tight_layout()
        fig.savefig(run_dir / "expert_load.png", dpi=100)
        plt.close(fig)
        written.append(run_dir / "expert_load.png")
    return written
