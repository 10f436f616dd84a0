"""Readers for the caption file formats of remote-sensing image-text retrieval.

Four formats are read, and :func:`detect_format` recognises each from the
file's name and first characters:

- ``json``: a JSON list of ``{"image": ..., "caption": [...]}`` records, one
  per image. A record whose ``caption`` is a single string contains one caption,
  and records of the same image are then grouped (the layout of the
  ALBEF-style train files);
- ``precomp``: ``<split>_caps.txt`` and ``<split>_filename.txt``. Line *i* of
  the filename file names the image of caption *i* (test splits), or it names
  one image whose *k* captions are lines *k·i* to *k·i + k - 1* of the caption
  file (train splits);
- ``karpathy``: ``{"images": [{"filename", "split", "sentences": [{"raw"}]}]}``,
  the format of the original RSICD, UCM-captions and Sydney-captions releases;
  one split is selected;
- ``csv``: a CSV (or tab-separated) file with an image column and a caption
  column, one caption per row, or a cell that contains a list of captions.

Every reader returns a :class:`ParseResult`: one :class:`ParsedImage` per
image in order of first appearance, captions in file order, and a count of
every record or caption it skipped. Structural faults raise
:class:`DatasetError` with the file, the record or line and the fix.
"""

from __future__ import annotations

import ast
import csv
import io
import json
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .rsrt import image_key

logger = logging.getLogger(__name__)

FORMATS: tuple[str, ...] = ("json", "precomp", "karpathy", "csv")
"""Caption file formats; ``caption_format="auto"`` detects one of them."""

MAX_LISTED = 10
"""Detailed warnings kept per kind of problem; the rest are counted in one summary line."""

FORMAT_HELP = ('a JSON list of {"image", "caption"} records, Karpathy-style JSON with an "images" list, '
               "precomp <split>_caps.txt with <split>_filename.txt, or CSV with image and caption columns")

IMAGE_COLUMNS = ("image", "filename", "file_name", "image_name", "img", "file", "path", "image_path")
CAPTION_COLUMNS = ("caption", "captions", "sentence", "sentences", "text", "raw")
LABEL_COLUMNS = ("label_name", "label", "class", "class_name", "scene")


class DatasetError(ValueError):
    """A caption file or dataset that cannot be used; the message names the file, the record and the fix."""


@dataclass
class ParsedImage:
    """One image as read from a caption file, before paths are resolved."""

    image: str
    captions: list[str]
    label: str | None
    where: str


@dataclass
class ParseResult:
    """Images read from one caption file, with the counts the load report needs."""

    format: str
    source: Path
    images: list[ParsedImage]
    records_read: int
    skipped: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    layout: str | None = None


class Problems:
    """Collect skipped items and warnings; list the first :data:`MAX_LISTED` of each kind."""

    def __init__(self) -> None:
        self.skipped: Counter[str] = Counter()
        self.warnings: list[str] = []
        self._unlisted: Counter[str] = Counter()

    def skip(self, kind: str, message: str) -> None:
        """Count one skipped item of ``kind`` and keep its message while few of that kind were seen."""
        self.skipped[kind] += 1
        if self.skipped[kind] <= MAX_LISTED:
            self.warnings.append(message)
        else:
            self._unlisted[kind] += 1

    def finish(self) -> tuple[dict[str, int], list[str]]:
        """Return the skip counts and the warnings, with one summary line per kind cut short."""
        warnings = list(self.warnings)
        for kind, count in self._unlisted.items():
            warnings.append(f"... and {count} more '{kind}' warnings (all {self.skipped[kind]} are counted)")
        for message in warnings:
            logger.warning(message)
        return dict(self.skipped), warnings


def label_from_value(value: Any) -> str | None:
    """Return a scene label given in a record, or None when the value is missing or empty."""
    if value is None or isinstance(value, bool):
        return None
    text = str(value).strip()
    return text or None


