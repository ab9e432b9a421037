"""The clusters as a picture: each row a point at its projection, each cluster named at its
centre. Drawn with matplotlib's Agg canvas directly (no pyplot, no global backend state)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

FIGURE_ARTIFACT = "Text clusters"
FIGURE_FILE = "figure_clustering.png"


def missing_matplotlib(owner: str) -> str | None:
    """Why a figure cannot be drawn here, or None: asked before any work, not after the LLM
    was paid for the labels."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        return (f"{owner}: savefig=True needs the 'matplotlib' package: pip install 'synthpipe[clustering]', "
                "or set savefig=False")
    return None


def draw_clusters(points: Any, clusters: list[int], names: dict[int, str], path: Path) -> None:
    """Save the scatter plot of ``points`` (n x 2) coloured by cluster (noise, ``-1``, in grey)
    with each named cluster's label at the mean of its points, as a PNG at ``path``."""
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    points = np.asarray(points, dtype=float)
    labels = np.asarray(clusters)
    named = sorted(c for c in set(clusters) if c != -1)
    palette = colormaps["Spectral"](np.linspace(0, 1, len(named)))
    fig = Figure(figsize=(12, 8), dpi=300)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    size = float(np.clip(3000 / max(len(points), 1), 0.75, 12))  # dots that stay visible for a few rows
    noise = labels == -1
    if noise.any():
        ax.scatter(points[noise, 0], points[noise, 1], s=size, color=(0.6, 0.6, 0.6, 0.5), linewidths=0)
    for colour, cluster in zip(palette, named, strict=True):
        members = labels == cluster
        ax.scatter(points[members, 0], points[members, 1], s=size, color=colour, alpha=0.8, linewidths=0)
        centre = points[members].mean(axis=0)
        text = ax.text(centre[0], centre[1], names.get(cluster, str(cluster)), ha="center", va="center", fontsize=6)
        text.set_bbox({"facecolor": "white", "alpha": 0.9, "linewidth": 0, "boxstyle": "square,pad=0.1"})
    ax.set_axis_off()
    fig.savefig(path)
