"""Run the numbered notebooks with papermill, one run per parameters set.

Usage::

    python -m trsllava_utils.batch params/demo_minilm.yaml params/ablations/
    python -m trsllava_utils.batch params/ablations/demo_variants.yaml --dry-run

Each argument is a YAML file or a folder of them. A file whose values hold
lists is a grid: every combination becomes one run (see :func:`expand_grid`).
For each run the notebooks in ``notebooks/`` execute in order with the same
parameters; the executed copies go to ``outputs/<run_name>/notebooks/``. A
failing notebook stops its run and the batch goes on; the exit code is 1 when
any run failed. At the end ``outputs/summary.{csv,md,tex}`` get one row per
run in the output folder.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import logging
import os
import sys
import time
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .params import ParamsError, RunParams, notebook_params, read_params_file, validate_params
from .paths import PROJECT_ROOT, resolve_output_root

logger = logging.getLogger(__name__)

NOTEBOOK_DIR = PROJECT_ROOT / "notebooks"
NOTEBOOKS: tuple[str, ...] = ("01_captioning", "02_embedding", "03_retrieval", "04_analysis")


def _is_list_field(key: str) -> bool:
    annotation = RunParams.model_fields[key].annotation if key in RunParams.model_fields else None
    return typing.get_origin(annotation) is list


def _axis_values(key: str, value: Any) -> list[Any] | None:
    """Return the swept values of ``key``, or None when ``value`` is one setting.

    A list sweeps a scalar key. A key whose own value is a list (``ks``,
    ``db_fields``) is swept only by a list of lists.
    """
    if not isinstance(value, list):
        return None
    if _is_list_field(key):
        return value if value and all(isinstance(v, list) for v in value) else None
    return value


def _name_part(value: Any) -> str:
    if isinstance(value, list):
        return "-".join(str(v) for v in value)
    return str(value).replace("/", "-")


def expand_grid(values: dict[str, Any], source: str = "grid") -> list[RunParams]:
    """Expand a mapping whose values may be lists into validated runs.

    Runs are named from ``run_name`` with ``{key}`` placeholders filled in,
    for example ``"{dataset}_{embedding_model}"``. A name without
    placeholders gets the swept values appended. Two runs with one name raise
    :class:`ParamsError`.
    """
    if not isinstance(values, dict):
        raise ParamsError(f"{source}: expected a mapping of parameter names to values")
    axes = {key: swept for key, value in values.items() if (swept := _axis_values(key, value)) is not None}
    if not axes:
        return [validate_params(values, source)]
    for key, swept in axes.items():
        if not swept:
            raise ParamsError(f"{source}: grid axis '{key}' has no values; list at least one value or remove the key")
    template = str(values.get("run_name", "run"))
    runs: list[RunParams] = []
    for combination in itertools.product(*axes.values()):
        run_values = dict(values)
        run_values.update(zip(axes, combination))
        fill = {key: _name_part(run_values[key]) for key in run_values}
        if "{" in template:
            try:
                name = template.format(**fill)
            except KeyError as exc:
                raise ParamsError(f"{source}: run_name template uses unknown key {exc}") from None
        else:
            name = "_".join([template, *(_name_part(v) for v in combination)])
        run_values["run_name"] = name
        runs.append(validate_params(run_values, f"{source} (run {name})"))
    names = [run.run_name for run in runs]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ParamsError(f"{source}: several runs share the name(s) {repeated}; "
                          f"add the swept keys to the run_name template")
    return runs


def collect_params(paths: Sequence[str | Path]) -> list[RunParams]:
    """Read every parameters file (folders give their ``*.yaml`` files, sorted) into runs."""
    runs: list[RunParams] = []
    for raw in paths:
        path = Path(raw)
        files = sorted(path.glob("*.yaml")) if path.is_dir() else [path]
        if path.is_dir() and not files:
            raise ParamsError(f"{path}: folder contains no .yaml parameters files")
        for file in files:
            runs.extend(expand_grid(read_params_file(file), str(file)))
    names = [run.run_name for run in runs]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ParamsError(f"several parameters files define the run(s) {repeated}; give each run its own run_name")
    return runs


def run_folder(params: RunParams) -> Path:
    """Return ``<output_root>/<run_name>`` (not created)."""
    return resolve_output_root(params.output_root) / params.run_name


def is_complete(params: RunParams) -> bool:
    """Return whether the run's ``metrics.json`` exists and was made with exactly these parameters."""
    metrics_path = run_folder(params) / "metrics.json"
    if not metrics_path.is_file():
        return False
    try:
        recorded = json.loads(metrics_path.read_text(encoding="utf-8")).get("params")
    except (json.JSONDecodeError, OSError):
        return False
    return recorded == notebook_params(params)


@dataclass
class RunOutcome:
    """The outcome of one run of a batch."""

    run_name: str
    status: str  # "done", "skipped" or "failed"
    seconds: float = 0.0
    error: str = ""
    notebook: Path | None = None
    executed: list[Path] = field(default_factory=list)


@contextlib.contextmanager
def _static_widgets():
    """Tell the notebooks' kernels (they inherit the environment) to render widgets as static views."""
    from .explorer import STATIC_ENV_VAR

    previous = os.environ.get(STATIC_ENV_VAR)
    os.environ[STATIC_ENV_VAR] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(STATIC_ENV_VAR, None)
        else:
            os.environ[STATIC_ENV_VAR] = previous