class _Grouper:
    """Group captions by image id in order of first appearance and catch conflicting duplicates."""

    def __init__(self, source: Path, problems: Problems) -> None:
        self.source = source
        self.problems = problems
        self.images: dict[str, ParsedImage] = {}
        self._complete: set[str] = set()

    def clean(self, captions: list[Any], image: str, where: str, numbered: bool = True) -> list[str]:
        """Return the text captions, stripped; count and report empty and non-text ones."""
        kept = []
        for position, caption in enumerate(captions, start=1):
            place = f"{self.source}: {where} (image '{image_key(image)}')"
            if numbered:
                place += f", caption {position}"
            if not isinstance(caption, str):
                self.problems.skip("non-text caption", f"{place}: {type(caption).__name__} value {caption!r} "
                                   "is not text, skipped; write the caption as a string or remove it")
            elif not caption.strip():
                self.problems.skip("empty caption", f"{place}: empty caption, skipped; write the caption "
                                   "or remove it")
            else:
                kept.append(caption.strip())
        return kept

    def add_complete(self, image: str, captions: list[Any], label: str | None, where: str) -> None:
        """Add a record that lists all captions of one image."""
        key = image_key(image)
        cleaned = self.clean(captions, image, where)
        if key in self.images:
            first = self.images[key]
            if first.captions == cleaned:
                self.problems.skip("duplicate record", f"{self.source}: {where} repeats image '{key}' of "
                                   f"{first.where} with the same captions, skipped; remove the repeat")
                return
            raise DatasetError(f"{self.source}: image '{key}' is listed twice with conflicting captions "
                               f"({first.where} and {where}); remove one of the two records or merge "
                               "their captions into one")
        self.images[key] = ParsedImage(image, cleaned, label, where)
        self._complete.add(key)

    def add_caption(self, image: str, caption: Any, label: str | None, where: str) -> None:
        """Add one caption of an image; captions of the same image are appended in file order."""
        key = image_key(image)
        cleaned = self.clean([caption], image, where, numbered=False)
        if key not in self.images:
            self.images[key] = ParsedImage(image, cleaned, label, where)
            return
        if key in self._complete:
            raise DatasetError(f"{self.source}: {where} adds a caption to image '{key}', which "
                               f"{self.images[key].where} already lists with all its captions; keep one "
                               "layout per image")
        self.images[key].captions.extend(cleaned)
        if self.images[key].label is None:
            self.images[key].label = label

    def result(self, format_name: str, records_read: int, layout: str | None = None) -> ParseResult:
        """Drop images left without captions (counted) and return the parse result."""
        kept = []
        for parsed in self.images.values():
            if parsed.captions:
                kept.append(parsed)
            else:
                self.problems.skip("image without captions", f"{self.source}: {parsed.where} (image "
                                   f"'{image_key(parsed.image)}') has no usable caption, image skipped")
        skipped, warnings = self.problems.finish()
        return ParseResult(format_name, self.source, kept, records_read, skipped, warnings, layout)


# ----------------------------------------------------------------------------- detection


def precomp_pair(path: Path, split: str) -> tuple[Path, Path]:
    """Return the caption and filename files of a precomp split given either file or their folder."""
    if path.is_dir():
        return path / f"{split}_caps.txt", path / f"{split}_filename.txt"
    name = path.name
    if "_caps" in name:
        return path, path.with_name(_replace_last(name, "_caps", "_filename"))
    if "_filename" in name:
        return path.with_name(_replace_last(name, "_filename", "_caps")), path
    raise DatasetError(f"{path}: a precomp caption file is named <split>_caps.txt (with <split>_filename.txt "
                       "beside it); rename the files or pass the folder that contains them")


def _replace_last(text: str, old: str, new: str) -> str:
    head, _, tail = text.rpartition(old)
    return head + new + tail


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason}); save the file as "
                           "UTF-8") from None


