"""The precomputed backend: RSRT records read from an existing file, and the run's copy of them."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from ..data import Dataset
from ..rsrt import RecordError, RSRTRecord, image_key, read_records, validate_record

logger = logging.getLogger(__name__)

RSRT_FILENAME = "rsrt.jsonl"
"""Name of a run's RSRT records file inside ``outputs/<run_name>/``."""


def precomputed_records(dataset: Dataset, rsrt_file: str | os.PathLike | None,
                        n_variants: int) -> list[RSRTRecord]:
    """Read an existing RSRT file and return one record per dataset image, in dataset order.

    Records are matched to images by file name (:func:`~trsllava_utils.rsrt.image_key`),
    so ``images/00001.jpg`` in the file matches image ``00001.jpg``. Each record keeps
    its first ``n_variants`` variants, its ``image`` becomes the dataset's image id, and
    ``extra["source"]`` names the file it came from. Records of images outside the
    dataset are left out and counted in a log line.

    Args:
        dataset: The images to describe.
        rsrt_file: The RSRT JSON Lines file; ``None`` uses the file registered with
            the dataset (``dataset.rsrt_file``).
        n_variants: Variants kept per record; every record must have at least this many.

    Returns:
        One validated record per image of ``dataset``.

    Raises:
        FileNotFoundError: No file was given and none is registered, or the file is missing.
        RecordError: A line of the file is invalid, has fewer than ``n_variants``
            variants, or some images have no record (the message names them).
    """
    path = Path(rsrt_file) if rsrt_file is not None else dataset.rsrt_file
    if path is None:
        raise FileNotFoundError(f"dataset {dataset.name!r} has no registered RSRT file; set the "
                                f"'rsrt_file' parameter, or caption the images with captioner "
                                f"'transformers' or 'openai'")
    if not path.is_file():
        raise FileNotFoundError(f"RSRT file not found: {path}; check the 'rsrt_file' parameter")
    if n_variants < 1:
        raise ValueError(f"n_variants must be at least 1, got {n_variants}")

    by_key: dict[str, RSRTRecord] = {}
    for record in read_records(path, n_variants=n_variants):
        by_key[image_key(record.image)] = record

    missing = [item.image_id for item in dataset.items if item.image_id not in by_key]
    if missing:
        raise RecordError(f"{path}: {len(missing)} of {dataset.n_images} images of dataset "
                          f"{dataset.name!r} have no record, for example {missing[:5]}; use an RSRT "
                          f"file that covers the dataset, or caption the images")
    dataset_ids = {item.image_id for item in dataset.items}
    extra_keys = sorted(set(by_key) - dataset_ids)
    if extra_keys:
        logger.info("%s: left out %d records of images outside dataset %r (for example %s)",
                    path, len(extra_keys), dataset.name, extra_keys[:3])

    records = []
    for item in dataset.items:
        source = by_key[item.image_id]
        extra = {**source.extra, "source": str(path)}
        records.append(RSRTRecord(image=item.image_id, variants=[dict(v) for v in source.variants[:n_variants]],
                                  model=source.model, extra=extra))
    return records


def write_run_records(records: Sequence[RSRTRecord], out_path: str | os.PathLike, *,
                      n_variants: int | None = None, **tags: str) -> Path:
    """Validate records and write them as a run's RSRT file, replacing any earlier one.

    The file is written to a temporary name and renamed into place, so a crash
    never leaves a half-written run file. ``tags`` (for example
    ``captioner="precomputed"``) are added to every record; a record's own
    ``model`` is kept.

    Args:
        records: Records to write, usually from :func:`precomputed_records`.
        out_path: The run's file, usually ``run_dir(run_name) / RSRT_FILENAME``.
        n_variants: When given, every record must have at least this many variants.
        **tags: Extra string fields added to every line.

    Returns:
        The path written.

    Raises:
        RecordError: A record is invalid; nothing is written then.
    """
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for record in records:
        validate_record(record, n_variants)
        lines.append(json.dumps({**record.to_json(), **tags}, ensure_ascii=False))
    tmp_path = out_path.with_name(out_path.name + ".tmp")
    with tmp_path.open("w", encoding="utf-8") as handle:
        handle.write("".join(line + "\n" for line in lines))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp_path, out_path)
    logger.info("wrote %d RSRT records to %s", len(lines), out_path)
    return out_path
