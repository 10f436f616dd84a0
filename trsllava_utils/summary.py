"""Run summaries: one row per run, written as CSV, Markdown and LaTeX (booktabs).

:func:`collect_runs` reads every ``<output_root>/<run_name>/metrics.json``
into one table sorted by the ablation axes; :func:`write_summary` writes
``summary.csv``, ``summary.md`` and ``summary.tex`` beside the runs; and
:func:`format_markdown` gives the Markdown text that the batch runner prints.

Rows are grouped so that a reader never mixes them up: published results
(supervised, zero-shot, training-free) first, then this workbook's
training-free runs, then the human-holdout oracle runs, labelled as an upper
bound. Recalls and mR are percentages, each shown with its 95% bootstrap
interval.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from .baselines import published_results

logger = logging.getLogger(__name__)

AXES: tuple[str, ...] = ("dataset", "oracle", "embedding_model", "db_fields", "db_text_mode", "n_variants",
                         "aggregation")
"""The ablation axes, in sort order."""

META_COLUMNS: tuple[str, ...] = ("run_name", "dataset", "split", "captioner", "oracle", "label", "embedding_model",
                                 "db_fields", "db_text_mode", "n_variants", "aggregation")
"""The columns before the metrics, in table order."""

EXTRA_COLUMNS: tuple[str, ...] = ("n_images", "n_captions", "created", "git_commit")
"""The columns after the metrics and their intervals."""

AXIS_HEADERS: dict[str, str] = {"embedding_model": "Embedding", "db_fields": "DB fields",
                                "db_text_mode": "Text mode", "n_variants": "N", "aggregation": "Agg."}
"""Table headers of the axes that can vary between runs of one dataset."""

GROUP_TITLES: dict[str, str] = {
    "published supervised": "Published: supervised",
    "published zero-shot": "Published: zero-shot",
    "published training-free": "Published: training-free",
    "run": "This workbook: training-free runs",
    "oracle": "This workbook: human-holdout oracle (upper bound, not the method)",
}
"""Row groups in table order, with their titles."""

ORACLE_SUFFIX = " (upper bound)"
DASH = "–"

_RECALL_KEY = re.compile(r"^(t2i|i2t)_R@(\d+)$")


class MetricsFileError(ValueError):
    """A ``metrics.json`` that breaks the schema; the message names the file and the key."""


def metric_keys(keys: Iterable[str]) -> list[str]:
    """Order recall keys as tables show them: text to image by K, image to text by K, then mR.

    Keys that are neither ``t2i_R@K``, ``i2t_R@K`` nor ``mR`` are left out.
    """
    recalls = []
    for key in set(keys):
        match = _RECALL_KEY.match(key)
        if match:
            recalls.append((0 if match.group(1) == "t2i" else 1, int(match.group(2)), key))
    ordered = [key for _, _, key in sorted(recalls)]
    if "mR" in set(keys):
        ordered.append("mR")
    return ordered


def metric_header(key: str) -> str:
    """Return the table header of a metric key: ``t2i_R@1`` gives ``T→I R@1``."""
    match = _RECALL_KEY.match(key)
    if not match:
        return key
    direction = "T→I" if match.group(1) == "t2i" else "I→T"
    return f"{direction} R@{match.group(2)}"


def load_metrics(path: str | os.PathLike) -> dict[str, Any]:
    """Read one ``metrics.json`` and check the keys the summary needs.

    Raises:
        MetricsFileError: the file is not valid JSON, lacks a required key, or
            reports its recalls in another unit than percent.
    """
    path = Path(path)
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise MetricsFileError(f"{path}: not valid JSON ({exc}); rerun the retrieval notebook for this run") from None
    if not isinstance(metrics, dict):
        raise MetricsFileError(f"{path}: expected a JSON object, got {type(metrics).__name__}")
    for key in ("run_name", "params", "dataset", "metrics"):
        if key not in metrics:
            raise MetricsFileError(f"{path}: missing key '{key}'; the file does not follow the metrics.json schema")
    unit = metrics.get("unit", "percent")
    if unit != "percent":
        raise MetricsFileError(f"{path}: unit is {unit!r}; the summary expects recalls in 'percent'")
    if "mR" not in metrics["metrics"]:
        raise MetricsFileError(f"{path}: 'metrics' lacks 'mR' (keys: {sorted(metrics['metrics'])})")
    return metrics


def metrics_row(metrics: dict[str, Any]) -> dict[str, Any]:
    """Flatten one metrics.json dict into a summary row (metric columns and ``<key>_lo``/``<key>_hi``)."""
    params = metrics.get("params", {})
    dataset = metrics.get("dataset", {})
    embedding = metrics.get("models", {}).get("embedding", {})
    oracle = bool(metrics.get("oracle", params.get("captioner") == "human-holdout"))
    fields = params.get("db_fields") or []
    row: dict[str, Any] = {
        "run_name": metrics["run_name"],
        "dataset": dataset.get("name", params.get("dataset")),
        "split": dataset.get("split", params.get("split")),
        "captioner": params.get("captioner"),
        "oracle": oracle,
        "label": metrics.get("label") or ("human-holdout oracle (upper bound)" if oracle
                                          else "method (training-free)"),
        "embedding_model": params.get("embedding_model") or embedding.get("name"),
        "db_fields": "+".join(fields),
        "db_text_mode": params.get("db_text_mode"),
        "n_variants": params.get("n_variants"),
        "aggregation": params.get("aggregation"),
    }
    ci95 = metrics.get("ci95") or {}
    for key in metric_keys(metrics["metrics"]):
        row[key] = float(metrics["metrics"][key])
        # bootstrap_samples = 0 writes [null, null]: no interval, not a broken file.
        low, high = ci95.get(key) or (None, None)
        row[f"{key}_lo"] = math.nan if low is None else float(low)
        row[f"{key}_hi"] = math.nan if high is None else float(high)
    row.update({"n_images": dataset.get("n_images"), "n_captions": dataset.get("n_captions"),
                "created": metrics.get("created"), "git_commit": metrics.get("git_commit")})
    return row


def _ordered_columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    keys = metric_keys({key for row in rows for key in row})
    metric_columns = list(keys)
    interval_columns = [f"{key}_{bound}" for key in keys for bound in ("lo", "hi")]
    return [*META_COLUMNS, *metric_columns, *interval_columns, *EXTRA_COLUMNS]


def sort_runs(df: pd.DataFrame) -> pd.DataFrame:
    """Sort runs by the ablation axes, then by run name, with a stable sort."""
    if df.empty:
        return df
    order = [axis for axis in AXES if axis in df.columns] + ["run_name"]
    return df.sort_values(order, kind="mergesort", na_position="last").reset_index(drop=True)


def collect_runs(output_root: str | os.PathLike, *, strict: bool = False) -> pd.DataFrame:
    """Read every run's metrics.json under ``output_root`` into one table.

    Args:
        output_root: The outputs folder, with one folder per run.
        strict: Raise on the first unreadable metrics.json. When False, such a
            file is skipped with a logged warning, and the skipped paths are in
            ``df.attrs["skipped"]``, so one broken run does not hide a night of
            ablations.

    Returns:
        One row per run folder with a metrics.json, columns in a stable order:
        the run and its axes (:data:`META_COLUMNS`), every recall key and mR,
        their ``<key>_lo`` and ``<key>_hi`` interval bounds, then
        :data:`EXTRA_COLUMNS`. Sorted by :data:`AXES` and run name. Folders
        without a metrics.json (such as ``cache/``) are ignored.

    Raises:
        FileNotFoundError: ``output_root`` is not a folder.
        MetricsFileError: with ``strict``, the first broken metrics.json.
    """
    root = Path(output_root)
    if not root.is_dir():
        raise FileNotFoundError(f"outputs folder not found: {root}; run a notebook or the batch runner first")
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    for path in sorted(root.glob("*/metrics.json")):
        try:
            rows.append(metrics_row(load_metrics(path)))
        except (MetricsFileError, TypeError, ValueError) as exc:
            if strict:
                raise
            logger.warning("skipped %s: %s", path, exc)
            skipped.append(str(path))
    if skipped:
        logger.warning("skipped %d of %d metrics.json files under %s", len(skipped), len(rows) + len(skipped), root)
    df = pd.DataFrame(rows, columns=_ordered_columns(rows))
    if not df.empty:
        df["oracle"] = df["oracle"].astype(bool)
    df = sort_runs(df)
    df.attrs["skipped"] = skipped
    return df


# Formatting ------------------------------------------------------------------------------------------------------


def format_value(value: float, low: float = math.nan, high: float = math.nan, *, approximate: bool = False,
                 latex: bool = False) -> str:
    """Format a percentage with its 95% interval: ``42.62 [40.1, 45.3]``.

    A missing value gives a dash, and a missing interval is left out. An
    approximate value gets ``≈`` (``$\\approx$`` in LaTeX).
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "--" if latex else DASH
    text = f"{value:.2f}"
    if approximate:
        text = ("$\\approx$" if latex else "≈") + text
    if low is not None and high is not None and not (math.isnan(low) or math.isnan(high)):
        interval = f"[{low:.1f}, {high:.1f}]"
        text += f" {{\\scriptsize {interval}}}" if latex else f" {interval}"
    return text