def detect_format(path: Path) -> str:
    """Return the caption format of ``path`` from its name and first characters.

    Raises:
        DatasetError: if the file matches none of :data:`FORMATS`.
    """
    if path.is_dir():
        return "precomp"
    name = path.name.lower()
    if name.endswith(".txt") and ("_caps" in name or "_filename" in name):
        return "precomp"
    if path.suffix.lower() in (".csv", ".tsv"):
        return "csv"
    with path.open("rb") as handle:
        head = handle.read(4096).decode("utf-8-sig", errors="replace")
    stripped = head.lstrip()
    if stripped.startswith("["):
        return "json"
    if stripped.startswith("{"):
        # A JSON object is Karpathy-style only with an "images" list; check the parsed keys.
        obj = _load_json(path)
        if isinstance(obj, dict) and "images" in obj:
            return "karpathy"
        keys = sorted(obj)[:8] if isinstance(obj, dict) else []
        raise DatasetError(f"{path}: unknown caption format: a JSON object with keys {keys} and no 'images' "
                           f"list. Expected {FORMAT_HELP}; set caption_format to force a format")
    first_line = stripped.splitlines()[0] if stripped else ""
    if _csv_delimiter(first_line) is not None:
        return "csv"
    raise DatasetError(f"{path}: unknown caption format (first line {first_line[:80]!r}). Expected "
                       f"{FORMAT_HELP}; set caption_format to force a format")


def _csv_delimiter(header: str) -> str | None:
    """Return the delimiter under which ``header`` names an image and a caption column, else None."""
    for delimiter in (",", "\t", ";"):
        columns = [c.strip().lower() for c in next(csv.reader([header], delimiter=delimiter), [])]
        if any(c in IMAGE_COLUMNS for c in columns) and any(c in CAPTION_COLUMNS for c in columns):
            return delimiter
    return None


def _load_json(path: Path) -> Any:
    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}; "
                           "fix the file or download it again") from None


# ----------------------------------------------------------------------------- readers


def read_json_list(path: Path) -> ParseResult:
    """Read a JSON list of ``{"image", "caption"}`` records (``caption`` a list, or one string)."""
    records = _load_json(path)
    if not isinstance(records, list):
        raise DatasetError(f"{path}: expected a JSON list of {{\"image\", \"caption\"}} records, found a "
                           f"{type(records).__name__}; set caption_format='karpathy' or 'auto' for other layouts")
    grouper = _Grouper(path, Problems())
    for index, record in enumerate(records):
        where = f"record [{index}]"
        if not isinstance(record, dict):
            raise DatasetError(f"{path}: {where} is a {type(record).__name__}, expected an object with "
                               "'image' and 'caption'; fix the record or remove it")
        if not isinstance(record.get("image"), str) or not record["image"].strip():
            raise DatasetError(f"{path}: {where} has no 'image' file name (keys: {sorted(record)}); "
                               "add the image's file name or remove the record")
        caption_key = "caption" if "caption" in record else "captions"
        if caption_key not in record:
            raise DatasetError(f"{path}: {where} (image '{image_key(record['image'])}') has no 'caption' "
                               f"(keys: {sorted(record)}); add its captions or remove the record")
        label = label_from_value(record.get("label_name")) or _text_label(record.get("label"))
        captions = record[caption_key]
        if isinstance(captions, list):
            grouper.add_complete(record["image"], captions, label, where)
        else:
            grouper.add_caption(record["image"], captions, label, where)
    return grouper.result("json", len(records))


def _text_label(value: Any) -> str | None:
    # Integer labels are class indices without names; only text labels name a class.
    return label_from_value(value) if isinstance(value, str) else None


def _read_lines(path: Path) -> list[str]:
    """Return the lines of a text file without line ends; a final line end adds no empty line."""
    if not path.is_file():
        raise DatasetError(f"precomp file not found: {path}; a precomp split needs both <split>_caps.txt "
                           "and <split>_filename.txt in one folder")
    text = _read_text(path)
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r") for line in lines]


