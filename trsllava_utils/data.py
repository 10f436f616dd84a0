"""Datasets: images with their human captions, read from the caption files of the field.

NOTE: first slice; only the JSON list format of registered datasets is read here.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .paths import resolve_data_root
from .rsrt import image_key


@dataclass(frozen=True)
class ImageItem:
    """One image of a dataset: its id, its human captions in file order, its file and scene label."""

    image_id: str
    captions: tuple[str, ...]
    path: Path | None = None
    label: str | None = None


@dataclass
class LoadReport:
    """What a loader read, found and skipped; nothing is dropped without a count here."""

    source: str
    format: str
    records_read: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


@dataclass
class Dataset:
    """Images in a stable order, each with its captions; the unit every stage works on."""

    name: str
    split: str
    items: list[ImageItem]
    report: LoadReport
    rsrt_file: Path | None = None

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


# name -> split -> (captions file, image folder, RSRT file), relative to the data root.
REGISTRY: dict[str, dict[str, tuple[str, str | None, str | None]]] = {
    "demo": {"test": ("demo/captions.json", "demo", "demo/rsrt.jsonl")},
    "rsitmd": {"test": ("rsitmd/test.json", "rsitmd/images", None),
               "val": ("rsitmd/val.json", "rsitmd/images", None)},
    "rsicd": {"test": ("rsicd/test.json", "rsicd/images", None),
              "val": ("rsicd/val.json", "rsicd/images", None)},
}


def load_dataset(name: str, split: str = "test", data_root: str | os.PathLike | None = None) -> Dataset:
    """Load a registered dataset split from the data root."""
    root = resolve_data_root(data_root)
    captions_rel, images_rel, rsrt_rel = REGISTRY[name][split]
    source = root / captions_rel
    records = json.loads(source.read_text(encoding="utf-8"))
    report = LoadReport(source=str(source), format="json", records_read=len(records))
    image_root = root / images_rel if images_rel else None
    items = []
    for record in records:
        path = image_root / record["image"] if image_root else None
        items.append(ImageItem(image_id=image_key(record["image"]), captions=tuple(record["caption"]),
                               path=path, label=record.get("label")))
    return Dataset(name=name, split=split, items=items, report=report,
                   rsrt_file=root / rsrt_rel if rsrt_rel else None)
