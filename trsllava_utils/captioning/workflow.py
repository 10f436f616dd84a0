"""The captioning step of a run, as notebook 01 and the command line call it."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from ..data import Dataset
from ..params import RSRT_FIELDS
from ..rsrt import image_key, read_records
from .base import Captioner, make_captioner
from .precomputed import RSRT_FILENAME
from .runner import (FAILURES_FILENAME, IMAGE_QUERIES_FILENAME, QUERY_FAILURES_FILENAME, CaptionReport,
                     run_captioning, run_image_queries)

if TYPE_CHECKING:
    from ..params import RunParams

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class StepReport:
    """The reports of a run's captioning step: RSRT records, and image queries when the run uses them."""

    rsrt: CaptionReport
    image_queries: CaptionReport | None = None

    def __str__(self) -> str:
        text = f"RSRT records: {self.rsrt}"
        if self.image_queries is not None:
            text += f"\nimage queries: {self.image_queries}"
        return text

    def _repr_pretty_(self, printer, cycle: bool) -> None:  # noqa: ANN001 - IPython's pretty printer
        printer.text(str(self))


def caption_dataset(params: "RunParams", dataset: Dataset, run_folder: str | os.PathLike, *,
                    captioner: Captioner | None = None, limit: int | None = None,
                    show_progress: bool = True) -> StepReport:
    """Run the captioning step of a run into ``run_folder``.

    Writes ``rsrt.jsonl`` and ``caption_failures.jsonl``, or
    ``holdout_folds.json`` for the ``human-holdout`` oracle. When
    ``image_query_source`` is ``"image_queries"``, it also writes
    ``image_queries.jsonl`` and ``image_query_failures.jsonl``. An image with
    a damaged reply is requested again up to ``max_retries`` more times, the
    same budget the openai backend uses for failed requests. Runs resume.

    Args:
        params: The run's parameters.
        dataset: The run's dataset.
        run_folder: ``outputs/<run_name>/``.
        captioner: A captioner built earlier (to reuse a loaded model); built
            from ``params`` when ``None`` and closed at the end.
        limit: Caption only the first ``limit`` images.
        show_progress: Show progress bars.
    """
    run_folder = Path(run_folder)
    own = captioner is None
    captioner = captioner or make_captioner(params)
    attempts = params.max_retries + 1
    try:
        rsrt = run_captioning(dataset, captioner, run_folder / RSRT_FILENAME, run_folder / FAILURES_FILENAME,
                              n_variants=params.n_variants, max_attempts=attempts, show_progress=show_progress,
                              limit=limit)
        queries = None
        if params.image_query_source == "image_queries":
            queries = run_image_queries(dataset, captioner, run_folder / IMAGE_QUERIES_FILENAME,
                                        run_folder / QUERY_FAILURES_FILENAME, max_attempts=attempts,
                                        show_progress=show_progress, limit=limit)
    finally:
        if own:
            captioner.close()
    return StepReport(rsrt=rsrt, image_queries=queries)


def show_record(params: "RunParams", dataset: Dataset, run_folder: str | os.PathLike,
                index: int = 0) -> pd.DataFrame:
    """Return one image's database texts as a table (one row per variant), and show the image in a notebook.

    For the ``human-holdout`` oracle the rows are the image's human captions,
    since those are its database texts.
    """
    item = dataset.items[index]
    if item.path is not None and Path(item.path).is_file():
        try:
            from IPython.display import display

            from .images import load_image_rgb

            image = load_image_rgb(item.path)
            image.thumbnail((256, 256))
            display(image)
        except ImportError:
            pass
    if params.is_oracle:
        table = pd.DataFrame({"caption": list(item.captions)},
                             index=[f"caption {k + 1}" for k in range(len(item.captions))])
        table.index.name = f"{item.image_id} (held-out human captions)"
        return table
    path = Path(run_folder) / RSRT_FILENAME
    records = {image_key(record.image): record for record in read_records(path)}
    if item.image_id not in records:
        raise KeyError(f"{path} has no record of image {item.image_id!r}; run the captioning step first")
    record = records[item.image_id]
    variants = record.variants[:params.n_variants]
    table = pd.DataFrame([{name: variant[name] for name in RSRT_FIELDS} for variant in variants],
                         index=[f"variant {k + 1}" for k in range(len(variants))])
    table.index.name = f"{item.image_id} ({record.model})"
    return table