def read_precomp(path: Path, split: str) -> ParseResult:
    """Read a precomp split: captions and file names, one name per caption or one per image."""
    caps_path, names_path = precomp_pair(path, split)
    captions = _read_lines(caps_path)
    names = _read_lines(names_path)
    for number, name in enumerate(names, start=1):
        if not name.strip():
            raise DatasetError(f"{names_path}: line {number} is empty; every line must name an image file")
    if not names:
        raise DatasetError(f"{names_path}: no file names; check that the file is the right split")

    grouper = _Grouper(caps_path, Problems())
    if len(captions) == len(names):
        layout = "one filename line per caption (test-split layout)"
        for number, (caption, name) in enumerate(zip(captions, names, strict=True), start=1):
            grouper.add_caption(name.strip(), caption, None, f"line {number}")
    elif len(captions) % len(names) == 0 and len(set(names)) == len(names):
        per_image = len(captions) // len(names)
        layout = f"one filename line per image, {per_image} captions each (train-split layout)"
        for index, name in enumerate(names):
            start = index * per_image
            grouper.add_complete(name.strip(), captions[start:start + per_image], None,
                                 f"lines {start + 1}-{start + per_image}")
    else:
        raise DatasetError(f"{caps_path} has {len(captions)} captions but {names_path} has {len(names)} lines "
                           f"({len(set(names))} distinct names); expected equal counts (one file name per "
                           "caption) or a multiple of distinct names (one file name per image). Check that "
                           "both files come from the same split and neither is cut short")
    logger.info("%s: %s", caps_path, layout)
    return grouper.result("precomp", len(captions), layout)


def read_karpathy(path: Path, split: str) -> ParseResult:
    """Read the images of one split from a Karpathy-style JSON file."""
    data = _load_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        found = type(data).__name__ if not isinstance(data, dict) else f"an object with keys {sorted(data)[:8]}"
        raise DatasetError(f"{path}: expected Karpathy-style JSON, an object with an 'images' list, found "
                           f"{found}; set caption_format='auto' to detect the format")
    problems = Problems()
    grouper = _Grouper(path, problems)
    splits: Counter[str] = Counter()
    for index, record in enumerate(data["images"]):
        where = f"images[{index}]"
        if not isinstance(record, dict) or not isinstance(record.get("filename"), str):
            raise DatasetError(f"{path}: {where} has no 'filename'; each entry of 'images' needs "
                               "'filename', 'split' and 'sentences'")
        record_split = str(record.get("split", ""))
        splits[record_split] += 1
        if record_split != split:
            continue
        sentences = record.get("sentences")
        if not isinstance(sentences, list):
            raise DatasetError(f"{path}: {where} (image '{record['filename']}') has no 'sentences' list; "
                               "add its captions as [{\"raw\": ...}] or remove the entry")
        captions = [s.get("raw") if isinstance(s, dict) else s for s in sentences]
        image = record["filename"]
        if isinstance(record.get("filepath"), str) and record["filepath"]:
            image = f"{record['filepath']}/{image}"
        label = label_from_value(record.get("label_name")) or _text_label(record.get("label"))
        grouper.add_complete(image, captions, label, where)
    _count_other_splits(splits, split, problems, f"{path}: no images of split {split!r}; the file has",
                        "images")
    return grouper.result("karpathy", len(data["images"]))


