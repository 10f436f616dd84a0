"""Project, data and output folders."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
"""Root of the workbook checkout (the folder that contains ``notebooks/``)."""

DATA_ENV_VAR = "TRSLLAVA_DATA"


def resolve_data_root(explicit: str | os.PathLike | None = None) -> Path:
    """Return the folder that contains the datasets.

    The order is: ``explicit``, else the ``TRSLLAVA_DATA`` environment
    variable, else ``../shared/data`` beside the project when it exists, else
    ``data/`` inside the project, where the download command writes.
    """
    if explicit:
        return Path(explicit).expanduser().resolve()
    from_env = os.environ.get(DATA_ENV_VAR)
    if from_env:
        return Path(from_env).expanduser().resolve()
    shared = PROJECT_ROOT.parent / "shared" / "data"
    if shared.is_dir():
        return shared
    return PROJECT_ROOT / "data"


def resolve_output_root(explicit: str | os.PathLike | None = None) -> Path:
    """Return the outputs folder: ``explicit`` (relative to the project) or ``outputs/``."""
    if explicit is None:
        return PROJECT_ROOT / "outputs"
    path = Path(explicit).expanduser()
    return path if path.is_absolute() else PROJECT_ROOT / path


def run_dir(run_name: str, output_root: str | os.PathLike | None = None) -> Path:
    """Return ``<outputs>/<run_name>/``, created if missing."""
    path = resolve_output_root(output_root) / run_name
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_dir(output_root: str | os.PathLike | None = None) -> Path:
    """Return the embedding cache folder shared by all runs, created if missing."""
    path = resolve_output_root(output_root) / "cache"
    path.mkdir(parents=True, exist_ok=True)
    return path
