"""Ablation plots (matplotlib, Agg: no display needed): what each strategy buys, and at what cost.

`subject` (the artifact's file name and the number of documents, see `plot_subject`) goes
into each title, so a plot that leaves its directory still says what it measured."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

EVAL_BUDGET_S = 600.0  # the challenge's eval limit on 8xH100


def plot_bpb(rows: list[dict], baseline: str, path: str | Path, subject: str = "") -> Path:
    """Left: each strategy's bpb with its unpaired 95% interval (document sampling).
    Right: the paired difference from the baseline with its 95% interval, which is the
    one to read: pairing removes the documents' shared difficulty."""
    names = [r["name"] for r in rows]
    ys = range(len(rows))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 0.5 * len(rows) + 2), sharey=True)
    bpb = [r["val_bpb"] for r in rows]
    err = [[r["val_bpb"] - r["bpb_ci_low"] for r in rows], [r["bpb_ci_high"] - r["val_bpb"] for r in rows]]
    left.errorbar(bpb, ys, xerr=err, fmt="o", capsize=4)
    left.set_yticks(list(ys), names)
    left.invert_yaxis()
    left.set_xlabel("val_bpb (95% bootstrap interval over documents)")
    delta = [r["delta_bpb"] for r in rows]
    derr = [[r["delta_bpb"] - r["delta_ci_low"] for r in rows], [r["delta_ci_high"] - r["delta_bpb"] for r in rows]]
    right.errorbar(delta, ys, xerr=derr, fmt="o", color="C1", capsize=4)
    right.axvline(0.0, color="grey", lw=1, ls="--")
    right.set_xlabel(f"Δ bpb vs {baseline} (paired 95% interval)")
    for ax in (left, right):
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle("bpb by strategy" + (f": {subject}" if subject else ""))
    return _save(fig, path)


def plot_frontier(rows: list[dict], path: str | Path, budget_s: float = EVAL_BUDGET_S, subject: str = "") -> Path:
    """bpb against projected 8xH100 eval seconds; the line joins the strategies that no
    other strategy beats on both (the cost/benefit frontier)."""
    fig, ax = plt.subplots(figsize=(7, 5))
    xs = [r["projected_8xh100_s"] for r in rows]
    ys = [r["val_bpb"] for r in rows]
    ax.scatter(xs, ys, zorder=3)
    for r, x, y in zip(rows, xs, ys):
        ax.annotate(r["name"], (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    front = pareto_front(list(zip(xs, ys)))
    ax.plot([xs[i] for i in front], [ys[i] for i in front], color="C2", lw=1.5, label="frontier")
    if max(xs) > budget_s / 10:  # draw the budget only when it is on a readable scale
        ax.axvline(budget_s, color="red", lw=1, ls="--", label=f"{budget_s:.0f} s budget")
    ax.set_xscale("log")
    ax.set_xlabel("projected eval seconds on 8xH100 (log)")
    ax.set_ylabel("val_bpb")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("bpb vs eval time" + (f": {subject}" if subject else ""), fontsize=10)
    return _save(fig, path)


def plot_subject(artifact: str | Path, docs: int) -> str:
    return f"{Path(artifact).name}, {docs:,} documents"


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both cost (x) and bpb (y), by cost."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    front, best = [], float("inf")
    for i in order:
        if points[i][1] < best:
            front.append(i)
            best = points[i][1]
    return front


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
