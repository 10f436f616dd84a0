"""Ranks, R@K, mR and their bootstrap intervals, for both retrieval directions.

Protocol:

- text to image: each query text ranks its own image among all images of the
  episode. An image's score is the max (or mean) of the cosine similarities
  between the query and the image's gallery texts.
- image to text: each image with query texts ranks the gallery texts. The
  image's query texts are aggregated the same way (max or mean over them),
  and the rank is that of the image's best own gallery text.
- Ties count against the query: rank = 1 + number of other items whose score
  is >= the query's decisive score. A query is *tied* when another item
  scores exactly that score. Identical texts get identical vectors and so
  identical scores, which happens in RSICD, where captions repeat.
- R@K is the share of queries with rank <= K, and mR is the mean of all R@K
  values of both directions.

Similarities are float32 matrix products over L2-normalised vectors,
computed in blocks of queries so that memory stays bounded for large
galleries. Every per-query step in a block is a vectorised numpy operation.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from . import __version__
from .episodes import Episode, TextSet
from .params import RunParams
from .paths import PROJECT_ROOT

logger = logging.getLogger(__name__)

AGGREGATIONS: tuple[str, ...] = ("max", "mean")
"""Ways to combine the scores of several texts of one image."""

BLOCK_BYTES = 128 * 2**20
"""Approximate cap on the bytes of one block's float32 score arrays; it limits the queries per block."""

TOP_K_COLUMN = 5
"""Number of retrieved ids written to the ``top5`` column of ranks.csv."""

RANKS_COLUMNS: tuple[str, ...] = ("direction", "episode", "query_id", "query_text", "ground_truth", "rank",
                                  "tied", "top5", "label")
"""Columns of ranks.csv, in file order."""

NORM_TOLERANCE = 1e-3
"""Vectors whose L2 norm is further than this from 1 are normalised by :func:`evaluate`."""


@dataclass
class RankResult:
    """Ranks of one retrieval direction, one row per query.

    Attributes:
        ranks: int64, 1-based; ties with other items count against the query.
        tied: bool, True where a non-own item scores exactly the query's decisive score.
        top_k: (Q, k) int64 indices of the retrieved items, best first: image indices for
            text to image, gallery rows for image to text. Equal scores are ordered by index.
            k is ``min(top_k, number of items)``.
        top_k_scores: (Q, k) float32 scores of the retrieved items.
        query_image: int64 image index of each query (for image to text: the image itself).
    """

    ranks: np.ndarray
    tied: np.ndarray
    top_k: np.ndarray
    top_k_scores: np.ndarray
    query_image: np.ndarray

    def __len__(self) -> int:
        return len(self.ranks)


# ---------------------------------------------------------------------------
# Input checks and small array helpers
# ---------------------------------------------------------------------------


def _as_vectors(vectors: np.ndarray, name: str) -> np.ndarray:
    array = np.ascontiguousarray(vectors, dtype=np.float32)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (n, dim), got shape {array.shape}")
    if not np.isfinite(array).all():
        bad = np.flatnonzero(~np.isfinite(array).all(axis=1))
        raise ValueError(f"{name} has {len(bad)} rows with NaN or infinite values, for example rows "
                         f"{bad[:5].tolist()}; check the embedder output")
    return array


def _as_image_index(image_index: np.ndarray, n_rows: int, n_images: int, name: str) -> np.ndarray:
    array = np.asarray(image_index)
    if array.ndim != 1 or len(array) != n_rows:
        raise ValueError(f"{name} must have one image index per vector ({n_rows}), got shape {array.shape}")
    if len(array) and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must contain integer image indices, got dtype {array.dtype}")
    array = array.astype(np.int64, copy=False)
    if len(array) and (array.min() < 0 or array.max() >= n_images):
        bad = array[(array < 0) | (array >= n_images)]
        raise ValueError(f"{name} has image indices outside [0, {n_images}): {np.unique(bad)[:5].tolist()}")
    return array


def _check_common(query_vectors: np.ndarray, query_image: np.ndarray, gallery_vectors: np.ndarray,
                  gallery_image: np.ndarray, n_images: int, aggregation: str, block_size: int,
                  top_k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {aggregation!r}; allowed: {', '.join(AGGREGATIONS)}")
    if block_size < 1:
        raise ValueError(f"block_size must be a positive number of queries, got {block_size}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0, got {top_k}")
    if n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}")
    queries = _as_vectors(query_vectors, "query_vectors")
    gallery = _as_vectors(gallery_vectors, "gallery_vectors")
    if queries.shape[1] != gallery.shape[1]:
        raise ValueError(f"query vectors have dimension {queries.shape[1]} but gallery vectors "
                         f"{gallery.shape[1]}; embed both with the same model")
    q_image = _as_image_index(query_image, len(queries), n_images, "query_image")
    g_image = _as_image_index(gallery_image, len(gallery), n_images, "gallery_image")
    return queries, q_image, gallery, g_image


def _segment_starts(counts: np.ndarray) -> np.ndarray:
    """Start offset of each segment of sorted rows, given the segment lengths."""
    return np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64)