def _row_group(row: pd.Series) -> str:
    return "oracle" if bool(row["oracle"]) else "run"


def _run_label(row: pd.Series) -> str:
    return f"{row['run_name']}{ORACLE_SUFFIX}" if bool(row["oracle"]) else str(row["run_name"])


def _varying_axes(runs: pd.DataFrame) -> list[str]:
    """Axes with more than one value among the training-free runs (oracle rows have no RSRT axes)."""
    method_runs = runs[~runs["oracle"].astype(bool)] if not runs.empty else runs
    varying = []
    for axis in AXIS_HEADERS:
        if axis in method_runs.columns and method_runs[axis].astype(str).nunique() > 1:
            varying.append(axis)
    return varying


def _common_settings(runs: pd.DataFrame, varying: Sequence[str]) -> str:
    method_runs = runs[~runs["oracle"].astype(bool)]
    parts = []
    for axis, header in AXIS_HEADERS.items():
        if axis in varying or method_runs.empty:
            continue
        parts.append(f"{header} = {method_runs[axis].iloc[0]}")
    return ", ".join(parts)


def table_rows(runs: pd.DataFrame, published: pd.DataFrame | None) -> list[tuple[str, dict[str, Any]]]:
    """Build the rows of one dataset's table as ``(group, cells)`` pairs in group order.

    Cells contain raw values: ``name``, each varying axis, each metric as a
    ``(value, low, high, approximate)`` tuple, and ``source``.
    """
    keys = metric_keys(runs.columns) if not runs.empty else ["mR"]
    varying = _varying_axes(runs) if not runs.empty else []
    rows: list[tuple[str, dict[str, Any]]] = []
    if published is not None:
        for kind in ("supervised", "zero-shot", "training-free"):
            for record in published[published["kind"] == kind].to_dict("records"):
                cells: dict[str, Any] = {"name": record["display_name"], "source": record["source"]}
                cells.update({axis: None for axis in varying})
                cells.update({key: (math.nan, math.nan, math.nan, False) for key in keys})
                cells["mR"] = (record["mR"], math.nan, math.nan, bool(record["approximate"]))
                rows.append((f"published {kind}", cells))
    for group in ("run", "oracle"):
        for _, row in runs.iterrows():
            if _row_group(row) != group:
                continue
            cells = {"name": _run_label(row), "source": f"this workbook ({row['captioner']})"}
            for axis in varying:
                cells[axis] = None if group == "oracle" and axis in ("db_fields", "db_text_mode", "n_variants") \
                    else row[axis]
            for key in keys:
                cells[key] = (row.get(key, math.nan), row.get(f"{key}_lo", math.nan),
                              row.get(f"{key}_hi", math.nan), False)
            rows.append((group, cells))
    return rows


