"""Paper figures: one style, sizes for one and two columns, PDF plus 300 dpi PNG.

Every figure function returns a matplotlib ``Figure`` drawn under
:func:`paper_style` and leaves saving to :func:`save_figure`. The palette is
Okabe and Ito's colour-blind-safe set. Bars also differ by hatch, and lines
by marker and dash, so each figure still reads when printed in greyscale.
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
import matplotlib.ticker
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from .summary import metric_header, metric_keys

logger = logging.getLogger(__name__)

ONE_COLUMN_WIDTH_IN = 3.5
"""Width of a one-column figure in inches; about the column width of two-column journal layouts."""

TWO_COLUMN_WIDTH_IN = 7.16
"""Width of a figure across both columns in inches; about the text width of two-column journal layouts."""

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
            label, under a legend title that warns that the splits differ.
        width: Figure width in inches. Below 5 in the mR panel goes under the
            recall panel instead of beside it.
        height: Figure height in inches; by default it grows with the number of
            bars in the mR panel.
        title: Optional figure title.

    Returns:
        The figure. ``axes[0]`` contains one bar container per run, with 95%
        bootstrap intervals as error bars. When baselines are given,
        ``axes[1]`` has one horizontal bar per run and published value.
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


# Figure 2: mR over two ablation axes -----------------------------------------------------------------------------

AXIS_LABELS: dict[str, str] = {
    "dataset": "Dataset",
    "embedding_model": "Embedding model",
    "db_fields": "Database fields",
    "db_text_mode": "Database text mode",
    "n_variants": "Variants per image N (count)",
    "aggregation": "Aggregation over texts",
    "captioner": "Captioner",
    "split": "Split",
}
"""Axis titles of the ablation axes of the summary table."""


def _axis_title(axis: str) -> str:
    return AXIS_LABELS.get(axis, axis)


def _method_runs(df: pd.DataFrame, include_oracle: bool) -> pd.DataFrame:
    if include_oracle or "oracle" not in df.columns:
        return df
    return df[~df["oracle"].astype(bool)]


FIELD_ABBREVIATIONS: dict[str, str] = {"one_sentence": "S", "feature": "F", "caption": "C"}
"""Short names of the RSRT fields, so that field combinations fit on a heatmap axis."""


def _abbreviate_fields(value: Any) -> str:
    return "+".join(FIELD_ABBREVIATIONS.get(name, name) for name in str(value).split("+"))


def _heatmap_axis_title(axis: str) -> str:
    if axis != "db_fields":
        return _axis_title(axis)
    key = ", ".join(f"{short} = {name}" for name, short in FIELD_ABBREVIATIONS.items())
    return f"{_axis_title(axis)} ({key})"


def plot_mr_heatmap(df: pd.DataFrame, row_axis: str, col_axis: str, *, value: str = "mR",
                    include_oracle: bool = False, width: float | None = None,
                    height: float | None = None, cmap: str = "cividis") -> Figure:
    """Plot a heatmap of mR (or another metric) over two ablation axes, with the value in each cell.

    Args:
        df: The table of :func:`~trsllava_utils.summary.collect_runs`.
        row_axis: Column whose values become the rows, e.g. ``"db_fields"``.
        col_axis: Column whose values become the columns, e.g. ``"n_variants"``.
        value: Metric column to show, in percent.
        include_oracle: Keep oracle runs; off by default, because the oracle is
            an upper bound, not a setting of the method.
        width: Figure width in inches; by default one column, or two columns
            for more than four columns of cells.
        height: Figure height in inches; by default it grows with the rows.
        cmap: A colour map whose lightness rises monotonically (``cividis``
            by default), so the cells read in greyscale. It spans the values
            shown, and each cell prints its value.

    Returns:
        The figure; cells without a run are left blank.

    Raises:
        ValueError: when a column is missing, no run is left, or two runs fall
            into one cell (another axis varies too); filter the table first.
    """
    import seaborn as sns

    for column in (row_axis, col_axis, value):
        if column not in df.columns:
            raise ValueError(f"column {column!r} not in the runs table; columns: {list(df.columns)}")
    runs = _method_runs(df, include_oracle)
    if runs.empty:
        raise ValueError("no runs left to plot; pass include_oracle=True to plot oracle runs")
    counts = runs.groupby([row_axis, col_axis]).size()
    crowded = counts[counts > 1]
    if not crowded.empty:
        cells = ", ".join(f"{row_axis}={r}, {col_axis}={c} ({n} runs)" for (r, c), n in crowded.items())
        raise ValueError(f"several runs share a cell: {cells}; another axis varies too, so filter the table "
                         "to one value of it first")
    grid = runs.pivot(index=row_axis, columns=col_axis, values=value)
    # RSRT field combinations such as "one_sentence+feature+caption" get short names.
    if row_axis == "db_fields":
        grid.index = [_abbreviate_fields(v) for v in grid.index]
    if col_axis == "db_fields":
        grid.columns = [_abbreviate_fields(v) for v in grid.columns]
    if width is None:
        width = ONE_COLUMN_WIDTH_IN if grid.shape[1] <= 4 else TWO_COLUMN_WIDTH_IN
    with paper_style():
        fig, ax = plt.subplots(figsize=(width, height or 0.9 + 0.3 * len(grid)))
        sns.heatmap(grid, ax=ax, annot=True, fmt=".1f", cmap=cmap, linewidths=0.5,
                    linecolor="white", annot_kws={"fontsize": 7},
                    cbar_kws={"label": f"{metric_header(value)} (%)", "shrink": 0.9})
        ax.set_xlabel(_heatmap_axis_title(col_axis))
        ax.set_ylabel(_heatmap_axis_title(row_axis))
        ax.tick_params(axis="y", rotation=0)
        ax.tick_params(axis="x", rotation=0)
    return fig


# Figure 3: mR against the number of variants ---------------------------------------------------------------------


def _series_label(row: Mapping[str, Any], axes: Sequence[str]) -> str:
    return ", ".join(f"{row[axis]}" for axis in axes) if axes else "method"


def plot_mr_vs_variants(df: pd.DataFrame, *, value: str = "mR", group_by: Sequence[str] | None = None,
                        width: float = ONE_COLUMN_WIDTH_IN, height: float = 2.4) -> Figure:
    """Plot mR against the number of RSRT variants N, one line per setting, the 95% interval as a band.

    Args:
        df: The table of :func:`~trsllava_utils.summary.collect_runs`.
        value: Metric column to plot, in percent.
        group_by: Columns that split the runs into lines. By default every
            ablation axis (other than N) that varies among the method runs.
        width: Figure width in inches.
        height: Figure height in inches.

    Returns:
        The figure: one line with markers per setting, in the order of the
        sorted settings, and one dashed horizontal line per oracle run (its
        value does not depend on N).
    """
    if "n_variants" not in df.columns or value not in df.columns:
        raise ValueError(f"the runs table needs 'n_variants' and {value!r} columns")
    method = _method_runs(df, include_oracle=False)
    oracle = df[df["oracle"].astype(bool)] if "oracle" in df.columns else df.iloc[0:0]
    if method.empty:
        raise ValueError("no method runs to plot; mR against N needs runs of the method, not only the oracle")
    if group_by is None:
        group_by = [axis for axis in ("dataset", "embedding_model", "db_fields", "db_text_mode", "aggregation")
                    if axis in method.columns and method[axis].astype(str).nunique() > 1]
    group_by = list(group_by)
    with paper_style():
        fig, ax = plt.subplots(figsize=(width, height))
        groups = method.groupby(group_by, sort=True) if group_by else [((), method)]
        for index, (key, runs) in enumerate(groups):
            runs = runs.sort_values("n_variants")
            key = key if isinstance(key, tuple) else (key,)
            label = ", ".join(str(part) for part in key) if group_by else "method"
            colour = PALETTE[index % len(PALETTE)]
            x = runs["n_variants"].to_numpy(dtype=float)
            ax.plot(x, runs[value], color=colour, marker=MARKERS[index % len(MARKERS)],
                    linestyle=LINESTYLES[index % len(LINESTYLES)], label=label)
            low, high = f"{value}_lo", f"{value}_hi"
            if low in runs.columns and runs[low].notna().all():
                ax.fill_between(x, runs[low], runs[high], color=colour, alpha=0.18, linewidth=0)
        for index, row in enumerate(oracle.to_dict("records")):
            ax.axhline(row[value], color="black", linewidth=0.8, linestyle=LINESTYLES[(index + 1) % len(LINESTYLES)],
                       label=f"{row['run_name']} (oracle, upper bound)")
        values = sorted(set(method["n_variants"].astype(int)))
        ax.set_xticks(values)
        ax.set_xlabel("Variants per image N (count)")
        ax.set_ylabel(f"{metric_header(value)} (%)")
        ax.yaxis.grid(True, linewidth=0.3, alpha=0.5)
        ax.set_axisbelow(True)
        legend_title = " / ".join(AXIS_LABELS.get(axis, axis) for axis in group_by) or None
        ax.legend(loc="lower left", bbox_to_anchor=(0, 1.01), borderaxespad=0, ncol=1, title=legend_title,
                  title_fontsize=7)
    return fig


# Figure 4: cumulative distribution of ranks ---------------------------------------------------------------------


def plot_rank_cdf(ranks: Mapping[str, pd.DataFrame], *, ks: Sequence[int] = (1, 5, 10), log_x: bool = True,
                  width: float = TWO_COLUMN_WIDTH_IN, height: float = 2.3) -> Figure:
    """Plot, per run and direction, the share of queries whose rank is at most r.

    The curve at r = K is R@K, so the dotted guides at ``ks`` read off the
    recalls. Oracle folds are pooled, as in metrics.json.

    Args:
        ranks: Run name to its ranks.csv frame (columns ``direction`` and ``rank``).
        ks: Ranks marked with vertical guides.
        log_x: Use a logarithmic rank axis, which spreads the top ranks.
        width: Figure width in inches.
        height: Figure height in inches.

    Returns:
        The figure with two axes, text to image and image to text, one step
        line per run in each.
    """
    if not ranks:
        raise ValueError("plot_rank_cdf needs at least one run's ranks")
    directions = (("t2i", "Text → image"), ("i2t", "Image → text"))
    with paper_style():
        fig, axes = plt.subplots(1, 2, figsize=(width, height), sharey=True)
        for ax, (direction, title) in zip(axes, directions):
            max_rank = 1
            for index, (name, frame) in enumerate(ranks.items()):
                missing = {"direction", "rank"} - set(frame.columns)
                if missing:
                    raise ValueError(f"ranks of run {name!r} lack columns {sorted(missing)}; pass ranks.csv frames")
                values = frame.loc[frame["direction"] == direction, "rank"].to_numpy(dtype=float)
                if values.size == 0:
                    logger.warning("run %s has no %s ranks; its line is left out", name, direction)
                    continue
                distinct, counts = np.unique(values, return_counts=True)
                share = 100.0 * np.cumsum(counts) / values.size
                if distinct[0] > 1:
                    # No query at rank 1: the curve starts at 0 there.
                    distinct, share = np.concatenate([[1.0], distinct]), np.concatenate([[0.0], share])
                ax.step(distinct, share, where="post", color=PALETTE[index % len(PALETTE)],
                        linestyle=LINESTYLES[index % len(LINESTYLES)], label=_ranks_label(name, frame))
                max_rank = max(max_rank, int(distinct[-1]))
            for k in ks:
                ax.axvline(k, color="grey", linewidth=0.5, linestyle=":")
            upper = max([max_rank, *ks])
            if log_x:
                ax.set_xscale("log")
                ticks = sorted({1, *ks, *(10 ** power for power in range(1, len(str(upper))))})
                ax.set_xticks([tick for tick in ticks if tick <= upper * 1.1])
                ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}"))
                ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_xlim(1, upper * (1.1 if log_x else 1.0))
            ax.set_ylim(0, 100.5)
            ax.set_title(title)
            ax.set_xlabel("Rank r (log scale)" if log_x else "Rank r")
            ax.yaxis.grid(True, linewidth=0.3, alpha=0.5)
        axes[0].set_ylabel("Queries with rank ≤ r (%)")
        handles, labels = axes[0].get_legend_handles_labels()
        if not handles:
            handles, labels = axes[1].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 3))
    return fig


def _ranks_label(name: str, frame: pd.DataFrame) -> str:
    """Return a run's legend label; ranks from oracle folds mark the run as an upper bound."""
    episodes = frame["episode"].astype(str) if "episode" in frame.columns else pd.Series(dtype=str)
    if episodes.str.startswith("fold").any():
        return f"{name} (oracle, upper bound)"
    return name


