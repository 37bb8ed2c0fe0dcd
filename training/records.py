"""What a run leaves behind: the log file, per-trial curves as the original's .npy files, a CSV
and a PNG plot. Every writer here is a plain function, so a distributed run can call them from
rank 0 only."""
from __future__ import annotations

import csv
import logging
import os

import numpy as np

LOGGER_NAME = "training"
CURVES = ("train_acc", "val_acc", "train_loss", "val_loss")


def setup_logging(save_path: str, to_console: bool = True) -> logging.Logger:
    """The original's log: save_path/log.log plus the console, '%(asctime)s - %(message)s'."""
    os.makedirs(save_path, exist_ok=True)
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    fmt = logging.Formatter("%(asctime)s - %(message)s", datefmt="%d-%b-%y %H:%M:%S")
    handler = logging.FileHandler(os.path.join(save_path, "log.log"))
    handler.setFormatter(fmt)
    logger.addHandler(handler)
    if to_console:
        logger.addHandler(logging.StreamHandler())
    return logger


def write_history(save_path: str, trial: int, history: dict) -> None:
    """trial_{k}_{train_acc,val_acc,train_loss,val_loss}.npy as the original, plus a CSV and a PNG."""
    for name in CURVES:
        np.save(os.path.join(save_path, f"trial_{trial}_{name}.npy"), np.array(history[name]))
    columns = ["epoch", *CURVES, "val_acc5", "lr", "train_seconds", "saved_peak_mb"]
    with open(os.path.join(save_path, f"trial_{trial}_history.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for i in range(len(history["train_acc"])):
            writer.writerow([i + 1] + [history[c][i] for c in columns[1:]])
    plot_curves({f"trial {trial}": history}, os.path.join(save_path, f"trial_{trial}_curves.png"))


def plot_curves(runs: dict, path: str, title: str = "") -> None:
    """Accuracy and loss per epoch (train dashed, test solid) for each named run."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 4))
    for label, h in runs.items():
        epochs = np.arange(1, len(h["train_acc"]) + 1)
        line, = ax_acc.plot(epochs, h["val_acc"], label=f"{label} test")
        ax_acc.plot(epochs, h["train_acc"], "--", color=line.get_color(), label=f"{label} train")
        ax_loss.plot(epochs, h["val_loss"], color=line.get_color(), label=f"{label} test")
        ax_loss.plot(epochs, h["train_loss"], "--", color=line.get_color(), label=f"{label} train")
    ax_acc.set(xlabel="epoch", ylabel="top-1 accuracy (%)")
    ax_loss.set(xlabel="epoch", ylabel="loss")
    ax_acc.legend(fontsize=8)
    ax_acc.grid(alpha=0.3)
    ax_loss.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