def _dataset_title(runs: pd.DataFrame, dataset: str) -> str:
    if runs.empty:
        return dataset
    split = runs["split"].iloc[0]
    n_images = runs["n_images"].dropna()
    size = f", {int(n_images.iloc[0])} images" if len(n_images) and n_images.nunique() == 1 else ""
    return f"{dataset} ({split}{size})"


def _published_for(dataset: str, with_baselines: bool) -> pd.DataFrame | None:
    if not with_baselines:
        return None
    published = published_results(dataset)
    return published if not published.empty else None


# Markdown ---------------------------------------------------------------------------------------------------------


def _markdown_cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return DASH
    return str(value).replace("|", "\\|")


def _markdown_table(runs: pd.DataFrame, published: pd.DataFrame | None) -> list[str]:
    keys = metric_keys(runs.columns) if not runs.empty else ["mR"]
    varying = _varying_axes(runs) if not runs.empty else []
    headers = ["Method / run", *(AXIS_HEADERS[axis] for axis in varying), *(metric_header(k) for k in keys),
               "Source"]
    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join([":---"] * (1 + len(varying)) + ["---:"] * len(keys) + [":---"]) + "|"]
    current_group = None
    for group, cells in table_rows(runs, published):
        if group != current_group:
            # A bold title row separates the groups, so oracle rows never read as method rows.
            lines.append("| **" + GROUP_TITLES[group] + "** |" + " |" * (len(headers) - 1))
            current_group = group
        row = [_markdown_cell(cells["name"]), *(_markdown_cell(cells[axis]) for axis in varying),
               *(format_value(*cells[key][:3], approximate=cells[key][3]) for key in keys),
               _markdown_cell(cells["source"])]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def format_markdown(df: pd.DataFrame, *, with_baselines: bool = False) -> str:
    """Format the runs as Markdown tables, one per dataset, grouped as described in the module docstring.

    Args:
        df: The table from :func:`collect_runs`.
        with_baselines: Add the published results of each dataset beside its
            runs, and a table of published results on datasets without runs.

    Returns:
        Markdown text; recalls and mR in percent with ``[low, high]`` 95%
        bootstrap intervals. An empty table gives a one-line note.
    """
    if df.empty:
        return "No runs with a metrics.json were found.\n"
    lines: list[str] = []
    for dataset, runs in df.groupby("dataset", sort=True):
        runs = runs.reset_index(drop=True)
        varying = _varying_axes(runs)
        lines.append(f"### {_dataset_title(runs, str(dataset))}")
        lines.append("")
        lines.extend(_markdown_table(runs, _published_for(str(dataset), with_baselines)))
        lines.append("")
        notes = ["R@K and mR in percent; 95% bootstrap intervals over queries in brackets."]
        common = _common_settings(runs, varying)
        if common:
            notes.append(f"Common settings of the training-free runs: {common}.")
        if runs["oracle"].any():
            notes.append("Oracle rows use held-out human captions as the database text: an upper bound on "
                         "text-to-text matching, not a result of the method.")
        if with_baselines and _published_for(str(dataset), True) is None:
            notes.append("No published results exist for this split; published results use the RSITMD and "
                         "RSICD test splits.")
        lines.extend([" ".join(notes), ""])
    if with_baselines:
        lines.extend(_markdown_other_published(set(df["dataset"].astype(str))))
    return "\n".join(lines).rstrip() + "\n"