# Figure 5: recall per scene class --------------------------------------------------------------------------------


def plot_per_class_recall(metrics: Mapping[str, Any], *, ks: Sequence[int] | None = None,
                          width: float = TWO_COLUMN_WIDTH_IN, height: float | None = None) -> Figure:
    """Plot R@K per scene class for both directions, as nested horizontal bars.

    R@1 <= R@5 <= R@10, so the bars of one class are drawn on top of each
    other, the largest K lightest and at the back. Classes are sorted by the
    text-to-image value of the smallest K, weakest at the bottom.

    Args:
        metrics: One metrics.json dict with a non-empty ``per_class``.
        ks: The K values to draw; by default all in ``per_class``.
        width: Figure width in inches.
        height: Figure height in inches; by default it grows with the classes.

    Returns:
        The figure with one axis per direction that has classes.
    """
    per_class = metrics.get("per_class") or {}
    directions = [(d, t) for d, t in (("t2i", "Text → image"), ("i2t", "Image → text")) if per_class.get(d)]
    if not directions:
        raise ValueError(f"run {metrics.get('run_name')!r} has no per-class recall; its dataset has no labels")
    first = next(iter(per_class[directions[0][0]].values()))
    available = sorted(int(key.removeprefix("R@")) for key in first if key.startswith("R@"))
    ks = sorted(ks) if ks is not None else available
    missing = [k for k in ks if k not in available]
    if missing:
        raise ValueError(f"per_class has no R@{missing[0]}; available K values: {available}")
    reference = per_class[directions[0][0]]
    classes = sorted(reference, key=lambda name: (reference[name][f"R@{ks[0]}"], name))
    shades = ("#D9D9D9", "#969696", "#252525", "#636363", "#BDBDBD")
    with paper_style():
        fig, axes = plt.subplots(1, len(directions), figsize=(width, height or max(2.0, 0.9 + 0.14 * len(classes))),
                                 sharey=True, squeeze=False)
        for ax, (direction, title) in zip(axes[0], directions):
            entries = per_class[direction]
            positions = np.arange(len(classes))
            for order, k in enumerate(sorted(ks, reverse=True)):
                values = [entries.get(name, {}).get(f"R@{k}", np.nan) for name in classes]
                ax.barh(positions, values, 0.75, color=shades[order % len(shades)], edgecolor="black",
                        linewidth=0.3, label=f"R@{k}")
            ax.set_yticks(positions, [_class_label(name, per_class, directions) for name in classes])
            ax.set_xlim(0, 100)
            ax.set_ylim(-0.6, len(classes) - 0.4)
            ax.set_title(title)
            ax.set_xlabel("Recall (%)")
            ax.xaxis.grid(True, linewidth=0.3, alpha=0.5)
            ax.set_axisbelow(True)
        counts = " / ".join("T→I" if direction == "t2i" else "I→T" for direction, _ in directions)
        axes[0][0].set_ylabel(f"Scene class (queries: {counts})")
        handles, labels = axes[0][-1].get_legend_handles_labels()
        fig.legend(handles[::-1], labels[::-1], loc="outside upper center", ncol=len(ks))
    return fig


