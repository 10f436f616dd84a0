"""Query and gallery texts of a run, grouped into retrieval episodes.

An episode contains the four text sets that one evaluation needs:

- text to image: the human captions are the queries. The database texts of
  every image (RSRT variants, or held-out human captions) form the gallery,
  and an image's score aggregates the scores of its texts.
- image to text: each image's query texts are the queries. The gallery is
  the set of texts the image must find among all others.

A method run is one episode. The human-holdout oracle is five, one per fold:
in fold f, caption f of each image is the query and the image's other
captions are its database texts. Its image-to-text queries are those same
held-out captions, ranked against every database text of the fold, a hit
when one of the image's own texts is within K.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .data import Dataset
from .rsrt import RSRTRecord, image_key, read_records, record_texts

if TYPE_CHECKING:
    from .params import RunParams


@dataclass
class TextSet:
    """Texts with the dataset index of the image each belongs to."""

    texts: list[str]
    image_index: np.ndarray
    ids: list[str]

    def __post_init__(self) -> None:
        self.image_index = np.asarray(self.image_index, dtype=np.int64)
        if not (len(self.texts) == len(self.image_index) == len(self.ids)):
            raise ValueError(f"texts ({len(self.texts)}), image_index ({len(self.image_index)}) "
                             f"and ids ({len(self.ids)}) differ in length")

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class Episode:
    """One evaluation: queries and gallery for both directions over ``n_images`` images."""

    name: str
    n_images: int
    t2i_queries: TextSet
    t2i_gallery: TextSet
    i2t_queries: TextSet
    i2t_gallery: TextSet

    def all_texts(self) -> list[str]:
        """Return every text of the episode once, in first-seen order."""
        seen: dict[str, None] = {}
        for text_set in (self.t2i_queries, self.t2i_gallery, self.i2t_queries, self.i2t_gallery):
            seen.update(dict.fromkeys(text_set.texts))
        return list(seen)


def human_caption_set(dataset: Dataset) -> TextSet:
    """Return every human caption of the dataset, with ids ``<image_id>#<position>``."""
    texts, owners, positions = dataset.captions_flat()
    ids = [f"{dataset.items[o].image_id}#{p}" for o, p in zip(owners, positions)]
    return TextSet(texts, owners, ids)


def rsrt_text_set(dataset: Dataset, records: Sequence[RSRTRecord], fields: Sequence[str],
                  mode: str = "joined", n_variants: int | None = None) -> TextSet:
    """Build the database texts of the RSRT records, matched to dataset images by file name.

    Raises ``ValueError`` naming the images that have no record, so that no
    image silently drops out of the gallery. Records of images outside the
    dataset are ignored.
    """
    by_key = {image_key(record.image): record for record in records}
    missing = [item.image_id for item in dataset.items if item.image_id not in by_key]
    if missing:
        raise ValueError(f"{len(missing)} of {dataset.n_images} images have no RSRT record, "
                         f"for example {missing[:5]}; caption them first")
    texts_by_image = {item.image_id: record_texts(by_key[item.image_id], fields, mode, n_variants)
                      for item in dataset.items}
    return _per_image_text_set(dataset, texts_by_image, "@")


def _per_image_text_set(dataset: Dataset, texts_by_image: dict[str, list[str]], separator: str) -> TextSet:
    """Concatenate each image's texts in dataset order, with ids ``<image_id><separator><number>``."""
    texts: list[str] = []
    owners: list[int] = []
    ids: list[str] = []
    for index, item in enumerate(dataset.items):
        for number, text in enumerate(texts_by_image[item.image_id]):
            texts.append(text)
            owners.append(index)
            ids.append(f"{item.image_id}{separator}{number}")
    return TextSet(texts, owners, ids)


def method_episode(dataset: Dataset, database: TextSet, image_queries: TextSet) -> Episode:
    """Build the method's episode: captions query the database texts, image queries search the captions."""
    captions = human_caption_set(dataset)
    return Episode(name="all", n_images=dataset.n_images, t2i_queries=captions, t2i_gallery=database,
                   i2t_queries=image_queries, i2t_gallery=captions)


def holdout_episodes(dataset: Dataset) -> list[Episode]:
    """Build the five folds of the human-holdout oracle (an upper bound, not the method).

    Fold f takes caption f of every image as its query and the image's other
    captions as its database texts. Images with fewer than f captions have no
    query in fold f, so the folds are defined by the largest caption count.
    """
    n_folds = max(len(item.captions) for item in dataset.items)
    episodes = []
    for fold in range(n_folds):
        q_texts, q_owner, q_ids, g_texts, g_owner, g_ids = [], [], [], [], [], []
        for index, item in enumerate(dataset.items):
            for position, caption in enumerate(item.captions):
                if position == fold:
                    q_texts.append(caption)
                    q_owner.append(index)
                    q_ids.append(f"{item.image_id}#{position}")
                else:
                    g_texts.append(caption)
                    g_owner.append(index)
                    g_ids.append(f"{item.image_id}#{position}")
        queries = TextSet(q_texts, q_owner, q_ids)
        gallery = TextSet(g_texts, g_owner, g_ids)
        episodes.append(Episode(name=f"fold{fold + 1}", n_images=dataset.n_images, t2i_queries=queries,
                                t2i_gallery=gallery, i2t_queries=queries, i2t_gallery=gallery))
    return episodes


def image_query_set(dataset: Dataset, queries: dict[str, list[str]]) -> TextSet:
    """Build the image-to-text query texts from ``{image_id: [texts]}``.

    Raises ``ValueError`` naming the images that have no query text.
    """
    missing = [item.image_id for item in dataset.items if not queries.get(item.image_id)]
    if missing:
        raise ValueError(f"{len(missing)} of {dataset.n_images} images have no image-query text, "
                         f"for example {missing[:5]}; run the image-query step of 01_captioning first")
    return _per_image_text_set(dataset, queries, "?")


def build_run_episodes(params: "RunParams", dataset: Dataset, run_folder: Path) -> list[Episode]:
    """Build the episodes of a run from what 01_captioning left in ``run_folder``.

    The oracle needs no files. A method run reads ``rsrt.jsonl`` for the
    database texts (fields, text mode and variant count from ``params``) and,
    for image-to-text, either the same RSRT texts or ``image_queries.jsonl``.
    """
    if params.is_oracle:
        return holdout_episodes(dataset)
    rsrt_path = Path(run_folder) / "rsrt.jsonl"
    if not rsrt_path.is_file():
        raise FileNotFoundError(f"{rsrt_path} not found; run 01_captioning for run '{params.run_name}' first")
    records = read_records(rsrt_path)
    database = rsrt_text_set(dataset, records, params.db_fields, params.db_text_mode, params.n_variants)
    if params.image_query_source == "rsrt":
        image_queries = database
    else:
        queries_path = Path(run_folder) / "image_queries.jsonl"
        if not queries_path.is_file():
            raise FileNotFoundError(f"{queries_path} not found; run 01_captioning with "
                                    f"image_query_source 'image_queries' first")
        from .captioning import read_image_queries

        by_image = {image_key(image): texts for image, texts in read_image_queries(queries_path).items()}
        image_queries = image_query_set(dataset, by_image)
    return [method_episode(dataset, database, image_queries)]
