"""Command line: run the captioning step of one parameters file.

    python -m trsllava_utils.captioning --params params/demo_minilm.yaml [--limit N]

Writes into ``<output_root>/<run_name>/`` exactly what notebook 01 writes,
and resumes an interrupted run.
"""

from __future__ import annotations

import argparse
import logging
import sys

from ..data import load_dataset_from_params
from ..params import ParamsError, load_params
from ..paths import run_dir
from .workflow import caption_dataset


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the step, print its report; return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m trsllava_utils.captioning",
                                     description="Write the RSRT records (and image queries) of a run.")
    parser.add_argument("--params", required=True, help="YAML parameters file of the run")
    parser.add_argument("--limit", type=int, default=None, help="caption only the first N images")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--log-level", default="INFO", help="logging level (default: INFO)")
    args = parser.parse_args(argv)

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        params = load_params(args.params)
    except ParamsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    dataset = load_dataset_from_params(params)
    folder = run_dir(params.run_name, params.output_root)
    report = caption_dataset(params, dataset, folder, limit=args.limit, show_progress=not args.no_progress)
    print(report)
    return 0 if report.rsrt.n_failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