def _class_label(name: str, per_class: Mapping[str, Any], directions: Sequence[tuple[str, str]]) -> str:
    counts = " / ".join(str(per_class[direction].get(name, {}).get("n", 0)) for direction, _ in directions)
    return f"{name} ({counts})"


# 02_embedding: 2-D map of text vectors ---------------------------------------------------------------------------


EMBEDDING_MAP_CLASSES = 8
"""Classes drawn in colour on the embedding map; the rest are grey, so the legend stays readable."""


def plot_embedding_map(points_2d: np.ndarray, labels: Sequence[str], *, method: str = "PCA",
                       width: float = ONE_COLUMN_WIDTH_IN, height: float = 3.0,
                       title: str | None = None, max_classes: int = EMBEDDING_MAP_CLASSES) -> Figure:
    """Plot 2-D projected text vectors, one colour and marker per label.

    With more than ``max_classes`` labels, the ``max_classes`` most frequent
    ones (ties by name) get a colour and marker each, and the other points are
    drawn underneath as small grey dots labelled "other classes".

    Args:
        points_2d: ``(n, 2)`` coordinates from a projection such as PCA.
        labels: One label per point, e.g. the scene class of the text's image.
        method: Projection name for the axis titles.
        width: Figure width in inches.
        height: Figure height in inches.
        title: Optional axis title.
        max_classes: How many labels get their own colour.

    Returns:
        The figure, one scatter collection per coloured label (sorted by
        name), with the legend below the axis.
    """
    points = np.asarray(points_2d, dtype=float)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"points_2d must have shape (n, 2), got {points.shape}")
    if len(labels) != len(points):
        raise ValueError(f"{len(labels)} labels for {len(points)} points")
    label_array = np.asarray([str(label) for label in labels])
    counts = pd.Series(label_array).value_counts()
    ranked = sorted(counts.index, key=lambda name: (-counts[name], name))
    names = sorted(ranked[:max_classes])
    others = ~np.isin(label_array, names)
    with paper_style():
        fig, ax = plt.subplots(figsize=(width, height))
        if others.any():
            n_other = len(ranked) - len(names)
            ax.scatter(points[others, 0], points[others, 1], s=3, color="#BBBBBB", linewidths=0,
                       label=f"{n_other} other classes")
        for index, name in enumerate(names):
            mask = label_array == name
            ax.scatter(points[mask, 0], points[mask, 1], s=10, color=PALETTE[index % len(PALETTE)],
                       marker=MARKERS[(index // len(PALETTE) + index) % len(MARKERS)], linewidths=0.3,
                       edgecolors="black", label=name)
        ax.set_xlabel(f"{method} component 1 (arbitrary units)")
        ax.set_ylabel(f"{method} component 2 (arbitrary units)")
        if title:
            ax.set_title(title)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), borderaxespad=0, ncol=3,
                  fontsize=6, handletextpad=0.2, markerscale=1.2, columnspacing=0.8)
    return fig