def execute_run(params: RunParams, notebooks: Sequence[str] = NOTEBOOKS, kernel_name: str = "python3",
                progress: bool = True, notebook_dir: Path = NOTEBOOK_DIR) -> RunOutcome:
    """Execute the notebooks of one run in order, stopping at the first failing notebook."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    folder = run_folder(params)
    executed_dir = folder / "notebooks"
    executed_dir.mkdir(parents=True, exist_ok=True)
    values = notebook_params(params)
    outcome = RunOutcome(run_name=params.run_name, status="done")
    start = time.perf_counter()
    for stem in notebooks:
        source = Path(notebook_dir) / f"{stem}.ipynb"
        target = executed_dir / f"{stem}.ipynb"
        logger.info("run %s: executing %s", params.run_name, source.name)
        try:
            with _static_widgets():
                papermill.execute_notebook(str(source), str(target), parameters=values, kernel_name=kernel_name,
                                           cwd=str(notebook_dir), progress_bar=progress)
        except PapermillExecutionError as exc:
            outcome.status = "failed"
            outcome.error = f"{exc.ename}: {exc.evalue}"
            outcome.notebook = target
            logger.error("run %s failed in %s: %s (executed notebook: %s)", params.run_name, source.name,
                         outcome.error, target)
            break
        outcome.executed.append(target)
    outcome.seconds = time.perf_counter() - start
    return outcome


def run_batch(runs: Sequence[RunParams], *, force: bool = False, notebooks: Sequence[str] = NOTEBOOKS,
              progress: bool = True, notebook_dir: Path = NOTEBOOK_DIR) -> list[RunOutcome]:
    """Execute each run unless it is complete (or ``force``), then write the summaries."""
    outcomes: list[RunOutcome] = []
    for number, params in enumerate(runs, start=1):
        if not force and is_complete(params):
            logger.info("[%d/%d] %s: skipped, metrics.json matches its parameters", number, len(runs),
                        params.run_name)
            outcomes.append(RunOutcome(params.run_name, "skipped"))
            continue
        logger.info("[%d/%d] %s: started", number, len(runs), params.run_name)
        outcome = execute_run(params, notebooks, progress=progress, notebook_dir=notebook_dir)
        logger.info("[%d/%d] %s: %s in %.1f s", number, len(runs), params.run_name, outcome.status,
                    outcome.seconds)
        outcomes.append(outcome)
    return outcomes


def write_batch_summary(runs: Sequence[RunParams]) -> tuple[dict[str, Path], str]:
    """Write ``summary.{csv,md,tex}`` over every run in the output folder; return the paths and this batch's table.

    The files cover all runs with a ``metrics.json``, so a batch of one run
    (or a failed batch) never hides the results of earlier batches. The
    returned Markdown shows only the runs of this batch.
    """
    from .summary import collect_runs, format_markdown, write_summary

    roots = sorted({str(resolve_output_root(run.output_root)) for run in runs})
    names = {run.run_name for run in runs}
    paths: dict[str, Path] = {}
    tables: list[str] = []
    for root in roots:
        frame = collect_runs(root)
        paths.update(write_summary(frame, root))
        this_batch = frame[frame["run_name"].isin(names)] if len(frame) else frame
        tables.append(format_markdown(this_batch))
    return paths, "\n\n".join(tables)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the batch command line and return its exit code."""
    parser = argparse.ArgumentParser(prog="python -m trsllava_utils.batch", description=__doc__.split("\n\n")[0])
    parser.add_argument("params", nargs="+", help="YAML parameters files, grid files or folders of them")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and whether each would be skipped")
    parser.add_argument("--force", action="store_true", help="re-run runs whose metrics.json already matches")
    parser.add_argument("--notebooks", default=",".join(NOTEBOOKS),
                        help="comma-separated notebook names to execute, in order (default: all four)")
    parser.add_argument("--no-progress", action="store_true", help="hide papermill's per-cell progress bars")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")

    try:
        runs = collect_params(args.params)
    except ParamsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    notebooks = [name.strip() for name in args.notebooks.split(",") if name.strip()]
    unknown = [name for name in notebooks if not (NOTEBOOK_DIR / f"{name}.ipynb").is_file()]
    if unknown:
        print(f"error: notebook(s) not found in {NOTEBOOK_DIR}: {unknown}; known: {list(NOTEBOOKS)}",
              file=sys.stderr)
        return 2

    if args.dry_run:
        for params in runs:
            state = "skip (complete)" if is_complete(params) and not args.force else "run"
            print(f"{params.run_name}\t{state}\t{run_folder(params)}")
        print(f"{len(runs)} run(s)")
        return 0

    outcomes = run_batch(runs, force=args.force, notebooks=notebooks, progress=not args.no_progress)
    paths, table = write_batch_summary(runs)
    print()
    print(table)
    print()
    for outcome in outcomes:
        line = f"{outcome.run_name}: {outcome.status}"
        if outcome.status == "done":
            line += f" in {outcome.seconds:.1f} s"
        if outcome.status == "failed":
            line += f": {outcome.error}\n    executed notebook: {outcome.notebook}"
        print(line)
    print("summary: " + ", ".join(str(p) for p in paths.values()))
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        print(f"{len(failed)} of {len(outcomes)} run(s) failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