def _block_bounds(n_rows: int, max_rows: int) -> list[tuple[int, int]]:
    """Split ``n_rows`` rows into consecutive ``(start, stop)`` blocks of at most ``max_rows`` (>= 2) rows.

    A block contains a single row only when the input is one row, because numpy
    computes a one-row product with a matrix-vector routine that rounds
    differently from the matrix-matrix one. A lone last row joins the block
    before it, which then has ``max_rows + 1`` rows.
    """
    bounds = [(start, min(start + max_rows, n_rows)) for start in range(0, n_rows, max_rows)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        last = bounds.pop()
        bounds[-1] = (bounds[-1][0], last[1])
    return bounds


_CHUNK_ROWS = 256


def _chunk_bounds(first: int, end: int) -> list[tuple[int, int]]:
    """Split the rows of one block into chunks of at most ``_CHUNK_ROWS``, post-processed one at a time.

    A chunk's score arrays stay in the CPU cache, so the gathers and reductions
    after the matrix product run faster (the max over images about 2x, measured
    on RSICD with 2 busy cores). Each chunk is a row slice of the block's
    product, so chunking changes no value.
    """
    return [(lo, min(lo + _CHUNK_ROWS, end)) for lo in range(first, end, _CHUNK_ROWS)]


def _rows_per_block(block_size: int, n_columns: int) -> int:
    by_memory = BLOCK_BYTES // (4 * max(n_columns, 1))
    return max(2, min(block_size, by_memory))


_FINGERPRINT_ROWS = 4096


def _row_fingerprints(vectors: np.ndarray) -> np.ndarray:
    """Hash each row's float32 bit patterns to a uint64 (a random linear hash, wrapping mod 2**64)."""
    multipliers = np.random.default_rng(0x5EED).integers(1, 2**63, size=vectors.shape[1], dtype=np.uint64)
    multipliers |= np.uint64(1)
    bits = vectors.view(np.uint32)
    fingerprints = np.empty(len(vectors), dtype=np.uint64)
    for lo in range(0, len(vectors), _FINGERPRINT_ROWS):
        # numpy's integer matmul wraps on overflow like the elementwise operations.
        fingerprints[lo:lo + _FINGERPRINT_ROWS] = bits[lo:lo + _FINGERPRINT_ROWS].astype(np.uint64) @ multipliers
    return fingerprints


def _unique_rows(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the distinct rows and, per input row, the index of its distinct row.

    Rows are distinct when their bytes differ. A fingerprint groups the rows,
    and a row-by-row comparison confirms every group. After a hash collision
    (possible, though unlikely) the exact and slower ``np.unique`` decides.
    """
    if len(vectors) == 0:
        return vectors, np.zeros(0, dtype=np.int64)
    _, first, inverse = np.unique(_row_fingerprints(vectors), return_index=True, return_inverse=True)
    unique = vectors[first]
    inverse = inverse.reshape(-1).astype(np.int64)
    # Only rows that are not the first of their group can differ from their distinct row.
    bits = vectors.view(np.uint32)
    repeats = np.flatnonzero(first[inverse] != np.arange(len(vectors)))
    for lo in range(0, len(repeats), _FINGERPRINT_ROWS):
        rows = repeats[lo:lo + _FINGERPRINT_ROWS]
        if not np.array_equal(bits[rows], bits[first[inverse[rows]]]):
            logger.warning("fingerprint collision among %d vectors; using np.unique", len(vectors))
            unique, inverse = np.unique(vectors, axis=0, return_inverse=True)
            return unique, inverse.reshape(-1).astype(np.int64)
    return unique, inverse


_ARGMAX_TOP_K = 32


def _top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Return the ``k`` best columns of each row, best first, equal scores by column index."""
    n_rows, n_columns = scores.shape
    k = min(k, n_columns)
    if k == 0:
        return np.empty((n_rows, 0), dtype=np.int64), np.empty((n_rows, 0), dtype=np.float32)
    if k <= _ARGMAX_TOP_K:
        # argmax returns the first of equal maxima, so equal scores come out by column index.
        # For small k, k argmax passes are faster than one argpartition.
        remaining = scores.copy()
        index = np.empty((n_rows, k), dtype=np.int64)
        rows = np.arange(n_rows)
        for position in range(k):
            best = remaining.argmax(axis=1)
            index[:, position] = best
            remaining[rows, best] = -np.inf
    elif k == n_columns:
        index = np.argsort(-scores, axis=1, kind="stable")
    else:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        part_scores = np.take_along_axis(scores, part, axis=1)
        # Order the k candidates by score, then by column index.
        order = np.lexsort((part, -part_scores), axis=1)
        index = np.take_along_axis(part, order, axis=1)
        # argpartition picks among columns tied with the k-th score arbitrarily; redo those rows
        # with a stable sort so that the lowest column indices win.
        kth = np.take_along_axis(scores, index[:, -1:], axis=1)
        n_above = (scores > kth).sum(axis=1)
        n_equal = (scores == kth).sum(axis=1)
        ambiguous = np.flatnonzero(n_above + n_equal > k)
        if len(ambiguous):
            index[ambiguous] = np.argsort(-scores[ambiguous], axis=1, kind="stable")[:, :k]
    index = index[:, :k].astype(np.int64, copy=False)
    return index, np.take_along_axis(scores, index, axis=1).astype(np.float32, copy=False)


def _padded_groups(distinct_id: np.ndarray, group: np.ndarray, n_groups: int,
                   fill_id: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Lay out each group's distinct-vector ids as one column of a (max group size, n_groups) matrix.

    Within a group the ids are sorted, so groups with the same texts get the
    same column and bit-identical aggregated scores. Shorter columns are
    padded with ``fill_id`` (the id of a zero vector, which leaves a sum
    unchanged) or, when it is None, with the group's first id (a repeat
    leaves a max unchanged). Every group must have at least one member.

    Returns:
        The padded id matrix and the size of each group.
    """
    order = np.lexsort((distinct_id, group))
    sorted_group = group[order]
    sorted_id = distinct_id[order]
    counts = np.bincount(group, minlength=n_groups)
    starts = _segment_starts(counts)
    width = int(counts.max())
    if fill_id is None:
        padded = np.tile(sorted_id[starts], (width, 1))
    else:
        padded = np.full((width, n_groups), fill_id, dtype=np.int64)
    padded[np.arange(len(order)) - starts[sorted_group], sorted_group] = sorted_id
    return padded, counts


@dataclass
class _MaxLayout:
    """Column order of the distinct gallery vectors that turns a max over image groups into slices.

    A distinct vector is *exclusive* when only one image has it, and *shared*
    otherwise. The images are permuted: first those without shared vectors,
    then those with some, each part by descending number of exclusive
    vectors. Product column block ``j`` contains the ``j``-th exclusive vector of
    every image that has more than ``j`` of them. In each part these images
    are a prefix, so the max over exclusive vectors takes contiguous column
    slices only. The shared vectors come last, and the images that have them
    (the last positions) take the max over them through a small gather.

    Attributes:
        vector_order: distinct-vector ids in product column order.
        runs: ``(image position, product column, length, first)`` slices; ``first`` marks
            the slices of block 0, which are copied, while the others are combined by max.
        first_sharing: position of the first image with shared vectors.
        shared_columns: (max shared vectors per image, images with shared vectors) product
            columns of the shared vectors of the images from ``first_sharing`` on,
            padded with repeats.
        position_of_image: position of each image in the permuted order.
    """

    vector_order: np.ndarray
    runs: list[tuple[int, int, int, bool]]
    first_sharing: int
    shared_columns: np.ndarray
    position_of_image: np.ndarray


def _max_layout(distinct_id: np.ndarray, group: np.ndarray, n_groups: int, n_distinct: int) -> _MaxLayout:
    """Build the :class:`_MaxLayout` of groups whose members are distinct-vector ids (every group non-empty)."""
    # Each (group, id) pair once: a repeated text cannot change a max.
    pairs = np.unique(group * n_distinct + distinct_id)
    pair_group, pair_id = np.divmod(pairs, n_distinct)
    users = np.bincount(pair_id, minlength=n_distinct)
    exclusive = users[pair_id] == 1
    n_exclusive = np.bincount(pair_group[exclusive], minlength=n_groups)
    has_shared = np.bincount(pair_group[~exclusive], minlength=n_groups) > 0
    image_order = np.lexsort((-n_exclusive, has_shared))
    position_of_image = np.empty(n_groups, dtype=np.int64)
    position_of_image[image_order] = np.arange(n_groups)
    first_sharing = int(n_groups - has_shared.sum())

    # Exclusive pairs are sorted by group, then id, so the block is the rank within the group.
    exclusive_group = pair_group[exclusive]
    block = np.arange(len(exclusive_group)) - _segment_starts(n_exclusive)[exclusive_group]
    by_block = np.lexsort((position_of_image[exclusive_group], block))
    shared_id = np.flatnonzero(users > 1)
    vector_order = np.concatenate((pair_id[exclusive][by_block], shared_id)).astype(np.int64)

    runs = []
    column = 0
    for j in range(int(n_exclusive.max(initial=0))):
        for start, in_part in ((0, ~has_shared), (first_sharing, has_shared)):
            length = int((in_part & (n_exclusive > j)).sum())
            if length:
                runs.append((start, column, length, j == 0))
                column += length

    column_of_id = np.empty(n_distinct, dtype=np.int64)
    column_of_id[vector_order] = np.arange(len(vector_order))
    if len(shared_id):
        sharing_position = position_of_image[pair_group[~exclusive]] - first_sharing
        shared_columns, _ = _padded_groups(column_of_id[pair_id[~exclusive]], sharing_position,
                                           n_groups - first_sharing, None)
    else:
        shared_columns = np.zeros((0, 0), dtype=np.int64)
    return _MaxLayout(vector_order=vector_order, runs=runs, first_sharing=first_sharing,
                      shared_columns=shared_columns, position_of_image=position_of_image)


def _max_over_layout(text_scores: np.ndarray, layout: _MaxLayout) -> np.ndarray:
    """Return each image's max score, from scores whose columns follow ``layout.vector_order``."""
    n_rows = len(text_scores)
    n_images = len(layout.position_of_image)
    permuted = np.empty((n_rows, n_images), dtype=np.float32)
    # Images without exclusive vectors (the last ones) get their score from the shared ones only.
    covered = sum(length for start, _, length, first in layout.runs if first and start == layout.first_sharing)
    permuted[:, layout.first_sharing + covered:] = -np.inf
    for start, column, length, first in layout.runs:
        target = permuted[:, start:start + length]
        source = text_scores[:, column:column + length]
        if first:
            target[...] = source
        else:
            np.maximum(target, source, out=target)
    if layout.shared_columns.size:
        width, n_sharing = layout.shared_columns.shape
        shared = np.take(text_scores, layout.shared_columns.ravel(), axis=1).reshape(n_rows, width, n_sharing)
        target = permuted[:, layout.first_sharing:]
        np.maximum(target, shared.max(axis=1), out=target)
    return np.take(permuted, layout.position_of_image, axis=1)


def _count_at_least_own(scores: np.ndarray, row: np.ndarray,
                        own_column: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Count the columns of ``scores[row[i]]`` that score >= and == its column ``own_column[i]``, for each i.

    Repeated pairs are counted once. The first pair of each row compares the
    row in place, so only rows with several pairs (one query vector with
    several own images) are copied.
    """
    n_columns = scores.shape[1]
    pairs, inverse = np.unique(row * n_columns + own_column, return_inverse=True)
    pair_row, pair_column = np.divmod(pairs, n_columns)
    own = scores[pair_row, pair_column]
    first = np.ones(len(pairs), dtype=bool)
    first[1:] = pair_row[1:] != pair_row[:-1]
    at_least = np.empty(len(pairs), dtype=np.int64)
    equal = np.empty(len(pairs), dtype=np.int64)
    in_place = np.array_equal(pair_row[first], np.arange(len(scores)))
    for selected, whole in ((first, in_place), (~first, False)):
        if not selected.any():
            continue
        block = scores if whole else scores[pair_row[selected]]
        own_scores = own[selected][:, None]
        at_least[selected] = (block >= own_scores).sum(axis=1)
        equal[selected] = (block == own_scores).sum(axis=1)
    inverse = inverse.reshape(-1)
    return at_least[inverse], equal[inverse]


def _with_zero_row(unique: np.ndarray, aggregation: str) -> tuple[np.ndarray, int | None]:
    """Append a zero vector for mean padding; return the matrix and the zero row's id (None for max)."""
    if aggregation == "max":
        return unique, None
    return np.vstack([unique, np.zeros((1, unique.shape[1]), dtype=np.float32)]), len(unique)


def _aggregate(gathered: np.ndarray, counts: np.ndarray, aggregation: str, axis: int) -> np.ndarray:
    """Reduce padded per-group scores over the padding ``axis`` (the groups are on the next axis)."""
    if aggregation == "max":
        return gathered.max(axis=axis)
    divisor = counts.astype(np.float32)
    return gathered.sum(axis=axis) / (divisor if axis == 1 else divisor[:, None])


def _describe_images(indices: np.ndarray, image_ids: Sequence[str] | None) -> str:
    shown = indices[:10].tolist()
    if image_ids is not None:
        shown = [f"{i} ({image_ids[i]})" for i in shown]
    more = f" and {len(indices) - 10} more" if len(indices) > 10 else ""
    return f"{', '.join(map(str, shown))}{more}"


def _empty_result(n_rows: int, k: int, query_image: np.ndarray) -> RankResult:
    return RankResult(ranks=np.zeros(n_rows, dtype=np.int64), tied=np.zeros(n_rows, dtype=bool),
                      top_k=np.zeros((n_rows, k), dtype=np.int64),
                      top_k_scores=np.zeros((n_rows, k), dtype=np.float32), query_image=query_image)


# ---------------------------------------------------------------------------
# Ranking
# ---------------------------------------------------------------------------
#
# Both directions score each distinct vector once. Identical texts get
# identical vectors, so copying one score to every duplicate keeps exact ties
# exact, and the repeated products are skipped (RSICD repeats many captions).
# The mean gathers the scores of each group's members into a padded array and
# sums over the padding axis, in a fixed order. The max, which is exact in any
# order, takes slices instead where it can: text to image orders the product's
# columns by a _MaxLayout, and image to text takes one padding row at a time.
# After the product, each block is post-processed in row chunks that fit the
# CPU cache.
#
# NOTE: blocked and unblocked ranks are equal whenever every dot product is
# exact. With general floats a BLAS may round a row differently depending on
# the product's shape. numpy's OpenBLAS 0.3.31 does so for one-row products
# and for small ones (2 or 3 rows against a few hundred texts), which can only
# reorder scores within float32 rounding (about 1e-7) of each other.


def rank_text_to_image(query_vectors: np.ndarray, query_image: np.ndarray, gallery_vectors: np.ndarray,
                       gallery_image: np.ndarray, n_images: int, aggregation: str = "max",
                       block_size: int = 2048, top_k: int = 5,
                       image_ids: Sequence[str] | None = None) -> RankResult:
    """Rank each query text's image among all images.

    An image's score is the max (or mean) over its gallery texts of the dot
    product with the query, the cosine for L2-normalised vectors. The rank is
    ``1 + number of other images with score >= own score``.

    Args:
        query_vectors: (Q, d) query text vectors.
        query_image: (Q,) index of each query's own image.
        gallery_vectors: (G, d) database text vectors.
        gallery_image: (G,) index of the image each database text belongs to.
        n_images: number of images; every image in ``[0, n_images)`` is a candidate.
        aggregation: ``"max"`` or ``"mean"`` over an image's gallery texts.
        block_size: maximum distinct query vectors per matrix product. It is lowered
            so that one block's score arrays stay under :data:`BLOCK_BYTES`, and raised to 2.
        top_k: number of retrieved image indices to keep per query.
        image_ids: optional image names, used only in error messages.

    Raises:
        ValueError: on inconsistent shapes, non-finite vectors, or images without any
            gallery text (a silent -inf score would make a wrong gallery).
    """
    queries, q_image, gallery, g_image = _check_common(query_vectors, query_image, gallery_vectors,
                                                       gallery_image, n_images, aggregation, block_size,
                                                       top_k)
    g_counts = np.bincount(g_image, minlength=n_images)
    missing = np.flatnonzero(g_counts == 0)
    if len(missing):
        raise ValueError(f"{len(missing)} of {n_images} images have no gallery text: "
                         f"{_describe_images(missing, image_ids)}; give every image at least one "
                         f"database text or drop it from the episode")
    k = min(top_k, n_images)
    result = _empty_result(len(queries), k, q_image.copy())
    if len(queries) == 0:
        return result

    unique_gallery, gallery_id = _unique_rows(gallery)
    if aggregation == "max":
        layout = _max_layout(gallery_id, g_image, n_images, len(unique_gallery))
        gallery_matrix = unique_gallery[layout.vector_order]
        floats_per_query = len(gallery_matrix) + 2 * layout.shared_columns.size + 4 * n_images
    else:
        # NOTE: the mean still gathers every image's padded columns, which is slower than the max layout.
        gallery_matrix, zero_id = _with_zero_row(unique_gallery, aggregation)
        padded, counts = _padded_groups(gallery_id, g_image, n_images, zero_id)
        floats_per_query = len(gallery_matrix) + 2 * padded.size + 3 * n_images
    unique_queries, query_id = _unique_rows(queries)
    query_order = np.argsort(query_id, kind="stable")
    sorted_query_id = query_id[query_order]

    rows = _rows_per_block(block_size, floats_per_query)
    gallery_t = gallery_matrix.T
    for first, end in _block_bounds(len(unique_queries), rows):
        text_scores = unique_queries[first:end] @ gallery_t
        for lo, hi in _chunk_bounds(first, end):
            chunk_scores = text_scores[lo - first:hi - first]
            if aggregation == "max":
                image_scores = _max_over_layout(chunk_scores, layout)
            else:
                gathered = np.take(chunk_scores, padded.ravel(), axis=1).reshape(hi - lo, *padded.shape)
                image_scores = _aggregate(gathered, counts, aggregation, axis=1)
                del gathered
            chunk_top, chunk_top_scores = _top_k(image_scores, k)

            positions = query_order[np.searchsorted(sorted_query_id, lo):np.searchsorted(sorted_query_id, hi)]
            local = query_id[positions] - lo
            # The own image is one of the items >= own, so the count is already 1 + others.
            at_least, equal = _count_at_least_own(image_scores, local, q_image[positions])
            result.ranks[positions] = at_least
            result.tied[positions] = equal > 1
            result.top_k[positions] = chunk_top[local]
            result.top_k_scores[positions] = chunk_top_scores[local]
        del text_scores
    return result


def rank_image_to_text(query_vectors: np.ndarray, query_image: np.ndarray, gallery_vectors: np.ndarray,
                       gallery_image: np.ndarray, n_images: int, aggregation: str = "max",
                       block_size: int = 2048, top_k: int = 5,
                       image_ids: Sequence[str] | None = None) -> RankResult:
    """Rank the gallery texts for each image, by the image's best own text.

    There is one result row per image with at least one query text, in
    ascending image index. The image's query texts are aggregated by max (or
    mean) over their similarities to each gallery text. The rank is
    ``1 + number of gallery texts not owned by the image with score >= the
    image's best own-text score``.

    Args:
        query_vectors: (Q, d) query text vectors; an image may have several.
        query_image: (Q,) image index of each query text.
        gallery_vectors: (G, d) gallery text vectors (human captions for the method).
        gallery_image: (G,) image index each gallery text belongs to.
        n_images: number of images.
        aggregation: ``"max"`` or ``"mean"`` over an image's query texts.
        block_size: maximum images per block, lowered so that one block's score
            arrays stay under :data:`BLOCK_BYTES`, and raised to 2.
        top_k: number of retrieved gallery rows to keep per image.
        image_ids: optional image names, used only in error messages.

    Raises:
        ValueError: on inconsistent shapes, non-finite vectors, or a queried image
            without any own gallery text (it could never be found).
    """
    queries, q_image, gallery, g_image = _check_common(query_vectors, query_image, gallery_vectors,
                                                       gallery_image, n_images, aggregation, block_size,
                                                       top_k)
    images = np.flatnonzero(np.bincount(q_image, minlength=n_images))
    g_counts = np.bincount(g_image, minlength=n_images)
    missing = images[g_counts[images] == 0]
    if len(missing):
        raise ValueError(f"{len(missing)} images with query texts have no own gallery text: "
                         f"{_describe_images(missing, image_ids)}; their rank would be undefined")
    k = min(top_k, len(gallery))
    result = _empty_result(len(images), k, images.copy())
    if len(images) == 0:
        return result

    unique_queries, query_id = _unique_rows(queries)
    query_matrix, zero_id = _with_zero_row(unique_queries, aggregation)
    padded, q_counts = _padded_groups(query_id, np.searchsorted(images, q_image), len(images), zero_id)
    unique_gallery, gallery_id = _unique_rows(gallery)
    expand = len(unique_gallery) < len(gallery)
    if not expand:
        # No duplicates: score the gallery in its own row order and skip the column gather.
        unique_gallery = gallery
    gallery_order = np.argsort(g_image, kind="stable")
    g_starts = _segment_starts(g_counts)

    floats_per_image = (padded.shape[0] + 1) * len(unique_gallery) + 3 * len(gallery)
    rows = _rows_per_block(block_size, floats_per_image)
    for first, end in _block_bounds(len(images), rows):
        block_padded = padded[:, first:end]
        needed = np.unique(block_padded)
        if len(needed) == 1 and len(query_matrix) > 1:
            # Keep two rows in the product: a one-row product rounds differently (see _block_bounds).
            needed = np.unique(np.append(needed, (needed[0] + 1) % len(query_matrix)))
        text_scores = query_matrix[needed] @ unique_gallery.T
        block_local = np.searchsorted(needed, block_padded)
        for lo, hi in _chunk_bounds(first, end):
            local = block_local[:, lo - first:hi - first]
            if aggregation == "max":
                # One padding row at a time: a max is exact in any order, and no (width, rows, texts) array.
                scores = text_scores[local[0]]
                for slot_rows in local[1:]:
                    np.maximum(scores, text_scores[slot_rows], out=scores)
            else:
                gathered = np.take(text_scores, local.ravel(), axis=0).reshape(*local.shape, len(unique_gallery))
                scores = _aggregate(gathered, q_counts[lo:hi], aggregation, axis=0)
                del gathered
            if expand:
                scores = np.take(scores, gallery_id, axis=1)
            block_images = images[lo:hi]

            # Own gallery columns of each image in the chunk, flattened with a row index.
            lengths = g_counts[block_images]
            own_row = np.repeat(np.arange(len(block_images)), lengths)
            offsets = np.arange(lengths.sum()) - np.repeat(_segment_starts(lengths), lengths)
            own_column = gallery_order[np.repeat(g_starts[block_images], lengths) + offsets]
            own = np.maximum.reduceat(scores[own_row, own_column], _segment_starts(lengths))[:, None]

            result.top_k[lo:hi], result.top_k_scores[lo:hi] = _top_k(scores, k)
            scores[own_row, own_column] = -np.inf
            result.ranks[lo:hi] = 1 + (scores >= own).sum(axis=1)
            result.tied[lo:hi] = (scores == own).any(axis=1)
        del text_scores
    return result


def recall_at_k(ranks: np.ndarray, ks: Sequence[int]) -> dict[int, float]:
    """Return the fraction of queries with rank <= K, for each K (a fraction in [0, 1])."""
    ranks = np.asarray(ranks)
    if len(ranks) == 0:
        raise ValueError("recall is undefined without queries: the rank array is empty")
    return {int(k): float(np.mean(ranks <= k)) for k in ks}


# ---------------------------------------------------------------------------
# Metrics and bootstrap intervals
# ---------------------------------------------------------------------------

DIRECTIONS: tuple[str, ...] = ("t2i", "i2t")


def metric_keys(ks: Sequence[int]) -> list[str]:
    """Return the metric names in schema order: ``t2i_R@K`` for each K, then ``i2t_R@K``, then ``mR``."""
    return [f"{direction}_R@{k}" for direction in DIRECTIONS for k in ks] + ["mR"]


def recall_metrics(ranks_by_direction: Mapping[str, np.ndarray], ks: Sequence[int]) -> dict[str, float]:
    """Return the recalls of both directions and mR, in percent, keyed as in metrics.json."""
    metrics: dict[str, float] = {}
    for direction in DIRECTIONS:
        for k, value in recall_at_k(ranks_by_direction[direction], ks).items():
            metrics[f"{direction}_R@{k}"] = 100.0 * value
    metrics["mR"] = float(np.mean(list(metrics.values())))
    return metrics


def bootstrap_ci(ranks_by_direction: Mapping[str, Sequence[np.ndarray]], ks: Sequence[int], *,
                 n_bootstrap: int = 1000, seed: int = 0, level: float = 0.95,
                 chunk_size: int = 100) -> dict[str, tuple[float, float]]:
    """Return percentile bootstrap intervals of every recall and of mR, in percent.

    Each replicate resamples the queries with replacement, separately in each
    direction and in each stratum (one stratum per episode, so every oracle
    fold keeps its size), recomputes the recalls and their mean, mR. The same
    ``seed`` gives the same intervals.

    Args:
        ranks_by_direction: ``{"t2i": [ranks per stratum], "i2t": [...]}``.
        ks: the K values.
        n_bootstrap: number of replicates; must be >= 1.
        seed: seed of the numpy random generator.
        level: coverage of the interval, 0.95 for the 2.5th to 97.5th percentiles.
        chunk_size: replicates drawn at once, which bounds memory.
    """
    if n_bootstrap < 1:
        raise ValueError(f"n_bootstrap must be >= 1, got {n_bootstrap}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    ks = list(ks)
    k_array = np.asarray(ks)[None, :]
    replicates: dict[str, np.ndarray] = {}
    for direction in DIRECTIONS:
        strata = [np.asarray(ranks) for ranks in ranks_by_direction[direction] if len(ranks)]
        total = sum(len(ranks) for ranks in strata)
        if total == 0:
            raise ValueError(f"no {direction} ranks to resample")
        hits = np.zeros((n_bootstrap, len(ks)), dtype=np.int64)
        for lo in range(0, n_bootstrap, chunk_size):
            hi = min(lo + chunk_size, n_bootstrap)
            for ranks in strata:
                drawn = ranks[rng.integers(0, len(ranks), size=(hi - lo, len(ranks)))]
                hits[lo:hi] += (drawn[:, :, None] <= k_array[None]).sum(axis=1)
        for column, k in enumerate(ks):
            replicates[f"{direction}_R@{k}"] = 100.0 * hits[:, column] / total
    replicates["mR"] = np.mean(np.stack(list(replicates.values())), axis=0)
    tail = 100.0 * (1 - level) / 2
    return {key: (float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail)))
            for key, values in replicates.items()}


# ---------------------------------------------------------------------------
# Evaluation of episodes
# ---------------------------------------------------------------------------


@dataclass
class Evaluation:
    """Result of :func:`evaluate`.

    Attributes:
        metrics: the ``metrics``, ``ci95``, ``rank_stats``, ``ties``, ``per_fold`` and
            ``per_class`` parts of metrics.json.
        ranks: one row per query of both directions, the ranks.csv columns.
        counts: the ``counts`` part of metrics.json, built from the episodes.
        results: episode name -> direction -> :class:`RankResult`, for displays.
        settings: ks, aggregation, block_size, n_bootstrap and seed used.
        episodes: the evaluated episodes, for displays of retrieved texts.
        image_ids: image names, one per image index.
    """

    metrics: dict[str, Any]
    ranks: pd.DataFrame
    counts: dict[str, int]
    results: dict[str, dict[str, RankResult]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    episodes: list[Episode] = field(default_factory=list)
    image_ids: list[str] = field(default_factory=list)


VectorSource = Mapping[str, np.ndarray] | Callable[[list[str]], np.ndarray]


def _vector_table(episodes: Sequence[Episode], vectors: VectorSource) -> tuple[dict[str, int], np.ndarray]:
    """Return a text -> row map and the matrix of L2-normalised float32 vectors of every text."""
    texts: dict[str, None] = {}
    for episode in episodes:
        texts.update(dict.fromkeys(episode.all_texts()))
    unique_texts = list(texts)
    if callable(vectors) and not isinstance(vectors, Mapping):
        matrix = np.asarray(vectors(unique_texts), dtype=np.float32)
        if matrix.ndim != 2 or len(matrix) != len(unique_texts):
            raise ValueError(f"the embedder returned shape {matrix.shape} for {len(unique_texts)} texts; "
                             f"expected ({len(unique_texts)}, dim)")
    else:
        missing = [text for text in unique_texts if text not in vectors]
        if missing:
            raise ValueError(f"{len(missing)} of {len(unique_texts)} texts have no vector, for example "
                             f"{missing[:3]}; embed every text of the episodes first")
        matrix = np.stack([np.asarray(vectors[text], dtype=np.float32) for text in unique_texts])
    matrix = _as_vectors(matrix, "vectors")
    norms = np.linalg.norm(matrix, axis=1)
    if (norms == 0).any():
        zero = [unique_texts[i] for i in np.flatnonzero(norms == 0)[:3]]
        raise ValueError(f"{int((norms == 0).sum())} texts have a zero vector, for example {zero}; "
                         f"cosine similarity is undefined for them")
    off = np.abs(norms - 1) > NORM_TOLERANCE
    if off.any():
        logger.info("normalising %d of %d vectors whose L2 norm is not 1", int(off.sum()), len(norms))
        matrix[off] /= norms[off, None]
    return {text: row for row, text in enumerate(unique_texts)}, matrix


def _lookup(table: dict[str, int], matrix: np.ndarray, text_set: TextSet) -> np.ndarray:
    return matrix[np.fromiter((table[text] for text in text_set.texts), dtype=np.int64, count=len(text_set))]


def _rank_rows(direction: str, episode: Episode, result: RankResult, image_ids: Sequence[str],
               labels: Sequence[str | None] | None) -> pd.DataFrame:
    """Build the ranks.csv rows of one direction of one episode."""
    if direction == "t2i":
        queries = episode.t2i_queries
        query_ids = list(queries.ids)
        query_texts = list(queries.texts)
        retrieved_names = np.asarray(image_ids, dtype=object)
    else:
        queries = episode.i2t_queries
        # One row per image: the image is the query, its query texts are shown joined.
        texts_by_image: dict[int, list[str]] = {}
        for text, image in zip(queries.texts, queries.image_index.tolist()):
            texts_by_image.setdefault(image, []).append(text)
        query_ids = [image_ids[i] for i in result.query_image.tolist()]
        query_texts = [" | ".join(texts_by_image[i]) for i in result.query_image.tolist()]
        retrieved_names = np.asarray(episode.i2t_gallery.ids, dtype=object)
    top = result.top_k[:, :TOP_K_COLUMN]
    top5 = [" ".join(row) for row in retrieved_names[top].tolist()] if top.size else [""] * len(result)
    images = result.query_image.tolist()
    return pd.DataFrame({
        "direction": direction,
        "episode": episode.name,
        "query_id": query_ids,
        "query_text": query_texts,
        "ground_truth": [image_ids[i] for i in images],
        "rank": result.ranks,
        "tied": result.tied,
        "top5": top5,
        "label": [(labels[i] or "") if labels is not None else "" for i in images],
    }, columns=list(RANKS_COLUMNS))


def _per_class(ranks: pd.DataFrame, ks: Sequence[int]) -> dict[str, dict[str, dict[str, float]]]:
    labelled = ranks[ranks["label"] != ""]
    if labelled.empty:
        return {}
    unlabelled = len(ranks) - len(labelled)
    if unlabelled:
        logger.warning("per-class recall leaves out %d of %d queries whose image has no label",
                       unlabelled, len(ranks))
    per_class: dict[str, dict[str, dict[str, float]]] = {}
    for direction in DIRECTIONS:
        rows = labelled[labelled["direction"] == direction]
        classes: dict[str, dict[str, float]] = {}
        for label, group in rows.groupby("label", sort=True):
            entry: dict[str, float] = {"n": int(len(group))}
            for k, value in recall_at_k(group["rank"].to_numpy(), ks).items():
                entry[f"R@{k}"] = 100.0 * value
            classes[str(label)] = entry
        per_class[direction] = classes
    return per_class


def _rank_stats(ranks: np.ndarray) -> dict[str, float]:
    return {"median": float(np.median(ranks)), "mean": float(np.mean(ranks))}


def _episode_counts(episodes: Sequence[Episode], results: dict[str, dict[str, RankResult]]) -> dict[str, int]:
    def single(values: list[int], name: str) -> int:
        if len(set(values)) > 1:
            # NOTE: episodes with different gallery sizes report the largest one.
            logger.warning("episodes differ in %s (%s); metrics.json reports the largest", name, values)
        return max(values)

    return {
        "t2i_queries": sum(len(results[e.name]["t2i"]) for e in episodes),
        "t2i_gallery_images": single([e.n_images for e in episodes], "t2i_gallery_images"),
        "t2i_gallery_texts": single([len(e.t2i_gallery) for e in episodes], "t2i_gallery_texts"),
        "i2t_queries": sum(len(results[e.name]["i2t"]) for e in episodes),
        "i2t_gallery_texts": single([len(e.i2t_gallery) for e in episodes], "i2t_gallery_texts"),
        "episodes": len(episodes),
    }


def evaluate(episodes: Sequence[Episode], vectors: VectorSource, *, ks: Sequence[int] = (1, 5, 10),
             aggregation: str = "max", block_size: int = 2048, n_bootstrap: int = 1000, seed: int = 0,
             image_ids: Sequence[str], labels: Sequence[str | None] | None = None) -> Evaluation:
    """Rank both directions of every episode and compute the metrics of the run.

    Pooled numbers cover the queries of all episodes (the five oracle folds
    together); ``per_fold`` lists each episode. Vectors whose norm is not 1
    are L2-normalised first.

    Args:
        episodes: the episodes of the run (one for the method, five for the oracle).
        vectors: a dict text -> vector, or a callable that maps a list of texts to an
            (n, d) array. The callable is called once, on the distinct texts of all episodes.
        ks: the K values of R@K.
        aggregation: ``"max"`` or ``"mean"``, over an image's gallery texts (text to image)
            and over an image's query texts (image to text).
        block_size: queries per matrix product.
        n_bootstrap: bootstrap replicates for the 95% intervals; 0 leaves them null.
        seed: bootstrap seed.
        image_ids: image names in dataset order, one per image index.
        labels: scene class of each image, or None; per-class recall uses them.
    """
    if not episodes:
        raise ValueError("evaluate needs at least one episode")
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"every K must be a positive integer, got {ks}")
    names = [episode.name for episode in episodes]
    if len(set(names)) != len(names):
        raise ValueError(f"episode names must be distinct, got {names}")
    for episode in episodes:
        if episode.n_images != len(image_ids):
            raise ValueError(f"episode {episode.name} has {episode.n_images} images but image_ids has "
                             f"{len(image_ids)}; pass the ids of the dataset the episodes come from")
    if labels is not None and len(labels) != len(image_ids):
        raise ValueError(f"labels has {len(labels)} entries for {len(image_ids)} images")

    table, matrix = _vector_table(episodes, vectors)
    results: dict[str, dict[str, RankResult]] = {}
    frames = []
    for episode in tqdm(episodes, desc="ranking episodes", disable=len(episodes) < 2):
        t2i = rank_text_to_image(_lookup(table, matrix, episode.t2i_queries), episode.t2i_queries.image_index,
                                 _lookup(table, matrix, episode.t2i_gallery), episode.t2i_gallery.image_index,
                                 episode.n_images, aggregation, block_size, top_k=TOP_K_COLUMN,
                                 image_ids=image_ids)
        i2t = rank_image_to_text(_lookup(table, matrix, episode.i2t_queries), episode.i2t_queries.image_index,
                                 _lookup(table, matrix, episode.i2t_gallery), episode.i2t_gallery.image_index,
                                 episode.n_images, aggregation, block_size, top_k=TOP_K_COLUMN,
                                 image_ids=image_ids)
        for direction, result in (("t2i", t2i), ("i2t", i2t)):
            if len(result) == 0:
                raise ValueError(f"episode {episode.name} has no {direction} queries; recall is undefined")
        results[episode.name] = {"t2i": t2i, "i2t": i2t}
        frames.append(_rank_rows("t2i", episode, t2i, image_ids, labels))
        frames.append(_rank_rows("i2t", episode, i2t, image_ids, labels))
    ranks = pd.concat(frames, ignore_index=True)

    pooled = {d: np.concatenate([results[n][d].ranks for n in names]) for d in DIRECTIONS}
    keys = metric_keys(ks)
    if n_bootstrap > 0:
        strata = {d: [results[n][d].ranks for n in names] for d in DIRECTIONS}
        ci95: dict[str, Any] = {key: list(v) for key, v in bootstrap_ci(strata, ks, n_bootstrap=n_bootstrap,
                                                                         seed=seed).items()}
    else:
        ci95 = {key: [None, None] for key in keys}
    metrics = {
        "metrics": recall_metrics(pooled, ks),
        "ci95": ci95,
        "rank_stats": {d: _rank_stats(pooled[d]) for d in DIRECTIONS},
        "ties": {d: int(sum(results[n][d].tied.sum() for n in names)) for d in DIRECTIONS},
        "per_fold": [{"fold": n, "metrics": recall_metrics({d: results[n][d].ranks for d in DIRECTIONS}, ks)}
                     for n in names],
        "per_class": _per_class(ranks, ks) if labels is not None else {},
    }
    settings = {"ks": ks, "aggregation": aggregation, "block_size": block_size, "n_bootstrap": n_bootstrap,
                "seed": seed}
    logger.info("evaluated %d episodes: mR %.2f", len(episodes), metrics["metrics"]["mR"])
    return Evaluation(metrics=metrics, ranks=ranks, counts=_episode_counts(episodes, results), results=results,
                      settings=settings, episodes=list(episodes), image_ids=list(image_ids))


# ---------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------


def git_commit() -> str | None:
    """Return ``git rev-parse HEAD`` of the project, or None outside a git checkout."""
    try:
        completed = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                                   text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if completed.returncode != 0:
        return None
    return completed.stdout.strip() or None


def _atomic_write(path: Path, write: Callable[[Any], None]) -> None:
    """Write through a temporary file in the same folder, so a crash never leaves half a file."""
    handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as stream:
            write(stream)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _require_keys(mapping: Mapping[str, Any], keys: Sequence[str], name: str) -> None:
    missing = [key for key in keys if key not in mapping]
    if missing:
        raise ValueError(f"{name} is missing {missing}; expected keys {list(keys)}")


def write_metrics(evaluation: Evaluation, run_dir: str | os.PathLike, *, params: RunParams,
                  dataset_info: dict[str, Any], models: dict[str, Any],
                  counts: dict[str, int] | None = None) -> dict[str, Any]:
    """Write ``metrics.json`` and ``ranks.csv`` into ``run_dir`` and return the JSON object.

    Args:
        evaluation: the result of :func:`evaluate`.
        run_dir: the run's output folder (created if missing).
        params: the run's parameters; their ks, aggregation, bootstrap samples and seed
            must match those of the evaluation.
        dataset_info: ``name``, ``split``, ``n_images``, ``n_captions``.
        models: ``{"embedding": {name, identity, source}, "captioner": {name, model}}``.
        counts: overrides the counts built from the episodes.

    Raises:
        ValueError: when a required key is missing or the evaluation used other settings
            than ``params``.
    """
    _require_keys(dataset_info, ("name", "split", "n_images", "n_captions"), "dataset_info")
    _require_keys(models, ("embedding", "captioner"), "models")
    _require_keys(models["embedding"], ("name", "identity", "source"), "models['embedding']")
    _require_keys(models["captioner"], ("name", "model"), "models['captioner']")
    expected = {"ks": list(params.ks), "aggregation": params.aggregation,
                "n_bootstrap": params.bootstrap_samples, "seed": params.seed}
    for key, value in expected.items():
        used = evaluation.settings.get(key)
        if used is not None and used != value:
            raise ValueError(f"the evaluation used {key}={used!r} but the run parameters say {value!r}; "
                             f"evaluate again with the run's parameters")

    folder = Path(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    document: dict[str, Any] = {
        "run_name": params.run_name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "package_version": __version__,
        "git_commit": git_commit(),
        "params": params.model_dump(mode="json"),
        "oracle": params.is_oracle,
        "label": "human-holdout oracle (upper bound)" if params.is_oracle else "method (training-free)",
        "dataset": {key: dataset_info[key] for key in ("name", "split", "n_images", "n_captions")},
        "models": models,
        "counts": dict(counts if counts is not None else evaluation.counts),
        "unit": "percent",
        **evaluation.metrics,
    }
    _atomic_write(folder / "metrics.json", lambda stream: json.dump(document, stream, indent=2))
    _atomic_write(folder / "ranks.csv", lambda stream: evaluation.ranks.to_csv(stream, index=False))
    logger.info("wrote %s and %s", folder / "metrics.json", folder / "ranks.csv")
    return document


def read_ranks(path: str | os.PathLike) -> pd.DataFrame:
    """Read a ranks.csv written by :func:`write_metrics`, with empty strings kept as strings."""
    frame = pd.read_csv(path, dtype={"query_id": str, "ground_truth": str, "top5": str, "label": str,
                                     "episode": str, "query_text": str}, keep_default_na=False)
    _require_keys(frame.columns, RANKS_COLUMNS, str(path))
    return frame


# ---------------------------------------------------------------------------
# Tables for notebooks
# ---------------------------------------------------------------------------


def hardest_queries(ranks_df: pd.DataFrame, n: int = 10, direction: str = "t2i") -> pd.DataFrame:
    """Return the ``n`` queries of one direction with the worst rank, worst first."""
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}; allowed: {', '.join(DIRECTIONS)}")
    rows = ranks_df[ranks_df["direction"] == direction]
    return rows.sort_values(["rank", "episode", "query_id"], ascending=[False, True, True],
                            kind="stable").head(n).reset_index(drop=True)


def metrics_table(metrics: Mapping[str, Any]) -> pd.DataFrame:
    """Return recalls and mR as a table: a ``pooled`` row, then one row per fold (percent)."""
    rows = {"pooled": metrics["metrics"]}
    for fold in metrics.get("per_fold", []):
        rows[fold["fold"]] = fold["metrics"]
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "episode"
    return table


def ci_table(metrics: Mapping[str, Any]) -> pd.DataFrame:
    """Return each pooled metric with its 95% bootstrap interval (percent)."""
    records = []
    for key, value in metrics["metrics"].items():
        low, high = metrics.get("ci95", {}).get(key, [None, None])
        records.append({"metric": key, "value": value, "ci95_low": low, "ci95_high": high})
    return pd.DataFrame.from_records(records).set_index("metric")


def per_class_table(metrics: Mapping[str, Any], direction: str = "t2i") -> pd.DataFrame:
    """Return per-class recall of one direction, one row per class, sorted by R@1."""
    classes = metrics.get("per_class", {}).get(direction, {})
    if not classes:
        return pd.DataFrame()
    table = pd.DataFrame.from_dict(classes, orient="index")
    table.index.name = "label"
    first_recall = next((column for column in table.columns if column.startswith("R@")), "n")
    return table.sort_values(first_recall)


def retrieval_examples(evaluation: Evaluation, query_ids: Sequence[str], *, direction: str = "t2i",
                       episode: str | None = None) -> pd.DataFrame:
    """Return the retrieved items of some queries beside their ground truth, one row per (query, position).

    Columns: query_id, query_text, ground_truth, rank, position (1-based),
    retrieved_id, retrieved_text (image to text only), correct (the retrieved
    item is or belongs to the ground-truth image) and score.

    Args:
        evaluation: the result of :func:`evaluate`.
        query_ids: ids from the ``query_id`` column of the ranks table.
        direction: ``"t2i"`` or ``"i2t"``.
        episode: episode name; the first episode when None.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}; allowed: {', '.join(DIRECTIONS)}")
    episode_name = episode or evaluation.episodes[0].name
    by_name = {item.name: item for item in evaluation.episodes}
    if episode_name not in by_name:
        raise ValueError(f"unknown episode {episode_name!r}; the evaluation has {list(by_name)}")
    rows = evaluation.ranks[(evaluation.ranks["direction"] == direction)
                            & (evaluation.ranks["episode"] == episode_name)].reset_index(drop=True)
    position_of = {query_id: index for index, query_id in enumerate(rows["query_id"])}
    unknown = [query_id for query_id in query_ids if query_id not in position_of]
    if unknown:
        raise ValueError(f"query ids not found among the {direction} queries of episode {episode_name}: "
                         f"{unknown[:5]}")
    result = evaluation.results[episode_name][direction]
    gallery = by_name[episode_name].i2t_gallery
    records = []
    for query_id in query_ids:
        row = position_of[query_id]
        for position in range(result.top_k.shape[1]):
            item = int(result.top_k[row, position])
            record: dict[str, Any] = {"query_id": query_id, "query_text": rows.at[row, "query_text"],
                                      "ground_truth": rows.at[row, "ground_truth"],
                                      "rank": int(rows.at[row, "rank"]), "position": position + 1}
            if direction == "t2i":
                record["retrieved_id"] = evaluation.image_ids[item]
                record["correct"] = item == int(result.query_image[row])
            else:
                record["retrieved_id"] = gallery.ids[item]
                record["retrieved_text"] = gallery.texts[item]
                record["correct"] = int(gallery.image_index[item]) == int(result.query_image[row])
            record["score"] = float(result.top_k_scores[row, position])
            records.append(record)
    return pd.DataFrame.from_records(records)