# Figure 6: qualitative examples ----------------------------------------------------------------------------------

GROUND_TRUTH_COLOUR = "#D55E00"
"""Outline colour of ground-truth images and captions (vermillion; the outline is also thick and labelled)."""

TOP_K_SHOWN = 5
"""Retrieved items per example query, the length of the ``top5`` column of ranks.csv."""

THUMBNAIL_PX = 256
"""Maximum side, in pixels, of the image tiles of the example figures and the explorer."""


def load_thumbnail(path: str | os.PathLike | None, size: int = THUMBNAIL_PX) -> Any:
    """Return an RGB PIL thumbnail of an image file, or None when the file is missing or unreadable.

    A missing file is expected (the RSITMD and RSICD test images are often
    not on the machine), so it is logged at debug level only.
    """
    from .captioning.images import ImageLoadError, load_image_rgb

    try:
        image = load_image_rgb(path)
    except ImageLoadError as exc:
        logger.debug("no thumbnail: %s", exc)
        return None
    image.thumbnail((size, size))
    return image


def _draw_tile(ax: plt.Axes, item: Any, *, title: str, ground_truth: bool) -> None:
    """Draw one image tile: the picture (or a labelled blank tile), a title, and a frame around the ground truth."""
    image = load_thumbnail(getattr(item, "path", None)) if item is not None else None
    if image is not None:
        ax.imshow(image)
    else:
        ax.set_facecolor("#E6E6E6")
        name = getattr(item, "image_id", "unknown")
        ax.text(0.5, 0.5, f"image not available\n{name}", ha="center", va="center", fontsize=5,
                transform=ax.transAxes, wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=6, pad=2)
    for spine in ax.spines.values():
        spine.set_visible(ground_truth or image is None)
        spine.set_color(GROUND_TRUTH_COLOUR if ground_truth else "#999999")
        spine.set_linewidth(2.5 if ground_truth else 0.5)
    if ground_truth:
        ax.set_xlabel("ground truth", fontsize=6, fontweight="bold", labelpad=1)


