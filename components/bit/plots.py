"""Plots for the self-contained HTML reports: a drawing as an inline base64 PNG."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from typing import Any


def png_base64(draw: Callable[[Any, Any], None], size: tuple[float, float] = (6, 3.5)) -> str:
    """Run ``draw(fig, ax)`` on a fresh Agg figure; return the figure as base64 PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size)
    try:
        draw(fig, ax)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
        return base64.b64encode(buffer.getvalue()).decode("ascii")
    finally:
        plt.close(fig)
