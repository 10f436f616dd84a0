"""RSRT records: the rich-text description of one image.

One JSON object per line: ``{"image": <id>, "variants": [{"one_sentence",
"feature", "caption"} x N], "model": <name>, ...}``. A record is checked when
it is written and when it is read: N variants, no empty field, no duplicate
variants after normalising case and white space. Files are appended one
record at a time and flushed, so an interrupted run resumes where it stopped.
A torn last line is dropped with a warning.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .params import RSRT_FIELDS

logger = logging.getLogger(__name__)


class RecordError(ValueError):
    """An RSRT record that breaks the format; the message names the image and the field."""


def normalise_text(text: str) -> str:
    """Lower-case ``text`` and collapse white space, for duplicate checks."""
    return re.sub(r"\s+", " ", text).strip().lower()


def image_key(image: str) -> str:
    """Return the file name of an image reference: ``test/boat_0.tif`` gives ``boat_0.tif``."""
    return Path(str(image).replace("\\", "/")).name


@dataclass
class RSRTRecord:
    """The RSRT description of one image: N variants of three text fields."""

    image: str
    variants: list[dict[str, str]]
    model: str = "unknown"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Return the record as the JSON object written to a line."""
        return {"image": self.image, "variants": self.variants, "model": self.model, **self.extra}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> "RSRTRecord":
        """Build a record from a parsed JSON object (not yet validated)."""
        if not isinstance(obj, dict):
            raise RecordError(f"expected a JSON object, got {type(obj).__name__}")
        if "image" not in obj or "variants" not in obj:
            raise RecordError(f"record lacks 'image' or 'variants' (keys: {sorted(obj)})")
        extra = {k: v for k, v in obj.items() if k not in ("image", "variants", "model")}
        return cls(image=str(obj["image"]), variants=obj["variants"], model=str(obj.get("model", "unknown")),
                   extra=extra)


def validate_record(record: RSRTRecord, n_variants: int | None = None) -> None:
    """Raise :class:`RecordError` unless the record is well formed.

    Checks: ``variants`` is a non-empty list of objects whose three text fields
    are non-empty strings. No two variants are equal after
    :func:`normalise_text`. When ``n_variants`` is given, the record has at
    least that many variants.
    """
    where = f"image {record.image!r}"
    if not isinstance(record.variants, list) or not record.variants:
        raise RecordError(f"{where}: 'variants' must be a non-empty list")
    if n_variants is not None and len(record.variants) < n_variants:
        raise RecordError(f"{where}: {len(record.variants)} variants, expected {n_variants}")
    seen: dict[tuple[str, ...], int] = {}
    for number, variant in enumerate(record.variants, start=1):
        if not isinstance(variant, dict):
            raise RecordError(f"{where}, variant {number}: expected an object, got {type(variant).__name__}")
        for name in RSRT_FIELDS:
            value = variant.get(name)
            if not isinstance(value, str) or not value.strip():
                raise RecordError(f"{where}, variant {number}: field '{name}' is missing or empty")
        key = tuple(normalise_text(variant[name]) for name in RSRT_FIELDS)
        if key in seen:
            raise RecordError(f"{where}: variant {number} repeats variant {seen[key]}")
        seen[key] = number


def variant_texts(variant: dict[str, str], fields: Iterable[str], mode: str = "joined") -> list[str]:
    """Return the database texts of one variant.

    ``mode="joined"`` joins the chosen fields, in record order, into one text;
    ``mode="per_field"`` gives each chosen field as its own text.
    """
    chosen = [name for name in RSRT_FIELDS if name in set(fields)]
    parts = [variant[name].strip() for name in chosen]
    if mode == "joined":
        return [" ".join(parts)]
    if mode == "per_field":
        return parts
    raise ValueError(f"unknown text mode {mode!r}; allowed: 'joined', 'per_field'")


def record_texts(record: RSRTRecord, fields: Iterable[str], mode: str = "joined",
                 n_variants: int | None = None) -> list[str]:
    """Return the database texts of a record's first ``n_variants`` variants."""
    fields = list(fields)
    variants = record.variants if n_variants is None else record.variants[:n_variants]
    texts: list[str] = []
    for variant in variants:
        texts.extend(variant_texts(variant, fields, mode))
    return texts


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for each line of a JSON Lines file.

    A torn last line (no newline at the end and not valid JSON), left by an
    interrupted writer, is skipped with a warning. A bad line elsewhere raises
    :class:`RecordError` naming the file and the line.
    """
    path = Path(path)
    with path.open("r", encoding="utf-8") as handle:
        lines = handle.readlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as exc:
            is_last = number == len(lines)
            if is_last and not line.endswith("\n"):
                logger.warning("%s: dropped a torn last line %d (an interrupted write): %s", path, number, exc)
                continue
            raise RecordError(f"{path}, line {number}: not valid JSON: {exc}") from None


def read_records(path: str | os.PathLike, n_variants: int | None = None) -> list[RSRTRecord]:
    """Read and validate every record of an RSRT JSON Lines file.

    Raises :class:`RecordError` naming the file, the line and the problem.
    When an image appears twice, the later record wins with a warning, since
    a resumed run may rewrite an image.
    """
    records: dict[str, RSRTRecord] = {}
    for number, obj in iter_jsonl(path):
        try:
            record = RSRTRecord.from_json(obj)
            validate_record(record, n_variants)
        except RecordError as exc:
            raise RecordError(f"{path}, line {number}: {exc}") from None
        if record.image in records:
            logger.warning("%s, line %d: image %r appears again; keeping the later record", path, number, record.image)
        records[record.image] = record
    return list(records.values())


def truncate_torn_tail(path: str | os.PathLike) -> None:
    """Cut a torn last line off a JSON Lines file, so appends start on a fresh line."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return
    cut = data.rfind(b"\n") + 1
    logger.warning("%s: dropped a torn last line (%d bytes) before resuming", path, len(data) - cut)
    with path.open("r+b") as handle:
        handle.truncate(cut)


class JsonlAppender:
    """Append JSON objects to a file, one line each, flushed and synced per line."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        truncate_torn_tail(self.path)
        self._handle = self.path.open("a", encoding="utf-8")

    def write(self, obj: dict[str, Any]) -> None:
        """Append one object as one line and push it to disk."""
        self._handle.write(json.dumps(obj, ensure_ascii=False) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        """Close the file."""
        self._handle.close()

    def __enter__(self) -> "JsonlAppender":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def write_records(path: str | os.PathLike, records: Iterable[RSRTRecord], n_variants: int | None = None) -> int:
    """Validate and write records to a new JSON Lines file; return how many."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            validate_record(record, n_variants)
            handle.write(json.dumps(record.to_json(), ensure_ascii=False) + "\n")
            count += 1
    return count
