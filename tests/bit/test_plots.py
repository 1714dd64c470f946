"""Report plots: a drawing becomes a self-contained base64 PNG, and the figure is closed."""

import base64

import pytest

from components.bit import plots


def test_a_drawing_becomes_an_inline_png_and_its_figure_is_closed():
    import matplotlib.pyplot as plt

    before = len(plt.get_fignums())
    encoded = plots.png_base64(lambda fig, ax: ax.bar(["a", "b"], [1, 2]), size=(2, 1))
    assert base64.b64decode(encoded).startswith(b"\x89PNG\r\n\x1a\n")
    assert len(plt.get_fignums()) == before


def test_a_failing_drawing_still_closes_its_figure():
    import matplotlib.pyplot as plt

    before = len(plt.get_fignums())

    def broken(fig, ax):
        raise ValueError("no data")

    with pytest.raises(ValueError, match="no data"):
        plots.png_base64(broken)
    assert len(plt.get_fignums()) == before
