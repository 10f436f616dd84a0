"""Tests of the paper figures: files written, axes labelled, one bar or line per series."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from matplotlib.container import BarContainer  # noqa: E402

from analysis_fixtures import make_metrics  # noqa: E402
from trsllava_utils import plotting  # noqa: E402
from trsllava_utils.baselines import published_results  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def bar_containers(ax):
    return [container for container in ax.containers if isinstance(container, BarContainer)]


def test_palette_distinct_hex():
    assert len(set(plotting.PALETTE)) == len(plotting.PALETTE)
    assert all(colour.startswith("#") and len(colour) == 7 for colour in plotting.PALETTE)


def test_paper_style_restores_rcparams():
    before = matplotlib.rcParams["font.size"]
    with plotting.paper_style():
        assert matplotlib.rcParams["font.size"] == 8
    assert matplotlib.rcParams["font.size"] == before


def test_save_figure_writes_pdf_and_png(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    paths = plotting.save_figure(fig, tmp_path / "figures" / "line")
    assert paths == [tmp_path / "figures" / "line.pdf", tmp_path / "figures" / "line.png"]
    assert paths[0].read_bytes().startswith(b"%PDF")
    assert paths[1].read_bytes().startswith(b"\x89PNG")


def test_save_figure_png_300_dpi(tmp_path):
    from PIL import Image

    fig = plt.figure(figsize=(1.0, 1.0))
    fig.add_subplot().plot([0, 1], [0, 1])
    png = plotting.save_figure(fig, tmp_path / "dpi")[1]
    with Image.open(png) as image:
        assert image.info["dpi"] == pytest.approx((300, 300), abs=1)


def test_save_figure_drops_suffix(tmp_path):
    fig, _ = plt.subplots()
    paths = plotting.save_figure(fig, tmp_path / "figure.pdf")
    assert [path.name for path in paths] == ["figure.pdf", "figure.png"]


def test_plot_recalls_bars_per_run():
    runs = [make_metrics("a"), make_metrics("b", n_variants=1), make_metrics("c", captioner="human-holdout")]
    fig = plotting.plot_recalls(runs)
    containers = bar_containers(fig.axes[0])
    assert len(fig.axes) == 1
    assert len(containers) == 3
    assert all(len(container) == 7 for container in containers)  # six recalls and mR


def test_plot_recalls_labels_and_units():
    fig = plotting.plot_recalls(make_metrics("a"))
    ax = fig.axes[0]
    assert ax.get_ylabel() == "Recall (%)"
    assert ax.get_xlabel()
    assert [tick.get_text() for tick in ax.get_xticklabels()] == ["R@1", "R@5", "R@10", "R@1", "R@5", "R@10", "mR"]


def test_plot_recalls_oracle_legend():
    fig = plotting.plot_recalls([make_metrics("a"), make_metrics("o", captioner="human-holdout")])
    labels = [text.get_text() for text in fig.axes[0].get_legend().get_texts()]
    assert labels == ["a", "o (upper bound)"]


def test_plot_recalls_bar_heights():
    fig = plotting.plot_recalls(make_metrics("a", recalls=(1.0, 2.0, 3.0, 4.0, 5.0, 6.0)))
    heights = [patch.get_height() for patch in bar_containers(fig.axes[0])[0]]
    assert heights == pytest.approx([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 3.5])


def test_plot_recalls_baselines_same_split():
    runs = [make_metrics("a"), make_metrics("b")]
    fig = plotting.plot_recalls(runs, published_results())
    comparison = fig.axes[1]
    n_rsitmd = len(published_results("rsitmd"))
    assert len(comparison.patches) == n_rsitmd + 2
    assert comparison.get_xlabel() == "mR (%)"
    names = [tick.get_text() for tick in comparison.get_yticklabels()]
    assert "GaLR" in names
    assert "CLIP ViT-B/32 [Beyond Pixels]" in names


def test_plot_recalls_baselines_other_split():
    fig = plotting.plot_recalls(make_metrics("demo_run", dataset="demo"), published_results(), width=3.5)
    comparison = fig.axes[1]
    names = [tick.get_text() for tick in comparison.get_yticklabels()]
    assert len(comparison.patches) == len(published_results()) + 1
    assert "GaLR (rsicd)" in names
    assert "TRSLLaVA text-to-text (rsicd) (approx.)" in names


def test_plot_recalls_from_summary_table(tmp_path):
    from analysis_fixtures import write_run
    from trsllava_utils.summary import collect_runs

    write_run(tmp_path, make_metrics("a"))
    write_run(tmp_path, make_metrics("b", n_variants=1))
    fig = plotting.plot_recalls(collect_runs(tmp_path))
    assert len(bar_containers(fig.axes[0])) == 2


def test_plot_recalls_saves_files(tmp_path):
    fig = plotting.plot_recalls([make_metrics("a"), make_metrics("b")], published_results())
    paths = plotting.save_figure(fig, tmp_path / "recalls")
    assert all(path.stat().st_size > 0 for path in paths)