def _markdown_other_published(datasets_with_runs: set[str]) -> list[str]:
    published = published_results()
    other = published[~published["dataset"].isin(datasets_with_runs)]
    if other.empty:
        return []
    lines = ["### Published results on datasets without runs here", "",
             "| Method | Dataset | Kind | mR | Source |", "|:---|:---|:---|---:|:---|"]
    for record in other.to_dict("records"):
        value = format_value(record["mR"], approximate=bool(record["approximate"]))
        lines.append(f"| {record['display_name']} | {record['dataset']} | {record['kind']} | {value} | "
                     f"{record['source']} |")
    lines.extend(["", "mR in percent on the standard test splits; ≈ marks an approximate value.", ""])
    return lines


# LaTeX ------------------------------------------------------------------------------------------------------------

_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: Any) -> str:
    """Escape LaTeX special characters in ``text``."""
    return "".join(_LATEX_SPECIAL.get(char, char) for char in str(text))


def _latex_cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "--"
    return latex_escape(value)


def _latex_header(key: str) -> str:
    match = _RECALL_KEY.match(key)
    if not match:
        return latex_escape(key)
    arrow = r"T$\to$I" if match.group(1) == "t2i" else r"I$\to$T"
    return f"{arrow} R@{match.group(2)}"


def _latex_table(runs: pd.DataFrame, published: pd.DataFrame | None, dataset: str) -> list[str]:
    keys = metric_keys(runs.columns) if not runs.empty else ["mR"]
    varying = _varying_axes(runs) if not runs.empty else []
    n_columns = 2 + len(varying) + len(keys)
    spec = "l" + "l" * len(varying) + "r" * len(keys) + "l"

    caption = (f"Retrieval on {latex_escape(_dataset_title(runs, dataset))}: R@K and mR in percent, "
               r"95\% bootstrap intervals over queries in brackets.")
    common = _common_settings(runs, varying) if not runs.empty else ""
    if common:
        caption += f" Common settings: {latex_escape(common)}."
    if not runs.empty and runs["oracle"].any():
        caption += " Oracle rows are an upper bound (held-out human captions), not the method."

    lines = [r"\begin{table*}[t]", r"\centering", r"\small", r"\setlength{\tabcolsep}{3pt}",
             f"\\caption{{{caption}}}", f"\\label{{tab:summary-{latex_escape(dataset)}}}",
             f"\\begin{{tabular}}{{{spec}}}", r"\toprule",
             " & ".join(["Method / run", *(AXIS_HEADERS[axis] for axis in varying),
                         *(_latex_header(key) for key in keys), "Source"]) + r" \\",
             r"\midrule"]

    current_group = None
    for group, cells in table_rows(runs, published):
        if group != current_group:
            if current_group is not None:
                lines.append(r"\midrule")
            lines.append(f"\\multicolumn{{{n_columns}}}{{l}}{{\\emph{{{latex_escape(GROUP_TITLES[group])}}}}} \\\\")
            current_group = group
        row = [_latex_cell(cells["name"]), *(_latex_cell(cells[axis]) for axis in varying),
               *(format_value(*cells[key][:3], approximate=cells[key][3], latex=True) for key in keys),
               _latex_cell(cells["source"])]
        lines.append(" & ".join(row) + r" \\")
    lines.extend([r"\bottomrule", r"\end{tabular}", r"\end{table*}", ""])
    return lines


