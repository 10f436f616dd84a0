"""Tests of ranks, recalls, bootstrap intervals and the metrics files.

Hand-computed cases use 2-D vectors whose dot products are easy to follow.
The property tests use small integer coordinates, so every dot product and
every sum is exact in float32 and the comparison checks the ranking logic,
not BLAS rounding.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trsllava_utils import retrieval
from trsllava_utils.episodes import Episode, TextSet
from trsllava_utils.params import RunParams
from trsllava_utils.retrieval import (
    bootstrap_ci,
    evaluate,
    hardest_queries,
    rank_image_to_text,
    rank_text_to_image,
    recall_at_k,
    write_metrics,
)


def vectors(*rows: tuple[float, float]) -> np.ndarray:
    return np.asarray(rows, dtype=np.float32)


# Gallery of three images for the hand-computed cases:
# image 0: (1, 0), (0, 1); image 1: (0.6, 0.8); image 2: (0.8, 0.6), (-1, 0).
GALLERY = vectors((1, 0), (0, 1), (0.6, 0.8), (0.8, 0.6), (-1, 0))
GALLERY_IMAGE = np.array([0, 0, 1, 2, 2])


# ---------------------------------------------------------------------------
# Text to image
# ---------------------------------------------------------------------------


def test_t2i_max_counts_better_images():
    # Query (1, 0) of image 1: image scores 1.0, 0.6, 0.8, so two images beat it.
    result = rank_text_to_image(vectors((1, 0)), np.array([1]), GALLERY, GALLERY_IMAGE, 3)
    assert result.ranks.tolist() == [3]
    assert result.tied.tolist() == [False]
    assert result.top_k.tolist() == [[0, 2, 1]]
    assert result.top_k_scores[0] == pytest.approx([1.0, 0.8, 0.6])


def test_t2i_mean_changes_rank():
    # Mean image scores: 0.5, 0.6, (0.8 - 1) / 2 = -0.1, so image 1 is first.
    result = rank_text_to_image(vectors((1, 0)), np.array([1]), GALLERY, GALLERY_IMAGE, 3, aggregation="mean")
    assert result.ranks.tolist() == [1]
    assert result.top_k.tolist() == [[1, 0, 2]]
    assert result.top_k_scores[0] == pytest.approx([0.6, 0.5, -0.1])


def test_t2i_own_image_first():
    result = rank_text_to_image(vectors((1, 0), (0.6, 0.8)), np.array([0, 1]), GALLERY, GALLERY_IMAGE, 3)
    assert result.ranks.tolist() == [1, 1]
    assert result.query_image.tolist() == [0, 1]


def test_t2i_duplicate_text_ties_against_query():
    # Images 0 and 1 both hold the text (1, 0); the query's own image 1 shares the top score.
    gallery = vectors((1, 0), (1, 0), (0, 1))
    result = rank_text_to_image(vectors((1, 0)), np.array([1]), gallery, np.array([0, 1, 2]), 3)
    assert result.ranks.tolist() == [2]
    assert result.tied.tolist() == [True]
    assert result.top_k.tolist() == [[0, 1, 2]]


def test_t2i_tie_below_own_score():
    # Images 1 and 2 tie with each other at 0, below the own score 1: no tie at the boundary.
    gallery = vectors((1, 0), (0, 1), (0, 1))
    result = rank_text_to_image(vectors((1, 0)), np.array([0]), gallery, np.array([0, 1, 2]), 3)
    assert result.ranks.tolist() == [1]
    assert result.tied.tolist() == [False]


def test_t2i_mean_duplicate_sets_tie():
    # Images 0 and 1 hold the same two texts in different orders: their means must be equal bits.
    gallery = vectors((0.6, 0.8), (0.8, 0.6), (0.8, 0.6), (0.6, 0.8), (0, 1))
    result = rank_text_to_image(vectors((0.28, 0.96)), np.array([1]), gallery, np.array([0, 0, 1, 1, 2]), 3,
                                aggregation="mean")
    assert result.tied.tolist() == [True]
    assert result.ranks.tolist() == [3]


def test_t2i_image_with_fewer_texts():
    # Image 0 has three texts, image 1 one; max takes image 0's best, mean dilutes it to 1/3.
    gallery = vectors((1, 0), (0, 1), (0, 1), (0.6, 0.8))
    owners = np.array([0, 0, 0, 1])
    query = vectors((1, 0))
    by_max = rank_text_to_image(query, np.array([1]), gallery, owners, 2)
    by_mean = rank_text_to_image(query, np.array([1]), gallery, owners, 2, aggregation="mean")
    assert by_max.ranks.tolist() == [2]
    assert by_mean.ranks.tolist() == [1]
    assert by_mean.top_k_scores[0] == pytest.approx([0.6, 1 / 3])


def test_t2i_top_k_larger_than_gallery():
    result = rank_text_to_image(vectors((1, 0)), np.array([0]), GALLERY, GALLERY_IMAGE, 3, top_k=10)
    assert result.top_k.shape == (1, 3)


def test_t2i_top_k_zero():
    result = rank_text_to_image(vectors((1, 0)), np.array([0]), GALLERY, GALLERY_IMAGE, 3, top_k=0)
    assert result.top_k.shape == (1, 0)
    assert result.ranks.tolist() == [1]


def test_t2i_image_without_text_raises():
    with pytest.raises(ValueError, match=r"1 of 4 images have no gallery text: 3 \(d.tif\)"):
        rank_text_to_image(vectors((1, 0)), np.array([0]), GALLERY, GALLERY_IMAGE, 4,
                           image_ids=["a.tif", "b.tif", "c.tif", "d.tif"])


def test_t2i_dimension_mismatch_raises():
    with pytest.raises(ValueError, match="dimension 3 but gallery vectors 2"):
        rank_text_to_image(np.ones((1, 3), dtype=np.float32), np.array([0]), GALLERY, GALLERY_IMAGE, 3)


def test_t2i_non_finite_vector_raises():
    with pytest.raises(ValueError, match="NaN or infinite"):
        rank_text_to_image(vectors((np.nan, 0)), np.array([0]), GALLERY, GALLERY_IMAGE, 3)


def test_t2i_image_index_out_of_range_raises():
    with pytest.raises(ValueError, match=r"outside \[0, 3\)"):
        rank_text_to_image(vectors((1, 0)), np.array([5]), GALLERY, GALLERY_IMAGE, 3)


def test_t2i_unknown_aggregation_raises():
    with pytest.raises(ValueError, match="unknown aggregation 'sum'"):
        rank_text_to_image(vectors((1, 0)), np.array([0]), GALLERY, GALLERY_IMAGE, 3, aggregation="sum")


def test_t2i_no_queries():
    result = rank_text_to_image(np.zeros((0, 2), dtype=np.float32), np.zeros(0, dtype=np.int64), GALLERY,
                                GALLERY_IMAGE, 3)
    assert len(result) == 0


# ---------------------------------------------------------------------------
# Image to text
# ---------------------------------------------------------------------------


def test_i2t_single_query_rank():
    # Image 0's query (0.8, 0.6) scores g0 0.8, g1 0.6, g2 0.96, g3 1.0; the best own text is g0.
    result = rank_image_to_text(vectors((0.8, 0.6)), np.array([0]), GALLERY[:4], GALLERY_IMAGE[:4], 3)
    assert result.ranks.tolist() == [3]
    assert result.tied.tolist() == [False]
    assert result.query_image.tolist() == [0]
    assert result.top_k.tolist() == [[3, 2, 0, 1]]


def test_i2t_multiple_queries_max():
    # Image 1's queries (1, 0) and (0, 1): max scores g0 1, g1 1, g2 0.8, g3 0.8, so g3 ties g2.
    result = rank_image_to_text(vectors((1, 0), (0, 1)), np.array([1, 1]), GALLERY[:4], GALLERY_IMAGE[:4], 3)
    assert result.ranks.tolist() == [4]
    assert result.tied.tolist() == [True]
    assert result.query_image.tolist() == [1]


def test_i2t_multiple_queries_mean():
    # Mean scores g0 0.5, g1 0.5, g2 0.7, g3 0.7: only g3 counts against the query.
    result = rank_image_to_text(vectors((1, 0), (0, 1)), np.array([1, 1]), GALLERY[:4], GALLERY_IMAGE[:4], 3,
                                aggregation="mean")
    assert result.ranks.tolist() == [2]
    assert result.tied.tolist() == [True]
    assert result.top_k_scores[0] == pytest.approx([0.7, 0.7, 0.5, 0.5])


def test_i2t_best_own_text_decides():
    # Image 0 owns g0 (1, 0) and g1 (0, 1); its query (0, 1) finds g1 first.
    result = rank_image_to_text(vectors((0, 1)), np.array([0]), GALLERY[:4], GALLERY_IMAGE[:4], 3)
    assert result.ranks.tolist() == [1]


def test_i2t_own_duplicate_not_counted():
    # Image 0 owns two copies of (1, 0): the second copy does not push the rank down.
    gallery = vectors((1, 0), (1, 0), (0, 1))
    result = rank_image_to_text(vectors((1, 0)), np.array([0]), gallery, np.array([0, 0, 1]), 2)
    assert result.ranks.tolist() == [1]
    assert result.tied.tolist() == [False]


def test_i2t_images_in_index_order():
    queries = vectors((0.6, 0.8), (1, 0), (0, 1))
    result = rank_image_to_text(queries, np.array([2, 0, 0]), GALLERY, GALLERY_IMAGE, 3)
    assert result.query_image.tolist() == [0, 2]
    assert len(result) == 2


def test_i2t_image_without_own_text_raises():
    with pytest.raises(ValueError, match="1 images with query texts have no own gallery text"):
        rank_image_to_text(vectors((1, 0)), np.array([3]), GALLERY, GALLERY_IMAGE, 4)


def test_i2t_top_k_larger_than_gallery():
    result = rank_image_to_text(vectors((1, 0)), np.array([0]), GALLERY, GALLERY_IMAGE, 3, top_k=50)
    assert result.top_k.shape == (1, 5)


# ---------------------------------------------------------------------------
# Blocking: property tests against the unblocked computation and a plain loop
# ---------------------------------------------------------------------------


def loop_t2i(queries, query_image, gallery, gallery_image, n_images, aggregation):
    """Plain reference: one query at a time, one image at a time."""
    ranks, tied = [], []
    for query, own_image in zip(queries, query_image):
        scores = []
        for image in range(n_images):
            values = [np.float32(np.dot(query, g)) for g, owner in zip(gallery, gallery_image) if owner == image]
            if aggregation == "max":
                scores.append(max(values))
            else:
                scores.append(np.float32(sum(values)) / np.float32(len(values)))
        own = scores[own_image]
        others = [s for image, s in enumerate(scores) if image != own_image]
        ranks.append(1 + sum(s >= own for s in others))
        tied.append(any(s == own for s in others))
    return ranks, tied


def loop_i2t(queries, query_image, gallery, gallery_image, aggregation):
    ranks, tied = [], []
    for image in sorted(set(query_image.tolist())):
        own_queries = [q for q, owner in zip(queries, query_image) if owner == image]
        scores = []
        for g in gallery:
            values = [np.float32(np.dot(q, g)) for q in own_queries]
            if aggregation == "max":
                scores.append(max(values))
            else:
                scores.append(np.float32(sum(values)) / np.float32(len(values)))
        own = max(s for s, owner in zip(scores, gallery_image) if owner == image)
        others = [s for s, owner in zip(scores, gallery_image) if owner != image]
        ranks.append(1 + sum(s >= own for s in others))
        tied.append(any(s == own for s in others))
    return ranks, tied


@st.composite
def retrieval_problems(draw):
    """Small problems with integer coordinates (exact float32 arithmetic) and many ties."""
    n_images = draw(st.integers(1, 6))
    dim = draw(st.integers(1, 4))
    coordinate = st.integers(-2, 2)
    gallery_image = [image for image in range(n_images) for _ in range(draw(st.integers(1, 3)))]
    n_queries = draw(st.integers(1, 12))
    query_image = draw(st.lists(st.integers(0, n_images - 1), min_size=n_queries, max_size=n_queries))
    gallery = draw(st.lists(st.lists(coordinate, min_size=dim, max_size=dim), min_size=len(gallery_image),
                            max_size=len(gallery_image)))
    queries = draw(st.lists(st.lists(coordinate, min_size=dim, max_size=dim), min_size=n_queries,
                            max_size=n_queries))
    order = draw(st.permutations(range(len(gallery_image))))
    return (np.asarray(queries, dtype=np.float32), np.asarray(query_image),
            np.asarray(gallery, dtype=np.float32)[list(order)], np.asarray(gallery_image)[list(order)], n_images)


def assert_same_result(blocked, unblocked):
    assert blocked.ranks.tolist() == unblocked.ranks.tolist()
    assert blocked.tied.tolist() == unblocked.tied.tolist()
    assert blocked.top_k.tolist() == unblocked.top_k.tolist()
    assert blocked.top_k_scores.tolist() == unblocked.top_k_scores.tolist()
    assert blocked.query_image.tolist() == unblocked.query_image.tolist()


@settings(max_examples=150, deadline=None)
@given(problem=retrieval_problems(), block_size=st.integers(1, 5), aggregation=st.sampled_from(["max", "mean"]))
def test_t2i_blocked_equals_unblocked(problem, block_size, aggregation):
    queries, query_image, gallery, gallery_image, n_images = problem
    blocked = rank_text_to_image(queries, query_image, gallery, gallery_image, n_images, aggregation, block_size)
    unblocked = rank_text_to_image(queries, query_image, gallery, gallery_image, n_images, aggregation, 10_000)
    assert_same_result(blocked, unblocked)
    ranks, tied = loop_t2i(queries, query_image, gallery, gallery_image, n_images, aggregation)
    assert blocked.ranks.tolist() == ranks
    assert blocked.tied.tolist() == tied


@settings(max_examples=150, deadline=None)
@given(problem=retrieval_problems(), block_size=st.integers(1, 5), aggregation=st.sampled_from(["max", "mean"]))
def test_i2t_blocked_equals_unblocked(problem, block_size, aggregation):
    queries, query_image, gallery, gallery_image, n_images = problem
    blocked = rank_image_to_text(queries, query_image, gallery, gallery_image, n_images, aggregation, block_size)
    unblocked = rank_image_to_text(queries, query_image, gallery, gallery_image, n_images, aggregation, 10_000)
    assert_same_result(blocked, unblocked)
    ranks, tied = loop_i2t(queries, query_image, gallery, gallery_image, aggregation)
    assert blocked.ranks.tolist() == ranks
    assert blocked.tied.tolist() == tied


def decision_gaps(function, queries, query_image, gallery, gallery_image):
    """Float64 distance between each query's decisive score and the nearest other item's score (max)."""
    text_scores = queries.astype(np.float64) @ gallery.astype(np.float64).T
    if function is rank_text_to_image:
        images = np.unique(gallery_image)
        item_scores = np.stack([text_scores[:, gallery_image == i].max(axis=1) for i in images], axis=1)
        own = item_scores[np.arange(len(queries)), query_image]
        is_own = images[None, :] == query_image[:, None]
    else:
        rows = np.unique(query_image)
        item_scores = np.stack([text_scores[query_image == i].max(axis=0) for i in rows])
        is_own = gallery_image[None, :] == rows[:, None]
        own = np.where(is_own, item_scores, -np.inf).max(axis=1)
    return np.where(is_own, np.inf, np.abs(item_scores - own[:, None])).min(axis=1)


@pytest.mark.parametrize("function", [rank_text_to_image, rank_image_to_text])
@pytest.mark.parametrize("n_gallery", [250, 3000])
def test_blocked_float_vectors_near_ties_only(function, n_gallery):
    # With float vectors the BLAS may round a small block's product differently in the last
    # bit (numpy's OpenBLAS does for blocks of 2-3 rows against a few hundred texts). Ranks may
    # then differ only where another item scores within float32 rounding of the decisive score.
    rng = np.random.default_rng(3)
    queries = rng.standard_normal((301, 32)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    gallery = rng.standard_normal((n_gallery, 32)).astype(np.float32)
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    query_image = rng.integers(0, 50, 301)
    gallery_image = np.arange(n_gallery) % 50
    gaps = decision_gaps(function, queries, query_image, gallery, gallery_image)
    unblocked = function(queries, query_image, gallery, gallery_image, 50, "max", 10_000)
    for block_size in (1, 2, 3, 7, 64):
        blocked = function(queries, query_image, gallery, gallery_image, 50, "max", block_size)
        differing = np.flatnonzero(blocked.ranks != unblocked.ranks)
        assert (gaps[differing] < 1e-6).all(), (block_size, differing, gaps[differing])
        assert np.abs(blocked.top_k_scores - unblocked.top_k_scores).max() < 1e-6


def random_integer_problem(seed):
    """A problem with 40 queries and 12 images whose integer vectors repeat often (exact ties)."""
    rng = np.random.default_rng(seed)
    gallery_image = np.repeat(np.arange(12), rng.integers(1, 5, 12))
    gallery = rng.integers(-2, 3, (len(gallery_image), 2)).astype(np.float32)
    queries = rng.integers(-2, 3, (40, 2)).astype(np.float32)
    query_image = rng.integers(0, 12, 40)
    return queries, query_image, gallery, gallery_image, 12


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("aggregation", ["max", "mean"])
def test_chunked_rows_equal_unchunked(monkeypatch, seed, aggregation):
    queries, query_image, gallery, gallery_image, n_images = random_integer_problem(seed)
    whole_t2i = rank_text_to_image(queries, query_image, gallery, gallery_image, n_images, aggregation)
    whole_i2t = rank_image_to_text(queries, query_image, gallery, gallery_image, n_images, aggregation)
    monkeypatch.setattr(retrieval, "_CHUNK_ROWS", 3)
    chunked_t2i = rank_text_to_image(queries, query_image, gallery, gallery_image, n_images, aggregation)
    chunked_i2t = rank_image_to_text(queries, query_image, gallery, gallery_image, n_images, aggregation)
    assert_same_result(chunked_t2i, whole_t2i)
    assert_same_result(chunked_i2t, whole_i2t)
    ranks, tied = loop_t2i(queries, query_image, gallery, gallery_image, n_images, aggregation)
    assert chunked_t2i.ranks.tolist() == ranks
    assert chunked_t2i.tied.tolist() == tied
    ranks, tied = loop_i2t(queries, query_image, gallery, gallery_image, aggregation)
    assert chunked_i2t.ranks.tolist() == ranks
    assert chunked_i2t.tied.tolist() == tied


# Distinct ids per image: 0 -> {0, 1}; 1 -> {2, 4}; 2 -> {4}; 3 -> {3, 3}. Only id 4 is shared.
LAYOUT_IDS = np.array([0, 1, 2, 4, 4, 3, 3])
LAYOUT_IMAGES = np.array([0, 0, 1, 1, 2, 3, 3])


def test_max_layout_order():
    layout = retrieval._max_layout(LAYOUT_IDS, LAYOUT_IMAGES, 4, 5)
    # Images without shared vectors first (0, 3), then 1 and 2; each part by exclusive count.
    assert layout.position_of_image.tolist() == [0, 2, 3, 1]
    assert layout.first_sharing == 2
    assert layout.vector_order.tolist() == [0, 3, 2, 1, 4]
    assert layout.runs == [(0, 0, 2, True), (2, 2, 1, True), (0, 3, 1, False)]
    assert layout.shared_columns.tolist() == [[4, 4]]


def test_max_over_layout_values():
    layout = retrieval._max_layout(LAYOUT_IDS, LAYOUT_IMAGES, 4, 5)
    distinct_scores = np.array([[0.125, 0.5, 0.25, 1.0, 0.75], [1.0, -1.0, -2.0, 0.0, -0.5]], dtype=np.float32)
    image_scores = retrieval._max_over_layout(distinct_scores[:, layout.vector_order], layout)
    assert image_scores.tolist() == [[0.5, 0.75, 0.75, 1.0], [1.0, -0.5, -0.5, 0.0]]


def test_count_at_least_own_pairs():
    scores = np.array([[1, 2, 2, 0], [3, 3, 1, 0]], dtype=np.float32)
    at_least, equal = retrieval._count_at_least_own(scores, np.array([1, 0, 1, 1, 0]), np.array([2, 1, 0, 2, 3]))
    assert at_least.tolist() == [3, 2, 2, 3, 4]
    assert equal.tolist() == [1, 2, 2, 1, 1]


def test_block_bounds_lone_last_row_joins():
    assert retrieval._block_bounds(7, 3) == [(0, 3), (3, 7)]


def test_block_bounds_exact_split():
    assert retrieval._block_bounds(6, 2) == [(0, 2), (2, 4), (4, 6)]


def test_block_bounds_single_row():
    assert retrieval._block_bounds(1, 2) == [(0, 1)]


def test_block_bounds_no_rows():
    assert retrieval._block_bounds(0, 2) == []


def test_rows_per_block_capped_by_memory():
    assert retrieval._rows_per_block(2048, 100_000) == retrieval.BLOCK_BYTES // (4 * 100_000)
    assert retrieval._rows_per_block(1, 10) == 2


# ---------------------------------------------------------------------------
# Recall and bootstrap
# ---------------------------------------------------------------------------


def test_recall_at_k_values():
    recalls = recall_at_k(np.array([1, 2, 6, 11]), [1, 5, 10])
    assert recalls[1] == 0.25
    assert recalls[5] == 0.5
    assert recalls[10] == 0.75


def test_recall_at_k_larger_than_gallery():
    assert recall_at_k(np.array([1, 3, 3]), [10]) == {10: 1.0}


def test_recall_at_k_empty_raises():
    with pytest.raises(ValueError, match="rank array is empty"):
        recall_at_k(np.array([], dtype=np.int64), [1])


def test_recall_metrics_mr_mean():
    metrics = retrieval.recall_metrics({"t2i": np.array([1, 2, 6, 11]), "i2t": np.array([1, 1, 1, 20])},
                                       [1, 5, 10])
    assert metrics["t2i_R@1"] == 25.0
    assert metrics["i2t_R@10"] == 75.0
    assert metrics["mR"] == pytest.approx((25 + 50 + 75 + 75 + 75 + 75) / 6)


def test_bootstrap_contains_point_estimate():
    rng = np.random.default_rng(0)
    strata = {"t2i": [rng.integers(1, 30, 400)], "i2t": [rng.integers(1, 20, 80), rng.integers(1, 20, 80)]}
    point = retrieval.recall_metrics({d: np.concatenate(v) for d, v in strata.items()}, [1, 5, 10])
    intervals = bootstrap_ci(strata, [1, 5, 10], n_bootstrap=500, seed=1)
    assert set(intervals) == set(point)
    for key, (low, high) in intervals.items():
        assert low <= point[key] <= high, key
        assert low < high, key


def test_bootstrap_seeded():
    strata = {"t2i": [np.array([1, 2, 3, 9, 12])], "i2t": [np.array([1, 1, 4, 30])]}
    first = bootstrap_ci(strata, [1, 5], n_bootstrap=200, seed=7)
    again = bootstrap_ci(strata, [1, 5], n_bootstrap=200, seed=7)
    other = bootstrap_ci(strata, [1, 5], n_bootstrap=200, seed=8)
    assert first == again
    assert first != other


def test_bootstrap_all_hits_degenerate():
    intervals = bootstrap_ci({"t2i": [np.ones(10)], "i2t": [np.ones(3)]}, [1], n_bootstrap=50)
    assert intervals["t2i_R@1"] == (100.0, 100.0)
    assert intervals["mR"] == (100.0, 100.0)


def test_bootstrap_strata_keep_their_size():
    # Resampling within each stratum keeps 10 hits and 10 misses in every replicate.
    strata = {"t2i": [np.ones(10), np.full(10, 100)], "i2t": [np.ones(4)]}
    intervals = bootstrap_ci(strata, [1], n_bootstrap=100, seed=0)
    assert intervals["t2i_R@1"] == (50.0, 50.0)
    assert intervals["mR"] == (75.0, 75.0)


def test_bootstrap_zero_samples_raises():
    with pytest.raises(ValueError, match="n_bootstrap must be >= 1"):
        bootstrap_ci({"t2i": [np.ones(3)], "i2t": [np.ones(3)]}, [1], n_bootstrap=0)


# ---------------------------------------------------------------------------
# evaluate, write_metrics and the tables
# ---------------------------------------------------------------------------

TEXT_VECTORS = {
    "red roof": (1.0, 0.0), "green field": (0.0, 1.0), "river": (0.6, 0.8), "road": (0.8, 0.6),
    "dark sea": (-1.0, 0.0),
}
IMAGE_IDS = ["a.tif", "b.tif", "c.tif"]


def make_episode(name: str = "all") -> Episode:
    """Captions query the database texts; image queries search the captions."""
    captions = TextSet(["red roof", "river", "road", "red roof"], [0, 1, 2, 2],
                       ["a.tif#0", "b.tif#0", "c.tif#0", "c.tif#1"])
    database = TextSet(["red roof", "green field", "river", "road", "dark sea"], [0, 0, 1, 2, 2],
                       ["a.tif@0", "a.tif@1", "b.tif@0", "c.tif@0", "c.tif@1"])
    image_queries = TextSet(["road", "red roof", "green field"], [0, 1, 1], ["a.tif@q0", "b.tif@q0", "b.tif@q1"])
    return Episode(name=name, n_images=3, t2i_queries=captions, t2i_gallery=database, i2t_queries=image_queries,
                   i2t_gallery=captions)


def evaluate_small(**kwargs):
    options = {"image_ids": IMAGE_IDS, "n_bootstrap": 50}
    options.update(kwargs)
    return evaluate([make_episode()], TEXT_VECTORS, **options)


def test_evaluate_t2i_ranks():
    # Scores per image: "red roof" 1, 0.6, 0.8; "river" 0.8, 1, 0.96; "road" 0.6, 0.96, 1.
    ranks = evaluate_small().ranks
    t2i = ranks[ranks["direction"] == "t2i"]
    assert t2i["rank"].tolist() == [1, 1, 1, 2]
    assert t2i["tied"].tolist() == [False, False, False, False]
    assert t2i["top5"].tolist()[3] == "a.tif c.tif b.tif"


def test_evaluate_i2t_ranks():
    # a.tif queries "road": captions score 0.8, 0.96, 1, 0.8; own "red roof" 0.8 ties c.tif#1.
    # b.tif queries "red roof" and "green field": max scores 1, 0.8, 0.8, 1; own 0.8 ties c.tif#0.
    ranks = evaluate_small().ranks
    i2t = ranks[ranks["direction"] == "i2t"]
    assert i2t["query_id"].tolist() == ["a.tif", "b.tif"]
    assert i2t["query_text"].tolist() == ["road", "red roof | green field"]
    assert i2t["rank"].tolist() == [4, 4]
    assert i2t["tied"].tolist() == [True, True]


def test_evaluate_metrics_values():
    metrics = evaluate_small(ks=(1, 5)).metrics
    assert metrics["metrics"]["t2i_R@1"] == 75.0
    assert metrics["metrics"]["t2i_R@5"] == 100.0
    assert metrics["metrics"]["i2t_R@1"] == 0.0
    assert metrics["metrics"]["i2t_R@5"] == 100.0
    assert metrics["metrics"]["mR"] == pytest.approx(68.75)
    assert metrics["ties"] == {"t2i": 0, "i2t": 2}
    assert metrics["rank_stats"]["t2i"] == {"median": 1.0, "mean": 1.25}
    assert metrics["rank_stats"]["i2t"] == {"median": 4.0, "mean": 4.0}


def test_evaluate_counts():
    counts = evaluate_small().counts
    assert counts == {"t2i_queries": 4, "t2i_gallery_images": 3, "t2i_gallery_texts": 5, "i2t_queries": 2,
                      "i2t_gallery_texts": 4, "episodes": 1}


def test_evaluate_per_fold_and_pooled():
    evaluation = evaluate([make_episode("fold1"), make_episode("fold2")], TEXT_VECTORS, image_ids=IMAGE_IDS,
                          n_bootstrap=20)
    assert [fold["fold"] for fold in evaluation.metrics["per_fold"]] == ["fold1", "fold2"]
    assert evaluation.metrics["per_fold"][0]["metrics"] == evaluation.metrics["metrics"]
    assert evaluation.counts["t2i_queries"] == 8
    assert evaluation.counts["episodes"] == 2
    assert evaluation.ranks["episode"].tolist().count("fold2") == 6


def test_evaluate_per_class():
    metrics = evaluate_small(labels=["roof", "water", "roof"], ks=(1,)).metrics
    assert metrics["per_class"]["t2i"] == {"roof": {"n": 3, "R@1": pytest.approx(200 / 3)},
                                           "water": {"n": 1, "R@1": 100.0}}
    assert metrics["per_class"]["i2t"] == {"roof": {"n": 1, "R@1": 0.0}, "water": {"n": 1, "R@1": 0.0}}


def test_evaluate_per_class_counts_unlabelled(caplog):
    with caplog.at_level("WARNING", logger="trsllava_utils.retrieval"):
        metrics = evaluate_small(labels=["roof", None, "roof"], ks=(1,)).metrics
    assert set(metrics["per_class"]["t2i"]) == {"roof"}
    assert metrics["per_class"]["t2i"]["roof"]["n"] == 3
    assert "leaves out 2 of 6 queries" in caplog.text


def test_evaluate_per_class_without_labels():
    assert evaluate_small().metrics["per_class"] == {}


def test_evaluate_callable_called_once():
    calls = []

    def embed(texts):
        calls.append(list(texts))
        return np.asarray([TEXT_VECTORS[text] for text in texts], dtype=np.float32)

    by_callable = evaluate([make_episode()], embed, image_ids=IMAGE_IDS, n_bootstrap=10)
    by_dict = evaluate_small(n_bootstrap=10)
    assert len(calls) == 1
    assert sorted(calls[0]) == sorted(TEXT_VECTORS)
    assert by_callable.metrics == by_dict.metrics


def test_evaluate_normalises_vectors():
    scaled = {text: 3 * np.asarray(vector) for text, vector in TEXT_VECTORS.items()}
    assert evaluate_small(n_bootstrap=0).ranks.equals(evaluate([make_episode()], scaled, image_ids=IMAGE_IDS,
                                                               n_bootstrap=0).ranks)


def test_evaluate_missing_vector_raises():
    partial = {text: vector for text, vector in TEXT_VECTORS.items() if text != "river"}
    with pytest.raises(ValueError, match=r"1 of 5 texts have no vector, for example \['river'\]"):
        evaluate([make_episode()], partial, image_ids=IMAGE_IDS)


def test_evaluate_zero_vector_raises():
    with pytest.raises(ValueError, match="zero vector"):
        evaluate([make_episode()], {**TEXT_VECTORS, "river": (0.0, 0.0)}, image_ids=IMAGE_IDS)


def test_evaluate_image_ids_mismatch_raises():
    with pytest.raises(ValueError, match="episode all has 3 images but image_ids has 2"):
        evaluate([make_episode()], TEXT_VECTORS, image_ids=IMAGE_IDS[:2])


def test_evaluate_no_bootstrap_null_intervals():
    ci95 = evaluate_small(n_bootstrap=0).metrics["ci95"]
    assert ci95["mR"] == [None, None]
    assert len(ci95) == 7


SCHEMA_KEYS = ["run_name", "created", "package_version", "git_commit", "params", "oracle", "label", "dataset",
               "models", "counts", "unit", "metrics", "ci95", "rank_stats", "ties", "per_fold", "per_class"]
MODELS = {"embedding": {"name": "all-MiniLM-L6-v2", "identity": "minilm@test", "source": "package"},
          "captioner": {"name": "precomputed", "model": None}}
DATASET_INFO = {"name": "demo", "split": "test", "n_images": 3, "n_captions": 4}


def test_write_metrics_schema(tmp_path):
    params = RunParams(run_name="unit", bootstrap_samples=50)
    document = write_metrics(evaluate_small(), tmp_path, params=params, dataset_info=DATASET_INFO, models=MODELS)
    on_disk = json.loads((tmp_path / "metrics.json").read_text(encoding="utf-8"))
    assert list(on_disk) == SCHEMA_KEYS
    assert on_disk == json.loads(json.dumps(document))
    assert on_disk["unit"] == "percent"
    assert on_disk["oracle"] is False
    assert on_disk["label"] == "method (training-free)"
    assert list(on_disk["metrics"]) == ["t2i_R@1", "t2i_R@5", "t2i_R@10", "i2t_R@1", "i2t_R@5", "i2t_R@10", "mR"]
    assert on_disk["counts"]["t2i_queries"] == 4
    assert on_disk["params"]["run_name"] == "unit"


def test_write_metrics_ranks_csv(tmp_path):
    params = RunParams(run_name="unit", bootstrap_samples=50)
    evaluation = evaluate_small()
    write_metrics(evaluation, tmp_path, params=params, dataset_info=DATASET_INFO, models=MODELS)
    frame = retrieval.read_ranks(tmp_path / "ranks.csv")
    assert list(frame.columns) == list(retrieval.RANKS_COLUMNS)
    assert frame["rank"].tolist() == evaluation.ranks["rank"].tolist()
    assert frame["label"].tolist() == [""] * 6
    assert frame["tied"].tolist() == evaluation.ranks["tied"].tolist()


def test_write_metrics_oracle_label(tmp_path):
    params = RunParams(run_name="oracle", captioner="human-holdout", bootstrap_samples=50)
    document = write_metrics(evaluate_small(), tmp_path, params=params, dataset_info=DATASET_INFO, models=MODELS)
    assert document["oracle"] is True
    assert document["label"] == "human-holdout oracle (upper bound)"


def test_write_metrics_settings_mismatch_raises(tmp_path):
    params = RunParams(run_name="unit", bootstrap_samples=50, aggregation="mean")
    with pytest.raises(ValueError, match="aggregation='max' but the run parameters say 'mean'"):
        write_metrics(evaluate_small(), tmp_path, params=params, dataset_info=DATASET_INFO, models=MODELS)


def test_write_metrics_missing_model_key_raises(tmp_path):
    params = RunParams(run_name="unit", bootstrap_samples=50)
    models = {"embedding": {"name": "x"}, "captioner": {"name": "precomputed", "model": None}}
    with pytest.raises(ValueError, match=r"models\['embedding'\] is missing \['identity', 'source'\]"):
        write_metrics(evaluate_small(), tmp_path, params=params, dataset_info=DATASET_INFO, models=models)


def test_hardest_queries_order():
    frame = pd.DataFrame({"direction": ["t2i", "t2i", "i2t", "t2i"], "episode": ["all"] * 4,
                          "query_id": ["q1", "q2", "q3", "q4"], "rank": [3, 9, 50, 9]})
    hardest = hardest_queries(frame, n=2)
    assert hardest["query_id"].tolist() == ["q2", "q4"]


def test_hardest_queries_bad_direction_raises():
    with pytest.raises(ValueError, match="unknown direction 'x2y'"):
        hardest_queries(pd.DataFrame(), direction="x2y")


def test_metrics_table_rows():
    evaluation = evaluate([make_episode("fold1"), make_episode("fold2")], TEXT_VECTORS, image_ids=IMAGE_IDS,
                          n_bootstrap=0)
    table = retrieval.metrics_table(evaluation.metrics)
    assert table.index.tolist() == ["pooled", "fold1", "fold2"]
    assert table.loc["fold2", "t2i_R@1"] == 75.0


def test_retrieval_examples_t2i():
    examples = retrieval.retrieval_examples(evaluate_small(), ["c.tif#1"])
    assert examples["retrieved_id"].tolist() == ["a.tif", "c.tif", "b.tif"]
    assert examples["correct"].tolist() == [False, True, False]
    assert examples["score"].tolist() == pytest.approx([1.0, 0.8, 0.6])


def test_retrieval_examples_unknown_query_raises():
    with pytest.raises(ValueError, match=r"query ids not found among the t2i queries of episode all: \['x#0'\]"):
        retrieval.retrieval_examples(evaluate_small(), ["x#0"])


def test_retrieval_examples_i2t():
    examples = retrieval.retrieval_examples(evaluate_small(), ["a.tif"], direction="i2t")
    assert examples["retrieved_id"].tolist() == ["c.tif#0", "b.tif#0", "a.tif#0", "c.tif#1"]
    assert examples["retrieved_text"].tolist()[0] == "road"
    assert examples["correct"].tolist() == [False, False, True, False]


# ---------------------------------------------------------------------------
# Real data: the RSICD oracle with TF-IDF vectors (repeated captions make exact ties)
# ---------------------------------------------------------------------------


def test_rsicd_oracle_real_ties(data_root):
    from sklearn.feature_extraction.text import TfidfVectorizer

    from trsllava_utils.data import load_dataset
    from trsllava_utils.episodes import holdout_episodes

    dataset = load_dataset("rsicd", data_root=data_root)
    episodes = holdout_episodes(dataset)
    texts = sorted({text for episode in episodes for text in episode.all_texts()})
    tfidf = TfidfVectorizer(max_features=256).fit_transform(texts).toarray().astype(np.float32)
    nonzero = np.linalg.norm(tfidf, axis=1) > 0
    table = {text: vector for text, vector, keep in zip(texts, tfidf, nonzero) if keep}
    if not nonzero.all():
        pytest.skip("a caption has no TF-IDF term")
    evaluation = evaluate(episodes[:1], table, image_ids=dataset.image_ids, n_bootstrap=0)
    assert evaluation.counts["t2i_queries"] == 1093
    assert evaluation.counts["t2i_gallery_texts"] == 4372
    assert evaluation.metrics["ties"]["t2i"] > 0

    # The same ranks from one full score matrix and a per-query loop over images.
    episode = episodes[0]
    queries = np.stack([table[text] for text in episode.t2i_queries.texts])
    gallery = np.stack([table[text] for text in episode.t2i_gallery.texts])
    # TF-IDF rows are L2-normalised already, so evaluate used these exact vectors.
    scores = queries @ gallery.T
    owners = episode.t2i_gallery.image_index
    image_scores = np.full((len(queries), dataset.n_images), -np.inf, dtype=np.float32)
    for image in range(dataset.n_images):
        image_scores[:, image] = scores[:, owners == image].max(axis=1)
    expected = [int((row >= row[own]).sum()) for row, own in zip(image_scores, episode.t2i_queries.image_index)]
    t2i = evaluation.results["fold1"]["t2i"]
    assert t2i.ranks.tolist() == expected
