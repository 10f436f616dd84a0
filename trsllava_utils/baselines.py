"""Published retrieval results on RSITMD and RSICD, kept as data beside the runs.

The rows live in ``published_results.csv`` in this package, one row per
(method, dataset, reported value): the method, its backbone where the value
names one, the dataset (``"rsitmd"`` or ``"rsicd"``), mR in percent, the kind
of method, the citation the value comes from, and whether the value is
approximate. The kinds are:

- ``supervised``: trained or fine-tuned on the benchmark's training split;
- ``zero-shot``: a pretrained image-text model used without training on the
  benchmark;
- ``training-free``: no model is trained; text-to-text matching of
  VLM-written descriptions, the method this workbook reproduces.

Every published value is on the standard test splits (RSITMD 452 images,
RSICD 1093 images, five captions each); runs on other splits are not
comparable with them.

NOTE: only the sources of the CLIP ViT-B/32 rows (RS5M Table II, and the
abstract of Beyond Pixels) and of the RSITMD text-to-text row name a table or
page. The ``source`` of the other rows names only the paper that introduced
the method, so check the table in that paper before citing a value from them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pandas as pd

logger = logging.getLogger(__name__)

PUBLISHED_FILE = Path(__file__).with_name("published_results.csv")
"""The package data file with the published results."""

Kind = Literal["supervised", "zero-shot", "training-free"]
KINDS: tuple[str, ...] = ("supervised", "zero-shot", "training-free")
DATASETS: tuple[str, ...] = ("rsitmd", "rsicd")
COLUMNS: tuple[str, ...] = ("method", "backbone", "dataset", "mR", "kind", "source", "approximate")


@dataclass(frozen=True)
class PublishedResult:
    """One published mR value (percent) with its source."""

    method: str
    backbone: str
    dataset: str
    mR: float
    kind: Kind
    source: str
    approximate: bool = False

    @property
    def display_name(self) -> str:
        """The method with its backbone, e.g. ``"CLIP ViT-B/32"``."""
        return f"{self.method} {self.backbone}".strip()


def _load_published(path: Path = PUBLISHED_FILE) -> list[PublishedResult]:
    frame = pd.read_csv(path, dtype={"backbone": str}, keep_default_na=False)
    missing = [name for name in COLUMNS if name not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}; expected {list(COLUMNS)}")
    rows: list[PublishedResult] = []
    for line, record in enumerate(frame.to_dict("records"), start=2):
        if record["kind"] not in KINDS:
            raise ValueError(f"{path}, line {line}: kind {record['kind']!r} is not one of {KINDS}")
        if record["dataset"] not in DATASETS:
            raise ValueError(f"{path}, line {line}: dataset {record['dataset']!r} is not one of {DATASETS}")
        approximate = str(record["approximate"]).strip().lower()
        if approximate not in ("true", "false"):
            raise ValueError(f"{path}, line {line}: approximate must be true or false, got {approximate!r}")
        rows.append(PublishedResult(method=record["method"], backbone=record["backbone"],
                                    dataset=record["dataset"], mR=float(record["mR"]), kind=record["kind"],
                                    source=record["source"], approximate=approximate == "true"))
    return rows


PUBLISHED: list[PublishedResult] = _load_published()
"""Every published result, in file order."""


def published_results(dataset: str | None = None) -> pd.DataFrame:
    """Return the published results as a table, optionally for one dataset.

    Args:
        dataset: ``"rsitmd"`` or ``"rsicd"`` (any case), or None for both. Any
            other name, such as ``"demo"``, returns an empty table with the same
            columns, because nothing is published on that split.

    Returns:
        One row per published value with the columns ``method``, ``backbone``,
        ``dataset``, ``mR`` (percent), ``kind``, ``source``, ``approximate`` and
        ``display_name``, in file order.
    """
    rows = PUBLISHED
    if dataset is not None:
        rows = [row for row in rows if row.dataset == dataset.lower()]
    frame = pd.DataFrame([{**{name: getattr(row, name) for name in COLUMNS}, "display_name": row.display_name}
                          for row in rows], columns=[*COLUMNS, "display_name"])
    return frame.reset_index(drop=True)
