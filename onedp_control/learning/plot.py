"""Loss curves as PNG (matplotlib, no display)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def plot_losses(curves: dict[str, list[float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 3.5), dpi=100)
    for name, values in curves.items():
        values = np.asarray(values, dtype=float)
        window = max(1, min(50, len(values) // 20))
        smooth = np.convolve(values, np.ones(window) / window, mode="valid")
        axes.plot(np.arange(window, len(values) + 1), smooth, label=name)
    axes.set_yscale("log")
    axes.set_xlabel("step")
    axes.set_title(title)
    axes.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