def _wrap(text: str, width: int, max_lines: int | None = None) -> str:
    import textwrap

    lines = textwrap.wrap(str(text), width=width)
    if max_lines is not None and len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1].rstrip(" .,;") + " …"
    return "\n".join(lines)


def _is_evaluation(source: Any) -> bool:
    return hasattr(source, "ranks") and hasattr(source, "results") and not isinstance(source, pd.DataFrame)


def _example_rows(ranks: pd.DataFrame, direction: str, episode: str | None, query_ids: Sequence[str] | None,
                  n_queries: int) -> pd.DataFrame:
    """Pick the example queries: the given ids, or queries spread from the best rank to the worst."""
    rows = ranks[ranks["direction"] == direction]
    if rows.empty:
        raise ValueError(f"the ranks have no {direction} rows")
    episode = episode or str(rows["episode"].iloc[0])
    rows = rows[rows["episode"].astype(str) == episode]
    if query_ids is not None:
        by_id = rows.set_index(rows["query_id"].astype(str))
        unknown = [query_id for query_id in query_ids if str(query_id) not in by_id.index]
        if unknown:
            raise ValueError(f"query ids not in the {direction} ranks of episode {episode}: {unknown[:5]}")
        return by_id.loc[[str(query_id) for query_id in query_ids]].reset_index(drop=True)
    ordered = rows.sort_values(["rank", "query_id"], kind="stable").reset_index(drop=True)
    picks = np.unique(np.linspace(0, len(ordered) - 1, min(n_queries, len(ordered))).round().astype(int))
    return ordered.iloc[picks].reset_index(drop=True)


