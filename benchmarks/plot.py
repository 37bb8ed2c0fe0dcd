"""Plots of the benchmark results (matplotlib, PNG, no display needed)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def bar_chart(groups: dict[str, dict[str, float]], ylabel: str, title: str, path: Path,
              log: bool = True) -> Path:
    """One panel per group (model), one bar per provider with its value written on top."""
    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 4.2), squeeze=False)
    for ax, (group, values) in zip(axes[0], groups.items()):
        names = list(values)
        bars = ax.bar(range(len(names)), [values[n] for n in names],
                      color=[f"C{i}" for i in range(len(names))])
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
        ax.set_title(group, fontsize=10)
        ax.set_ylabel(ylabel)
        vals = [values[n] for n in names]
        if log and max(vals) > 20 * min(vals):  # a log axis only where a linear one would hide bars
            ax.set_yscale("log")
            ax.set_ylim(bottom=min(vals) / 3)
        for b, n in zip(bars, names):
            ax.annotate(f"{values[n]:.3g}", (b.get_x() + b.get_width() / 2, b.get_height()),
                        ha="center", va="bottom", fontsize=7)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def lines_vs_t(groups: dict[str, dict[str, Sequence[tuple[int, float]]]], ylabel: str, title: str,
               path: Path) -> Path:
    """One panel per group, one line per method: value against T (log-log)."""
    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 4.2), squeeze=False)
    for ax, (group, series) in zip(axes[0], groups.items()):
        for i, (name, points) in enumerate(series.items()):
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o", color=f"C{i}", label=name)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("time steps T")
        ax.set_ylabel(ylabel)
        ax.set_title(group, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