def format_latex(df: pd.DataFrame, *, with_baselines: bool = True) -> str:
    """Format the runs as LaTeX booktabs tables (``table*``), one per dataset.

    The output needs ``\\usepackage{booktabs}`` in the preamble. Rows are
    grouped under italic group titles separated by ``\\midrule``.
    """
    lines = ["% Run summary written by trsllava_utils.summary; needs \\usepackage{booktabs}.", ""]
    if df.empty:
        lines.append("% No runs with a metrics.json were found.")
        return "\n".join(lines) + "\n"
    for dataset, runs in df.groupby("dataset", sort=True):
        lines.extend(_latex_table(runs.reset_index(drop=True), _published_for(str(dataset), with_baselines),
                                  str(dataset)))
    if with_baselines:
        lines.extend(_latex_other_published(set(df["dataset"].astype(str))))
    return "\n".join(lines)


def _latex_other_published(datasets_with_runs: set[str]) -> list[str]:
    published = published_results()
    other = published[~published["dataset"].isin(datasets_with_runs)]
    if other.empty:
        return []
    lines = [r"\begin{table}[t]", r"\centering", r"\small",
             r"\caption{Published mR (percent) on the standard test splits; $\approx$ marks an approximate value.}",
             r"\label{tab:published}", r"\begin{tabular}{lllrl}", r"\toprule",
             r"Method & Dataset & Kind & mR & Source \\", r"\midrule"]
    for record in other.to_dict("records"):
        value = format_value(record["mR"], approximate=bool(record["approximate"]), latex=True)
        lines.append(" & ".join([latex_escape(record["display_name"]), latex_escape(record["dataset"]),
                                 latex_escape(record["kind"]), value, latex_escape(record["source"])]) + r" \\")
    lines.extend([r"\bottomrule", r"\end{tabular}", r"\end{table}", ""])
    return lines


