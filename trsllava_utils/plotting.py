"""Paper figures: one style, sizes for one and two columns, PDF plus 300 dpi PNG.

Every figure function returns a matplotlib ``Figure`` drawn under
:func:`paper_style` and leaves saving to :func:`save_figure`. The palette is
Okabe and Ito's colour-blind-safe set; bars also differ by hatch and lines by
marker and dash, so each figure still reads when printed in greyscale.
Recalls and mR are percentages, as in ``metrics.json``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from .summary import metric_header, metric_keys

logger = logging.getLogger(__name__)

ONE_COLUMN_WIDTH_IN = 3.5
"""Width of a one-column figure in inches (IEEE and most two-column layouts: 3.5 in)."""

TWO_COLUMN_WIDTH_IN = 7.16
"""Width of a figure across both columns in inches (IEEE: 7.16 in)."""

PALETTE: tuple[str, ...] = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
"""Okabe-Ito colours (blue, orange, bluish green, vermillion, reddish purple, sky blue, yellow, black),
ordered so that neighbours differ in lightness as well as hue."""

HATCHES: tuple[str, ...] = ("", "//", "..", "xx", "\\\\", "++", "oo", "--")
"""Bar hatches, one per series, so bars differ in greyscale."""

MARKERS: tuple[str, ...] = ("o", "s", "^", "D", "v", "P", "X", "*")
LINESTYLES: tuple[Any, ...] = ("-", "--", ":", "-.", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)), (0, (1, 2)), (0, (8, 2)))

KIND_STYLES: dict[str, dict[str, str]] = {
    "supervised": {"color": "#4D4D4D", "hatch": ""},
    "zero-shot": {"color": "#B3B3B3", "hatch": "//"},
    "training-free": {"color": "#FFFFFF", "hatch": "xx"},
}
"""Bar styles of published results by kind: greys, so runs in colour stand out."""

PAPER_STYLE: dict[str, Any] = {
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans", "Arial", "Helvetica"],
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "legend.frameon": False,
    "figure.titlesize": 9,
    "axes.prop_cycle": matplotlib.cycler(color=list(PALETTE)),
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": False,
    "axes.linewidth": 0.6,
    "lines.linewidth": 1.2,
    "lines.markersize": 4,
    "patch.linewidth": 0.5,
    "hatch.linewidth": 0.5,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "figure.dpi": 100,
    "savefig.dpi": 300,
    "savefig.bbox": "tight",
    "savefig.pad_inches": 0.02,
    # Type 42 embeds TrueType fonts, so PDF text stays editable and journals accept it.
    "pdf.fonttype": 42,
    "ps.fonttype": 42,
    "figure.constrained_layout.use": True,
}
"""matplotlib rcParams of every paper figure."""


@contextlib.contextmanager
def paper_style() -> Iterator[None]:
    """Apply :data:`PAPER_STYLE` inside a ``with`` block and restore the previous rcParams after it."""
    with matplotlib.rc_context(PAPER_STYLE):
        yield


def save_figure(fig: Figure, path_without_suffix: str | os.PathLike) -> list[Path]:
    """Save ``fig`` as a vector PDF and a 300 dpi PNG, with a tight bounding box so no label is clipped.

    Args:
        fig: The figure to save.
        path_without_suffix: Target path without suffix, e.g.
            ``outputs/run/figures/recalls``; a ``.pdf`` or ``.png`` suffix is
            dropped. Parent folders are created.

    Returns:
        The paths written, PDF first.
    """
    base = Path(path_without_suffix)
    if base.suffix.lower() in (".pdf", ".png"):
        base = base.with_suffix("")
    base.parent.mkdir(parents=True, exist_ok=True)
    paths = [base.parent / f"{base.name}.pdf", base.parent / f"{base.name}.png"]
    with paper_style():
        fig.savefig(paths[0], format="pdf", bbox_inches="tight")
        fig.savefig(paths[1], format="png", dpi=300, bbox_inches="tight")
    logger.info("saved figure %s (.pdf, .png)", base)
    return paths


# Inputs -----------------------------------------------------------------------------------------------------------


def run_label(metrics: Mapping[str, Any]) -> str:
    """Return a run's legend label; oracle runs are marked as an upper bound."""
    name = str(metrics.get("run_name", "run"))
    return f"{name} (upper bound)" if metrics.get("oracle") else name