def _scores_by_query(source: Any, rows: pd.DataFrame, direction: str,
                     scores: pd.DataFrame | None) -> dict[str, list[float]]:
    """Return query id -> scores of its top five, from an Evaluation or a retrieval_examples frame."""
    if scores is None and _is_evaluation(source):
        from .retrieval import retrieval_examples

        scores = retrieval_examples(source, list(rows["query_id"].astype(str)), direction=direction,
                                    episode=str(rows["episode"].iloc[0]))
    if scores is None or scores.empty:
        return {}
    ordered = scores.sort_values(["query_id", "position"])
    return {str(query_id): list(group["score"]) for query_id, group in ordered.groupby("query_id")}


def plot_t2i_examples(ranks: pd.DataFrame | Any, dataset: Any, *, n_queries: int = 3,
                      query_ids: Sequence[str] | None = None, episode: str | None = None,
                      scores: pd.DataFrame | None = None, width: float = TWO_COLUMN_WIDTH_IN) -> Figure:
    """Show text-to-image examples: each query caption, its top five images with scores, the ground truth outlined.

    When the ground truth is not in the top five, it is drawn in a seventh
    column with its rank. Images come from the dataset items' ``path``; a
    missing file becomes a grey tile that names the image.

    Args:
        ranks: A ranks.csv frame, or the ``Evaluation`` of
            :func:`trsllava_utils.retrieval.evaluate`, which also gives the scores.
        dataset: The run's :class:`~trsllava_utils.data.Dataset`.
        n_queries: Number of queries when ``query_ids`` is None; they are spread
            over the ranks from best to worst, so hits and misses both show.
        query_ids: Caption ids (``<image>#<position>``) to show, in order.
        episode: Episode to draw from; the first one by default (``all`` for
            the method, ``fold1`` for the oracle).
        scores: A :func:`~trsllava_utils.retrieval.retrieval_examples` frame for
            the scores when ``ranks`` is a plain frame. Without scores the tiles
            show the position only.
        width: Figure width in inches.

    Returns:
        The figure: per query, one text axis and six image axes (the last blank
        when the ground truth is in the top five).
    """
    ranks_df = ranks.ranks if _is_evaluation(ranks) else ranks
    rows = _example_rows(ranks_df, "t2i", episode, query_ids, n_queries)
    scores_of = _scores_by_query(ranks, rows, "t2i", scores)
    items = {item.image_id: item for item in dataset.items}
    n_columns = 1 + TOP_K_SHOWN + 1
    tile = (width - 1.9) / (TOP_K_SHOWN + 1)
    with paper_style():
        fig = plt.figure(figsize=(width, len(rows) * (tile + 0.35)))
        grid = fig.add_gridspec(len(rows), n_columns, width_ratios=[1.9 / tile] + [1] * (TOP_K_SHOWN + 1))
        for row_number, row in enumerate(rows.to_dict("records")):
            retrieved = str(row["top5"]).split()
            query_scores = scores_of.get(str(row["query_id"]), [])
            text_ax = fig.add_subplot(grid[row_number, 0])
            text_ax.axis("off")
            text_ax.text(0, 1, f"“{_wrap(row['query_text'], 30, 6)}”", va="top", ha="left", fontsize=7,
                         transform=text_ax.transAxes)
            text_ax.text(0, 0, f"query {row['query_id']}\nground-truth rank {int(row['rank'])}", va="bottom",
                         ha="left", fontsize=6, color="#444444", transform=text_ax.transAxes)
            for position in range(TOP_K_SHOWN):
                ax = fig.add_subplot(grid[row_number, 1 + position])
                if position >= len(retrieved):
                    ax.axis("off")
                    continue
                image_id = retrieved[position]
                title = f"#{position + 1}"
                if position < len(query_scores):
                    title += f"  score {query_scores[position]:.3f}"
                _draw_tile(ax, items.get(image_id), title=title, ground_truth=image_id == row["ground_truth"])
            extra = fig.add_subplot(grid[row_number, n_columns - 1])
            if str(row["ground_truth"]) in retrieved[:TOP_K_SHOWN]:
                extra.axis("off")
            else:
                _draw_tile(extra, items.get(str(row["ground_truth"])), title=f"rank {int(row['rank'])}",
                           ground_truth=True)
        if not scores_of:
            fig.supxlabel("Scores are not stored in ranks.csv; pass the Evaluation to show them.", fontsize=6,
                          color="#444444")
    return fig


