"""The pictures the seed kernel showed, produced by the pipeline: training curves, per-class
lwlrap, and one example's mel spectrogram (PNG, headless)."""
from __future__ import annotations

import csv
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def training_curves(history: dict, path: str) -> None:
    """Loss and lwlrap per epoch, training and validation side by side."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for ax, key in zip(axes, ("loss", "lwlrap")):
        for prefix, style in (("", "-"), ("val_", "--")):
            values = history.get(prefix + key)
            if values:
                ax.plot(range(1, len(values) + 1), values, style, label=(prefix or "train_") + key)
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def per_class_lwlrap(labels: list[str], per_class: np.ndarray, counts: np.ndarray, csv_path: str,
                     png_path: str) -> None:
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["label", "lwlrap", "positives"])
        for label, value, n in zip(labels, per_class, counts):
            w.writerow([label, "" if np.isnan(value) else f"{value:.6f}", int(n)])
    order = np.argsort(np.nan_to_num(per_class, nan=-1.0))
    fig, ax = plt.subplots(figsize=(8, max(4, 0.18 * len(labels))))
    ax.barh(np.arange(len(labels)), np.nan_to_num(per_class[order]), color="tab:blue")
    ax.set_yticks(np.arange(len(labels)), [labels[i] for i in order], fontsize=6)
    ax.set_xlabel("lwlrap")
    ax.set_xlim(0, 1)
    ax.set_title("per-class lwlrap (eval split)")
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)


def mel_example(mel: np.ndarray, title: str, path: str) -> None:
    fig, ax = plt.subplots(figsize=(12, 4))
    im = ax.imshow(mel.T, origin="lower", aspect="auto", cmap="magma")
    ax.set_xlabel("frame")
    ax.set_ylabel("mel band")
    ax.set_title(title)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def ensure_dir(path: str) -> str:
    os.makedirs(path, exist_ok=True)
    return path