# Files ------------------------------------------------------------------------------------------------------------


def write_summary(df: pd.DataFrame, output_root: str | os.PathLike, *,
                  with_baselines: bool = True) -> dict[str, Path]:
    """Write ``summary.csv``, ``summary.md`` and ``summary.tex`` into ``output_root``.

    The CSV contains the runs only, one row per run with every column of
    :func:`collect_runs` (full precision, intervals as ``<key>_lo`` and
    ``<key>_hi``). The Markdown and LaTeX files add the published results
    beside the runs when ``with_baselines`` is set.

    Returns:
        The written paths under the keys ``"csv"``, ``"md"`` and ``"tex"``.
    """
    root = Path(output_root)
    root.mkdir(parents=True, exist_ok=True)
    paths = {"csv": root / "summary.csv", "md": root / "summary.md", "tex": root / "summary.tex"}
    df.to_csv(paths["csv"], index=False)
    markdown = "# Run summary\n\n" + format_markdown(df, with_baselines=with_baselines)
    paths["md"].write_text(markdown, encoding="utf-8")
    paths["tex"].write_text(format_latex(df, with_baselines=with_baselines), encoding="utf-8")
    logger.info("wrote the summary of %d runs to %s", len(df), ", ".join(str(p) for p in paths.values()))
    return paths


def ablation_slice(runs: pd.DataFrame, reference: dict[str, Any], axes: Sequence[str]) -> pd.DataFrame:
    """Select the runs that differ from ``reference`` only along ``axes``.

    The rows keep ``reference``'s dataset, split and oracle flag, and its
    value on every ablation axis not listed, so a figure over ``axes`` never
    mixes two settings of another axis in one point. Runs with the same
    settings under other names (a grid often repeats the default run) appear
    once: the reference run if it is among them, else the first by name.

    Args:
        runs: The table of :func:`collect_runs`.
        reference: A row of that table (or :func:`metrics_row` of a run).
        axes: The ablation axes allowed to vary, e.g. ``["n_variants", "aggregation"]``.
    """
    if runs.empty:
        return runs
    fixed = ["dataset", "split", "oracle", *[axis for axis in AXES if axis not in axes]]
    keep = pd.Series(True, index=runs.index)
    for column in fixed:
        if column in runs.columns and column in reference:
            keep &= runs[column].astype(str) == str(reference[column])
    selected = runs[keep]
    is_reference = selected["run_name"] != reference.get("run_name")
    selected = selected.assign(_order=is_reference).sort_values(["_order", "run_name"], kind="mergesort")
    settings = [axis for axis in AXES if axis in selected.columns]
    selected = selected.drop_duplicates(settings).drop(columns="_order")
    return sort_runs(selected)
