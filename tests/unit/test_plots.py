"""nblib.book.plots: the recurring figures draw what they say (mean and band, styled lines, sorted spectra)."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from nblib.book import COLORS, plots  # noqa: E402


def test_mean_band_draws_the_mean_and_the_quantile_band():
    fig, ax = plt.subplots()
    t = torch.arange(5.0)
    values = torch.arange(15.0).reshape(5, 3)
    plots.mean_band(ax, t, values, label="runs")
    (line,) = ax.get_lines()
    assert np.allclose(line.get_ydata(), values.mean(1).numpy())
    assert len(ax.collections) == 1
    with pytest.raises(ValueError, match="chains"):
        plots.mean_band(ax, t, values[:, 0])
    plt.close(fig)


def test_flow_and_theory_lines_have_the_book_style():
    fig, ax = plt.subplots()
    plots.flow_line(ax, [0, 1], [1, 2])
    plots.theory_line(ax, [0, 1], [0, 1])
    plots.theory_line(ax, None, 3.0, label="level")
    flow, theory, level = ax.get_lines()
    assert flow.get_linestyle() == "--" and flow.get_color() == COLORS["flow"]
    assert theory.get_linestyle() == ":" and theory.get_color() == COLORS["theory"]
    assert np.allclose(level.get_ydata(), [3.0, 3.0])
    plt.close(fig)


def test_spectrum_sorts_and_floors():
    fig, ax = plt.subplots()
    plots.spectrum(ax, torch.tensor([0.0, 3.0, 1.0]))
    (line,) = ax.get_lines()
    assert np.allclose(line.get_ydata(), [3.0, 1.0, 1e-12])
    plt.close(fig)
