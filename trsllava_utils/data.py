"""Datasets: images with their human captions, read from the caption files of the field.

A :class:`Dataset` is one split: images in a stable order (first appearance in
the caption file), each with its captions in file order, an optional image
file and an optional scene label. :func:`load_dataset` reads a registered
dataset (:data:`REGISTRY`) or a ``custom`` captions file in any format of
:mod:`trsllava_utils.data_formats`, checks it, and records what it read and
skipped in a :class:`LoadReport`.

Command line::

    python -m trsllava_utils.data download rsitmd   # pinned public caption files into data/
    python -m trsllava_utils.data list              # image and caption counts of each registered split
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import textwrap
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from .data_formats import FORMATS, DatasetError, label_from_name, read_captions
from .paths import PROJECT_ROOT, resolve_data_root
from .rsrt import image_key

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from .params import RunParams

__all__ = ["CAPTIONS_PER_IMAGE", "DatasetError", "Dataset", "ImageItem", "LoadReport", "PRECOMP_FILES",
           "REGISTRY", "SplitFiles", "check_image_files", "load_dataset", "load_dataset_from_params",
           "show_examples", "summarize_dataset", "summary_table"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageItem:
    """One image of a dataset: its id, its human captions in file order, its file and scene label."""

    image_id: str
    captions: tuple[str, ...]
    path: Path | None = None
    label: str | None = None


@dataclass
class LoadReport:
    """Report of one load: what was read, found and skipped. Nothing is dropped without a count here.

    ``skipped`` maps a kind of problem (``"empty caption"``, ``"duplicate
    record"``, ...) to the number of captions, records or images it removed.
    """

    source: str
    format: str
    records_read: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    layout: str | None = None
    caption_counts: dict[int, int] = field(default_factory=dict)
    missing_images: list[str] = field(default_factory=list)
    images_checked: bool = False

    def describe(self) -> str:
        """Return the report as a few lines of text for a notebook or a log."""
        lines = [f"source: {self.source}", f"format: {self.format}"
                 + (f" ({self.layout})" if self.layout else ""), f"records read: {self.records_read}"]
        counts = ", ".join(f"{n} captions: {images} images" for n, images in sorted(self.caption_counts.items()))
        lines.append(f"captions per image: {counts or 'none'}")
        lines.append("skipped: " + (", ".join(f"{k}: {v}" for k, v in self.skipped.items()) or "nothing"))
        if self.images_checked:
            lines.append(f"missing or unreadable images: {len(self.missing_images)}")
        lines.extend(f"warning: {w}" for w in self.warnings)
        return "\n".join(lines)


@dataclass
class Dataset:
    """Images in a stable order, each with its captions; the unit every stage works on."""

    name: str
    split: str
    items: list[ImageItem]
    report: LoadReport
    rsrt_file: Path | None = None
    image_dir: Path | None = None
    usual_caption_count: int | None = None

    @property
    def n_images(self) -> int:
        """Number of images."""
        return len(self.items)

    @property
    def n_captions(self) -> int:
        """Number of human captions over all images."""
        return sum(len(item.captions) for item in self.items)

    @property
    def image_ids(self) -> list[str]:
        """Image ids in dataset order."""
        return [item.image_id for item in self.items]

    def captions_flat(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Return all captions, the index of each caption's image, and its position within the image."""
        texts: list[str] = []
        owners: list[int] = []
        positions: list[int] = []
        for index, item in enumerate(self.items):
            for position, caption in enumerate(item.captions):
                texts.append(caption)
                owners.append(index)
                positions.append(position)
        return texts, np.asarray(owners, dtype=np.int64), np.asarray(positions, dtype=np.int64)


class SplitFiles(NamedTuple):
    """Files of one registered split, relative to the data root."""

    captions: str
    images: str | None
    rsrt: str | None


REGISTRY: dict[str, dict[str, SplitFiles]] = {
    "demo": {"test": SplitFiles("demo/captions.json", "demo", "demo/rsrt.jsonl")},
    "rsitmd": {"test": SplitFiles("rsitmd/test.json", "rsitmd/images", None),
               "val": SplitFiles("rsitmd/val.json", "rsitmd/images", None)},
    "rsicd": {"test": SplitFiles("rsicd/test.json", "rsicd/images", None),
              "val": SplitFiles("rsicd/val.json", "rsicd/images", None)},
    # The UCM-captions and Sydney-captions releases ship one Karpathy-style
    # dataset.json for all splits. Their image folder imgs/ is read when images/ is absent.
    "ucm": {split: SplitFiles("ucm/dataset.json", "ucm/images", None) for split in ("train", "val", "test")},
    "sydney": {split: SplitFiles("sydney/dataset.json", "sydney/images", None)
               for split in ("train", "val", "test")},
}
"""Registered datasets: name, then split, then its files relative to the data root."""

PRECOMP_FILES: dict[str, dict[str, str]] = {
    "rsitmd": {"test": "rsitmd/precomp/test_caps.txt"},
    "rsicd": {"test": "rsicd/precomp/test_caps.txt"},
}
"""The same splits in the precomp text format, read with ``caption_format="precomp"``."""

NAME_LABELLED_DATASETS: frozenset[str] = frozenset({"rsitmd", "rsicd"})
"""Datasets whose image file names start with the scene class (``boat_0.tif`` is ``boat``)."""

CAPTIONS_PER_IMAGE: dict[str, int] = {"demo": 5, "rsitmd": 5, "rsicd": 5, "ucm": 5, "sydney": 5}
"""Captions per image in each registered dataset; other counts are reported as a warning."""


# ----------------------------------------------------------------------------- loading


def _resolve_user_path(value: str | os.PathLike, root: Path, what: str) -> Path:
    """Resolve a user path: absolute as given, else under the data root, the project, or the working folder."""
    path = Path(value).expanduser()
    candidates = [path] if path.is_absolute() else [root / path, PROJECT_ROOT / path, Path.cwd() / path]
    for candidate in candidates:
        if candidate.exists():
            return candidate
    if path.is_absolute():
        raise DatasetError(f"{what} not found: {path}; check the path")
    tried = ", ".join(str(c) for c in candidates)
    raise DatasetError(f"{what} not found: {value} (tried {tried}); give an absolute path or one "
                       "relative to the data root")


def _registered_files(name: str, split: str, root: Path, caption_format: str) -> tuple[Path, SplitFiles]:
    if name not in REGISTRY:
        known = ", ".join(sorted(REGISTRY) + ["custom"])
        raise DatasetError(f"unknown dataset {name!r}; registered datasets: {known}. Use 'custom' with "
                           "captions_file for other data")
    if split not in REGISTRY[name]:
        raise DatasetError(f"dataset {name!r} has no split {split!r}; registered splits: "
                           f"{', '.join(REGISTRY[name])}")
    files = REGISTRY[name][split]
    captions_rel = files.captions
    if caption_format == "precomp":
        if split not in PRECOMP_FILES.get(name, {}):
            raise DatasetError(f"dataset {name!r} split {split!r} has no registered precomp files; set "
                               "caption_format='auto' or pass captions_file")
        captions_rel = PRECOMP_FILES[name][split]
    return root / captions_rel, files


def _missing_registered_file(path: Path, name: str, split: str, root: Path) -> DatasetError:
    from .data_download import PINS

    relative = path.relative_to(root)
    fix = (f"Run `python -m trsllava_utils.data download {name}`, or point" if name in PINS
           else f"Place your copy at {path}, or point")
    return DatasetError(f"captions file not found: {path} (dataset {name!r}, split {split!r}). {fix} "
                        f"data_root or TRSLLAVA_DATA at the folder that contains {relative}")


def _registered_image_dir(root: Path, relative: str | None) -> Path | None:
    """Return a registered image folder, or its ``imgs`` sibling when only that one exists."""
    if relative is None:
        return None
    folder = root / relative
    fallback = folder.with_name("imgs")
    if not folder.is_dir() and fallback.is_dir():
        return fallback
    return folder


def _resolve_image_path(image_dir: Path, image: str) -> Path:
    """Return the file of ``image`` under ``image_dir``, as written or by file name alone.

    Caption files name images with a split folder (``test/boat_0.tif``) while
    image folders are usually flat, so the bare file name is the fallback,
    and the returned path when neither exists.
    """
    relative = Path(image.replace("\\", "/"))
    if relative.is_absolute():
        return relative
    as_written = image_dir / relative
    if as_written.is_file():
        return as_written
    return image_dir / relative.name


def check_image_files(items: list[ImageItem]) -> list[tuple[str, str]]:
    """Open every image file with PIL; return ``(image_id, problem)`` for each missing or unreadable one."""
    from PIL import Image, UnidentifiedImageError
    from tqdm.auto import tqdm

    problems = []
    for item in tqdm(items, desc="checking images", unit="image", leave=False):
        if item.path is None:
            problems.append((item.image_id, "no image folder"))
        elif not item.path.is_file():
            problems.append((item.image_id, "not found"))
        else:
            try:
                with Image.open(item.path) as image:
                    image.verify()
            except (OSError, SyntaxError, ValueError, UnidentifiedImageError) as exc:
                problems.append((item.image_id, f"unreadable: {exc}"))
    return problems


def load_dataset(name: str, split: str = "test", data_root: str | os.PathLike | None = None, *,
                 captions_file: str | os.PathLike | None = None, image_dir: str | os.PathLike | None = None,
                 caption_format: str = "auto", require_images: bool = False,
                 check_images: bool = False) -> Dataset:
    """Load one split of a registered dataset, or of a ``custom`` captions file.

    Args:
        name: A key of :data:`REGISTRY`, or ``"custom"`` with ``captions_file``.
        split: The split to load; it also selects the split of Karpathy files,
            of CSV files with a ``split`` column, and of precomp folders.
        data_root: Folder that contains the datasets (see :func:`~trsllava_utils.paths.resolve_data_root`).
        captions_file: Caption file (or precomp folder) to read; for a
            registered dataset it replaces the registered file. Relative
            paths are looked up under the data root, the project, then the
            working folder.
        image_dir: Image folder; for a registered dataset it replaces the
            registered folder. Without one, image paths are None.
        caption_format: ``"auto"`` or one of :data:`~trsllava_utils.data_formats.FORMATS`.
        require_images: Raise instead of warning when an image is missing or unreadable.
        check_images: Open every image file with PIL and report missing or
            unreadable ones (implied by ``require_images``).

    Returns:
        The dataset, with a :class:`LoadReport` of what was read and skipped.

    Raises:
        DatasetError: for a missing file, an unknown format or a malformed
            file, conflicting duplicates, and, with ``require_images``,
            missing or unreadable images.
    """
    if caption_format != "auto" and caption_format not in FORMATS:
        raise DatasetError(f"unknown caption_format {caption_format!r}; allowed: 'auto', "
                           f"{', '.join(repr(f) for f in FORMATS)}")
    root = resolve_data_root(data_root)
    rsrt_file = None
    images: Path | None = None
    if name == "custom":
        if captions_file is None:
            raise DatasetError("dataset 'custom' needs captions_file (a caption file or precomp folder), "
                               "and image_dir when images are used")
        source = _resolve_user_path(captions_file, root, "captions file")
    else:
        source, files = _registered_files(name, split, root, caption_format if captions_file is None else "auto")
        if captions_file is not None:
            source = _resolve_user_path(captions_file, root, "captions file")
        elif not source.exists():
            raise _missing_registered_file(source, name, split, root)
        images = _registered_image_dir(root, files.images)
        rsrt_file = root / files.rsrt if files.rsrt else None
    if image_dir is not None:
        images = _resolve_user_path(image_dir, root, "image folder")

    parsed = read_captions(source, split, caption_format)
    # Only RSITMD and RSICD name their files <class>_<number>; elsewhere a prefix is no class.
    labels_from_names = name in NAME_LABELLED_DATASETS
    items = []
    for image in parsed.images:
        path = _resolve_image_path(images, image.image) if images is not None else None
        label = image.label or (label_from_name(image.image) if labels_from_names else None)
        items.append(ImageItem(image_key(image.image), tuple(image.captions), path, label))
    report = LoadReport(source=str(parsed.source), format=parsed.format, records_read=parsed.records_read,
                        skipped=dict(parsed.skipped), warnings=list(parsed.warnings), layout=parsed.layout,
                        caption_counts=dict(sorted(Counter(len(i.captions) for i in items).items())))
    if not items:
        raise DatasetError(f"{parsed.source}: no image with a usable caption (skipped: {report.skipped}); "
                           "check the file and the split")

    usual = CAPTIONS_PER_IMAGE.get(name) or max(report.caption_counts, key=report.caption_counts.get)
    _warn_caption_counts(items, usual, name, report)
    if check_images or require_images:
        _check_images(items, images, report, require_images)

    logger.info("loaded %s/%s: %d images, %d captions from %s", name, split, len(items),
                sum(len(i.captions) for i in items), parsed.source)
    return Dataset(name=name, split=split, items=items, report=report, rsrt_file=rsrt_file, image_dir=images,
                   usual_caption_count=usual)


def _warn_caption_counts(items: list[ImageItem], usual: int, name: str, report: LoadReport) -> None:
    odd = [item for item in items if len(item.captions) != usual]
    if not odd:
        return
    listed = ", ".join(f"{item.image_id} has {len(item.captions)}" for item in odd[:10])
    more = f", and {len(odd) - 10} more" if len(odd) > 10 else ""
    message = (f"{report.source}: {len(odd)} of {len(items)} images have a caption count other than {usual} "
               f"(the usual count for {name!r}): {listed}{more}. Retrieval still uses every caption; fix "
               "the file if captions were lost")
    logger.warning(message)
    report.warnings.append(message)


def _check_images(items: list[ImageItem], image_dir: Path | None, report: LoadReport,
                  require_images: bool) -> None:
    report.images_checked = True
    problems = check_image_files(items)
    report.missing_images = [image_id for image_id, _ in problems]
    if not problems:
        return
    listed = ", ".join(f"{image_id} ({problem})" for image_id, problem in problems[:5])
    more = f", and {len(problems) - 5} more (all in report.missing_images)" if len(problems) > 5 else ""
    message = (f"{len(problems)} of {len(items)} images are missing or unreadable under "
               f"{image_dir or '(no image folder)'}: {listed}{more}. Set image_dir to the folder with the "
               "images")
    if require_images:
        raise DatasetError(message)
    message += ", or require_images=True to fail instead"
    logger.warning(message)
    report.warnings.append(message)


def load_dataset_from_params(params: RunParams, *, check_images: bool = False) -> Dataset:
    """Load the dataset a run's parameters name (see :func:`load_dataset`)."""
    return load_dataset(params.dataset, params.split, params.data_root, captions_file=params.captions_file,
                        image_dir=params.image_dir, caption_format=params.caption_format,
                        require_images=params.require_images, check_images=check_images)


# ----------------------------------------------------------------------------- summary


def summarize_dataset(ds: Dataset) -> dict[str, Any]:
    """Return the statistics a notebook shows before using a dataset.

    Keys besides ``dataset``, ``split``, ``images`` and ``captions``:

    - ``distinct_captions``: distinct caption strings (exact comparison);
    - ``captions_per_image``: caption count to number of images;
    - ``duplicates_within_image``: captions equal to an earlier caption of the
      same image, and ``images_with_duplicates``: images with at least one;
    - ``captions_shared_across_images``: distinct strings found in two or more
      images, and ``captions_in_shared_strings``: their occurrences;
    - ``words_per_caption``: min, mean, median, p95 and max of white-space
      separated words;
    - ``class_counts``: label to number of images, most frequent first, and
      ``unlabelled_images``.
    """
    texts, owners, _ = ds.captions_flat()
    within = 0
    images_with_duplicates = 0
    for item in ds.items:
        repeats = len(item.captions) - len(set(item.captions))
        within += repeats
        images_with_duplicates += repeats > 0
    owners_of: dict[str, set[int]] = {}
    for text, owner in zip(texts, owners.tolist(), strict=True):
        owners_of.setdefault(text, set()).add(owner)
    shared = {text for text, images in owners_of.items() if len(images) > 1}
    words = np.asarray([len(text.split()) for text in texts], dtype=np.float64)
    labels = Counter(item.label for item in ds.items if item.label is not None)
    return {
        "dataset": ds.name,
        "split": ds.split,
        "images": ds.n_images,
        "captions": ds.n_captions,
        "distinct_captions": len(owners_of),
        "captions_per_image": dict(sorted(Counter(len(item.captions) for item in ds.items).items())),
        "duplicates_within_image": within,
        "images_with_duplicates": images_with_duplicates,
        "captions_shared_across_images": len(shared),
        "captions_in_shared_strings": sum(1 for text in texts if text in shared),
        "words_per_caption": {
            "min": int(words.min()), "mean": round(float(words.mean()), 2),
            "median": float(np.median(words)), "p95": float(np.percentile(words, 95)), "max": int(words.max()),
        },
        "class_counts": dict(sorted(labels.items(), key=lambda kv: (-kv[1], kv[0]))),
        "unlabelled_images": sum(1 for item in ds.items if item.label is None),
    }


def summary_table(summary: dict[str, Any]) -> pd.DataFrame:
    """Return a summary from :func:`summarize_dataset` as a two-column table (statistic, value)."""
    import pandas as pd

    rows = []
    for key, value in summary.items():
        if key == "class_counts":
            value = f"{len(value)} classes: " + ", ".join(f"{k} {v}" for k, v in list(value.items())[:8]) + (
                ", ..." if len(value) > 8 else "")
        elif isinstance(value, dict):
            value = ", ".join(f"{k}: {v}" for k, v in value.items())
        rows.append((key.replace("_", " "), value))
    return pd.DataFrame(rows, columns=["statistic", "value"])


def _open_rgb(path: Path | None) -> tuple[np.ndarray | None, str]:
    """Return an image's RGB pixels, or None and the reason it cannot be drawn."""
    from PIL import Image

    if path is None:
        return None, "no image folder"
    if not path.is_file():
        return None, "image not found"
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB")), ""
    except (OSError, ValueError):
        return None, "image unreadable"


def show_examples(ds: Dataset, n: int = 4, seed: int = 0, wrap: int = 42) -> Figure:
    """Draw ``n`` images picked at random (seeded) with their id, label and captions.

    An image missing on disk, or a dataset without images, is drawn as a
    labelled blank tile, so the figure works on caption-only datasets.
    """
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(seed)
    count = min(n, ds.n_images)
    picks = sorted(rng.choice(ds.n_images, size=count, replace=False).tolist())
    columns = min(count, 4)
    rows = -(-count // columns)
    # A pyplot figure, like those of the plotting module, so the inline backend shows it after the cell.
    figure = plt.figure(figsize=(3.2 * columns, 5.4 * rows), layout="constrained")
    grid = figure.add_gridspec(2 * rows, columns, height_ratios=[3, 2.4] * rows)
    for slot, index in enumerate(picks):
        item = ds.items[index]
        row, column = divmod(slot, columns)
        image_ax = figure.add_subplot(grid[2 * row, column])
        text_ax = figure.add_subplot(grid[2 * row + 1, column])
        image_ax.set_axis_off()
        text_ax.set_axis_off()
        pixels, reason = _open_rgb(item.path)
        if pixels is None:
            image_ax.imshow(np.full((64, 64, 3), 0.92))
            image_ax.text(32, 32, f"{reason}\n{item.image_id}", ha="center", va="center", fontsize=8)
        else:
            image_ax.imshow(pixels)
        title = item.image_id if item.label is None else f"{item.image_id} ({item.label})"
        image_ax.set_title(title, fontsize=9)
        lines = [textwrap.fill(f"{number}. {caption}", wrap) for number, caption in
                 enumerate(item.captions, start=1)]
        text_ax.text(0, 1, "\n".join(lines), va="top", ha="left", fontsize=7, transform=text_ax.transAxes)
    return figure


# ----------------------------------------------------------------------------- command line


def _list_registered(data_root: str | None) -> int:
    root = resolve_data_root(data_root)
    print(f"data root: {root}")
    for name, splits in REGISTRY.items():
        for split in splits:
            formats = ["auto"] + (["precomp"] if split in PRECOMP_FILES.get(name, {}) else [])
            for caption_format in formats:
                label = f"{name}/{split}" + (" (precomp)" if caption_format == "precomp" else "")
                try:
                    ds = load_dataset(name, split, root, caption_format=caption_format)
                except DatasetError as exc:
                    print(f"{label:24s} not loaded: {exc}")
                    continue
                print(f"{label:24s} {ds.n_images:6d} images {ds.n_captions:7d} captions  "
                      f"[{ds.report.format}] {ds.report.source}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the ``download`` and ``list`` commands; return the exit status."""
    from . import data_download

    parser = argparse.ArgumentParser(prog="python -m trsllava_utils.data",
                                     description="Download and list the caption datasets of the workbook.")
    commands = parser.add_subparsers(dest="command", required=True)
    download = commands.add_parser("download", help="fetch the pinned public caption files of a dataset")
    data_download.add_arguments(download)
    listing = commands.add_parser("list", help="load every registered split and print its counts")
    listing.add_argument("--data-root", default=None,
                         help="folder that contains the datasets (default: as resolve_data_root finds it)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "list":
        return _list_registered(args.data_root)
    return data_download.run(args)


if __name__ == "__main__":
    sys.exit(main())
