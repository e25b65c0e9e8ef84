"""Attention heatmaps with matplotlib (Agg backend, no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from translator.fileio import write_bytes_atomic


def plot_attention(weights: np.ndarray, source: Sequence[str], target: Sequence[str],
                   path: Path) -> None:
    """Write a heatmap of ``weights`` ``(len(target), len(source))`` to ``path`` (PNG)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = weights.shape
    fig, ax = plt.subplots(figsize=(max(4, 0.5 * cols + 2), max(3, 0.4 * rows + 2)))
    image = ax.imshow(weights, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(cols), labels=list(source)[:cols], rotation=90)
    ax.set_yticks(range(rows), labels=list(target)[:rows])
    ax.set_xlabel("source subwords")
    ax.set_ylabel("target subwords")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())