def as_metrics_list(metrics: Mapping[str, Any] | Sequence[Mapping[str, Any]] | pd.DataFrame) -> list[dict[str, Any]]:
    """Normalise run results to a list of metrics.json-like dicts.

    Accepts one metrics.json dict, a list of them, or the table of
    :func:`trsllava_utils.summary.collect_runs` (its ``<key>_lo`` and
    ``<key>_hi`` columns become ``ci95``).
    """
    if isinstance(metrics, pd.DataFrame):
        runs = []
        keys = metric_keys(metrics.columns)
        for row in metrics.to_dict("records"):
            runs.append({
                "run_name": row["run_name"], "oracle": bool(row.get("oracle", False)),
                "dataset": {"name": row.get("dataset"), "split": row.get("split")},
                "metrics": {key: row[key] for key in keys if not _is_missing(row.get(key))},
                "ci95": {key: [row.get(f"{key}_lo", math.nan), row.get(f"{key}_hi", math.nan)] for key in keys},
            })
        return runs
    if isinstance(metrics, Mapping):
        return [dict(metrics)]
    runs = [dict(item) for item in metrics]
    for number, run in enumerate(runs):
        if "metrics" not in run:
            raise ValueError(f"run {number} ({run.get('run_name', 'unnamed')}) has no 'metrics'; "
                             "pass metrics.json dicts as the retrieval notebook writes them")
    return runs


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _interval_errors(run: Mapping[str, Any], keys: Sequence[str]) -> np.ndarray:
    """Return the 2 x len(keys) error-bar lengths below and above each value (0 where no interval)."""
    errors = np.zeros((2, len(keys)))
    ci95 = run.get("ci95") or {}
    for column, key in enumerate(keys):
        value = run["metrics"].get(key)
        bounds = ci95.get(key)
        if _is_missing(value) or not bounds or any(_is_missing(bound) for bound in bounds):
            continue
        errors[0, column] = max(value - bounds[0], 0.0)
        errors[1, column] = max(bounds[1] - value, 0.0)
    return errors


def _dataset_name(run: Mapping[str, Any]) -> str | None:
    dataset = run.get("dataset")
    if isinstance(dataset, Mapping):
        return dataset.get("name")
    return dataset if isinstance(dataset, str) else run.get("params", {}).get("dataset")


# Figure 1: recalls ------------------------------------------------------------------------------------------------


def plot_recalls(metrics: Mapping[str, Any] | Sequence[Mapping[str, Any]] | pd.DataFrame,
                 baselines: pd.DataFrame | None = None, *, width: float = TWO_COLUMN_WIDTH_IN,
                 height: float | None = None, title: str | None = None) -> Figure:
    """Plot the six recalls and mR of each run as grouped bars, beside published mR values.

    Args:
        metrics: One metrics.json dict, a list of them, or the table of
            :func:`~trsllava_utils.summary.collect_runs`.
        baselines: Published results (:func:`~trsllava_utils.baselines.published_results`).
            Rows of the runs' datasets are drawn in a second panel as
            horizontal mR bars, sorted together with each run's mR. When none
            match (demo runs), every row is drawn with its dataset in the
            label, and the panel title says the splits differ.
        width: Figure width in inches. Below 5 in the mR panel goes under the
            recall panel instead of beside it.
        height: Figure height in inches; by default it grows with the number of
            bars in the mR panel.
        title: Optional figure title.

    Returns:
        The figure: ``axes[0]`` holds one bar container per run, with 95%
        bootstrap intervals as error bars; ``axes[1]``, when baselines are
        given, one horizontal bar per run and published value.
    """
    runs = as_metrics_list(metrics)
    if not runs:
        raise ValueError("plot_recalls needs at least one run's metrics")
    keys = metric_keys({key for run in runs for key in run["metrics"]})
    baseline_rows, same_split = _matching_baselines(runs, baselines)
    with paper_style():
        if baseline_rows is None:
            fig, single = plt.subplots(figsize=(width, height or 2.4))
            axes = [single]
        else:
            comparison_height = 0.5 + 0.15 * (len(runs) + len(baseline_rows))
            if width >= 5.0:
                fig, axes = plt.subplots(1, 2, figsize=(width, height or max(2.4, comparison_height)),
                                         width_ratios=[2.0, 1])
            else:
                # Subfigures keep the long method names of the lower panel from narrowing the upper one.
                fig = plt.figure(figsize=(width, height or 2.6 + comparison_height))
                upper, lower = fig.subfigures(2, 1, height_ratios=[2.6, comparison_height])
                axes = [upper.subplots(), lower.subplots()]
        _draw_recall_bars(axes[0], runs, keys)
        if baseline_rows is not None:
            _draw_mr_comparison(axes[1], runs, baseline_rows, same_split)
        if title:
            fig.suptitle(title)
    return fig


def _matching_baselines(runs: Sequence[Mapping[str, Any]],
                        baselines: pd.DataFrame | None) -> tuple[pd.DataFrame | None, bool]:
    if baselines is None or baselines.empty:
        return None, False
    datasets = {name for name in (_dataset_name(run) for run in runs) if name}
    matching = baselines[baselines["dataset"].isin(datasets)]
    if not matching.empty:
        return matching.reset_index(drop=True), True
    return baselines.reset_index(drop=True), False