def read_csv(path: Path, split: str) -> ParseResult:
    """Read a CSV or tab-separated file with an image column and a caption column.

    A caption cell that contains a list literal (``['a', 'b']``) gives several
    captions. When the file has a ``split`` column, only rows of ``split`` are read.
    """
    text = _read_text(path)
    first_line = text.split("\n", 1)[0].rstrip("\r")
    delimiter = _csv_delimiter(first_line)
    if delimiter is None:
        header = [c.strip().strip('"').lower() for c in re.split(r"[,\t;]", first_line)]
        has_image = any(c in IMAGE_COLUMNS for c in header)
        missing = [] if has_image else [f"an image column ({', '.join(IMAGE_COLUMNS)})"]
        if not any(c in CAPTION_COLUMNS for c in header):
            missing.append(f"a caption column ({', '.join(CAPTION_COLUMNS)})")
        raise DatasetError(f"{path}: line 1 {first_line[:120]!r} lacks {' and '.join(missing)}; "
                           "rename the header columns")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = [c.strip().lower() for c in next(reader)]
    image_col = next(header.index(c) for c in IMAGE_COLUMNS if c in header)
    caption_col = next(header.index(c) for c in CAPTION_COLUMNS if c in header)
    label_col = next((header.index(c) for c in LABEL_COLUMNS if c in header), None)
    split_col = header.index("split") if "split" in header else None

    problems = Problems()
    grouper = _Grouper(path, problems)
    rows = 0
    splits: Counter[str] = Counter()
    for row in reader:
        number = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        rows += 1
        if len(row) != len(header):
            raise DatasetError(f"{path}: line {number} has {len(row)} fields, the header has {len(header)}; "
                               "quote captions that contain the delimiter")
        if split_col is not None:
            splits[row[split_col]] += 1
            if row[split_col] != split:
                continue
        image = row[image_col].strip()
        if not image:
            raise DatasetError(f"{path}: line {number} has an empty '{header[image_col]}'; add the image's "
                               "file name or remove the row")
        label = label_from_value(row[label_col]) if label_col is not None else None
        cell = row[caption_col]
        captions = _list_cell(cell)
        if captions is None:
            grouper.add_caption(image, cell, label, f"line {number}")
        else:
            grouper.add_complete(image, captions, label, f"line {number}")
    if split_col is not None:
        _count_other_splits(splits, split, problems,
                            f"{path}: no rows of split {split!r}; the split column has", "rows")
    return grouper.result("csv", rows)


def _count_other_splits(splits: Counter[str], split: str, problems: Problems, missing_message: str,
                        unit: str) -> None:
    """Raise when ``split`` is absent, else count the entries of other splits as skipped.

    Entries of other splits are left out on purpose; counting them keeps the
    load report adding up.
    """
    if split not in splits:
        present = ", ".join(f"{name!r} ({count})" for name, count in sorted(splits.items()))
        raise DatasetError(f"{missing_message} {present}. Set split to one of these")
    other = sum(count for name, count in splits.items() if name != split)
    if other:
        problems.skipped[f"{unit} of other splits than {split!r}"] = other


def _list_cell(cell: str) -> list[Any] | None:
    """Return the captions of a cell written as a list literal, or None for a plain caption."""
    stripped = cell.strip()
    if not (stripped.startswith("[") and stripped.endswith("]")):
        return None
    try:
        value = ast.literal_eval(stripped)
    except (ValueError, SyntaxError):
        return None
    return value if isinstance(value, list) else None


def read_captions(path: Path, split: str, caption_format: str = "auto") -> ParseResult:
    """Read a caption file in ``caption_format`` (``"auto"`` detects it).

    Raises:
        DatasetError: if the file is missing, of unknown format, or malformed.
    """
    if caption_format != "auto" and caption_format not in FORMATS:
        raise DatasetError(f"unknown caption_format {caption_format!r}; allowed: 'auto', "
                           f"{', '.join(repr(f) for f in FORMATS)}")
    if not path.exists():
        raise DatasetError(f"captions file not found: {path}; check the path")
    chosen = detect_format(path) if caption_format == "auto" else caption_format
    if chosen == "json":
        return read_json_list(path)
    if chosen == "precomp":
        return read_precomp(path, split)
    if chosen == "karpathy":
        return read_karpathy(path, split)
    return read_csv(path, split)


NAME_LABEL = re.compile(r"^([A-Za-z]+(?:_[A-Za-z]+)*)_\d+\.[A-Za-z0-9]+$")
"""RSITMD and RSICD file names: the scene class, an underscore, a number (``storagetanks_12.tif``)."""


def label_from_name(image: str) -> str | None:
    """Return the scene class of a file name like ``boat_0.tif``, or None for names like ``00001.jpg``."""
    match = NAME_LABEL.match(image_key(image))
    return match.group(1).lower() if match else None