def plot_i2t_example(ranks: pd.DataFrame | Any, dataset: Any, *, image_id: str | None = None,
                     episode: str | None = None, scores: pd.DataFrame | None = None,
                     width: float = TWO_COLUMN_WIDTH_IN) -> Figure:
    """Show an image-to-text example: the image, and its top five captions with scores, its own captions marked.

    Args:
        ranks: A ranks.csv frame, or the ``Evaluation`` (which also gives the scores).
        dataset: The run's :class:`~trsllava_utils.data.Dataset`; captions are
            looked up from the gallery ids ``<image>#<position>``.
        image_id: The query image; by default the median-rank image of the episode.
        episode: Episode to draw from; the first one by default.
        scores: A :func:`~trsllava_utils.retrieval.retrieval_examples` frame
            (image to text) for the scores when ``ranks`` is a plain frame.
        width: Figure width in inches.

    Returns:
        The figure: the image axis and one text axis listing the captions.
    """
    ranks_df = ranks.ranks if _is_evaluation(ranks) else ranks
    rows = _example_rows(ranks_df, "i2t", episode, [image_id] if image_id else None, 3)
    row = rows.iloc[len(rows) // 2].to_dict()
    scores_of = _scores_by_query(ranks, pd.DataFrame([row]), "i2t", scores)
    query_scores = scores_of.get(str(row["query_id"]), [])
    items = {item.image_id: item for item in dataset.items}
    retrieved = str(row["top5"]).split()
    blocks = []
    for position, text_id in enumerate(retrieved):
        owner, _, number = text_id.partition("#")
        item = items.get(owner)
        known = item is not None and number.isdigit() and int(number) < len(item.captions)
        caption = item.captions[int(number)] if known else text_id
        own = owner == str(row["ground_truth"])
        score = f"  score {query_scores[position]:.3f}" if position < len(query_scores) else ""
        source = "✓ own caption" if own else f"caption of {owner}"
        blocks.append((_wrap(f"#{position + 1}{score}  ({source})  “{caption}”", 95, 3), own))
    height = 2.4
    line_height = 6.5 * 1.3 / 72 / (height - 0.3)
    with paper_style():
        fig, (image_ax, text_ax) = plt.subplots(1, 2, figsize=(width, height), width_ratios=[1, 2.8])
        _draw_tile(image_ax, items.get(str(row["ground_truth"])), title=f"query image {row['ground_truth']}",
                   ground_truth=False)
        query_text = str(row["query_text"]).split(" | ")[0]
        image_ax.set_xlabel(f"its query text: “{_wrap(query_text, 45, 3)}”", fontsize=5.5, labelpad=2)
        text_ax.axis("off")
        text_ax.text(0, 1, f"Top {len(retrieved)} captions; the image's best own caption is at rank {int(row['rank'])}",
                     fontsize=7, fontweight="bold", va="top", transform=text_ax.transAxes)
        y = 1 - 2 * line_height
        for text, own in blocks:
            text_ax.text(0.01, y, text, fontsize=6.5, va="top", transform=text_ax.transAxes,
                         fontweight="bold" if own else "normal",
                         bbox={"edgecolor": GROUND_TRUTH_COLOUR, "facecolor": "none", "linewidth": 1.5,
                               "boxstyle": "square,pad=0.25"} if own else None)
            y -= (text.count("\n") + 1) * line_height + 0.06
        if not query_scores:
            fig.supxlabel("Scores are not stored in ranks.csv; pass the Evaluation to show them.", fontsize=6,
                          color="#444444")
    return fig