def _draw_recall_bars(ax: plt.Axes, runs: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> None:
    n_runs = len(runs)
    group_width = 0.8
    bar_width = group_width / n_runs
    positions = np.arange(len(keys))
    for index, run in enumerate(runs):
        values = [run["metrics"].get(key, np.nan) for key in keys]
        offsets = positions - group_width / 2 + bar_width * (index + 0.5)
        ax.bar(offsets, values, bar_width, yerr=_interval_errors(run, keys), label=run_label(run),
               color=PALETTE[index % len(PALETTE)], hatch=HATCHES[index % len(HATCHES)], edgecolor="black",
               linewidth=0.4, error_kw={"elinewidth": 0.6, "capsize": 1.5, "ecolor": "black"})
    ax.set_xticks(positions, [key.split("_", 1)[1] if "_" in key else key for key in keys])
    _label_directions(ax, keys, positions)
    ax.set_xlabel("Recall at K, and mR (mean of the recalls)", labelpad=12)
    ax.set_ylabel("Recall (%)")
    ax.set_ylim(0, 100)
    ax.set_xlim(-0.5, len(keys) - 0.5)
    ax.yaxis.grid(True, linewidth=0.3, alpha=0.5)
    ax.set_axisbelow(True)
    ax.legend(loc="lower left", bbox_to_anchor=(0, 1.01), ncol=min(n_runs, 2), borderaxespad=0,
              handlelength=1.6, columnspacing=1.0)


def _label_directions(ax: plt.Axes, keys: Sequence[str], positions: np.ndarray) -> None:
    """Write the retrieval direction under each block of recall ticks and a divider between blocks."""
    titles = {"t2i": "text → image", "i2t": "image → text"}
    for direction, title in titles.items():
        block = [position for key, position in zip(keys, positions) if key.startswith(f"{direction}_")]
        if not block:
            continue
        ax.annotate(title, xy=(float(np.mean(block)), 0), xycoords=("data", "axes fraction"),
                    xytext=(0, -15), textcoords="offset points", ha="center", va="top", fontsize=7)
        ax.axvline(max(block) + 0.5, color="black", linewidth=0.4, linestyle=":")


def _short_source(source: str) -> str:
    return source.split(" (")[0]


def _draw_mr_comparison(ax: plt.Axes, runs: Sequence[Mapping[str, Any]], baselines: pd.DataFrame,
                        same_split: bool) -> None:
    bars: list[tuple[float, str, dict[str, str]]] = []
    for index, run in enumerate(runs):
        style = {"color": PALETTE[index % len(PALETTE)], "hatch": HATCHES[index % len(HATCHES)]}
        bars.append((float(run["metrics"]["mR"]), run_label(run), style))
    records = baselines.to_dict("records")
    names = [record.get("display_name") or f"{record['method']} {record.get('backbone', '')}".strip()
             for record in records]
    for record, name in zip(records, names):
        if not same_split:
            name += f" ({record['dataset']})"
        base_name = record.get("display_name") or name
        sources = {_short_source(other["source"]) for other, other_name in zip(records, names)
                   if other_name == base_name and other["dataset"] == record["dataset"]}
        if len(sources) > 1:
            # Two sources report this method on this split: name the source so the bars differ.
            name += f" [{_short_source(record['source'])}]"
        bars.append((float(record["mR"]), name, KIND_STYLES.get(record["kind"], KIND_STYLES["supervised"])))
        if record.get("approximate"):
            bars[-1] = (bars[-1][0], name + " (approx.)", bars[-1][2])
    bars.sort(key=lambda bar: bar[0], reverse=True)
    positions = np.arange(len(bars))[::-1]
    for position, (value, _, style) in zip(positions, bars):
        ax.barh(position, value, 0.72, color=style["color"], hatch=style["hatch"], edgecolor="black",
                linewidth=0.4)
        ax.text(value + 0.8, position, f"{value:.1f}", va="center", ha="left", fontsize=6)
    ax.set_yticks(positions, [name for _, name, _ in bars])
    ax.set_ylim(-0.6, len(bars) - 0.4)
    ax.set_xlabel("mR (%)")
    ax.set_xlim(0, max(value for value, _, _ in bars) * 1.18)
    ax.xaxis.grid(True, linewidth=0.3, alpha=0.5)
    ax.set_axisbelow(True)
    kinds = set(baselines["kind"])
    handles = [Patch(facecolor=style["color"], hatch=style["hatch"], edgecolor="black", linewidth=0.4,
                     label=f"published, {kind}") for kind, style in KIND_STYLES.items() if kind in kinds]
    title = None if same_split else "Published values are on other test splits"
    # Anchored at the right, the legend extends over the method names, never past the figure edge.
    ax.legend(handles=handles, loc="lower right", bbox_to_anchor=(1, 1.01), borderaxespad=0, handlelength=1.6,
              title=title, title_fontsize=7)
