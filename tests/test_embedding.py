"""TextVectors files, nearest neighbours and 2-D projections, on vectors written out by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from trsllava_utils.embedding import EmbedStats, TextVectors, nearest_neighbours, project_2d

UNIT = np.eye(3, dtype=np.float32)


def test_text_vectors_round_trip(tmp_path: Path) -> None:
    table = TextVectors(["a plane", "a ship", "ünïcode text"], UNIT, "m@0123456789ab")
    path = table.save(tmp_path / "run" / "embeddings.npz")
    assert path == tmp_path / "run" / "embeddings.npz"
    loaded = TextVectors.load(path)
    assert loaded.texts == ["a plane", "a ship", "ünïcode text"]
    assert loaded.model_identity == "m@0123456789ab"
    assert loaded.vectors.dtype == np.float32
    assert np.array_equal(loaded.vectors, UNIT)
    assert not list(path.parent.glob(".*.tmp"))


def test_text_vectors_lookup_order() -> None:
    table = TextVectors(["a", "b", "c"], UNIT, "m")
    looked_up = table.lookup(["c", "a", "c"])
    assert np.array_equal(looked_up, UNIT[[2, 0, 2]])
    assert table.lookup([]).shape == (0, 3)


def test_text_vectors_lookup_missing() -> None:
    table = TextVectors(["a", "b", "c"], UNIT, "m")
    with pytest.raises(KeyError, match="'zebra'"):
        table.lookup(["a", "zebra", "yak"])


def test_text_vectors_repeated_text() -> None:
    with pytest.raises(ValueError, match="1 repeated texts"):
        TextVectors(["a", "b", "a"], UNIT, "m")


def test_text_vectors_shape_mismatch() -> None:
    with pytest.raises(ValueError, match=r"2 texts but vectors of shape \(3, 3\)"):
        TextVectors(["a", "b"], UNIT, "m")


def test_text_vectors_load_missing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="run notebooks/02_embedding.ipynb first"):
        TextVectors.load(tmp_path / "embeddings.npz")


def test_text_vectors_load_wrong_file(tmp_path: Path) -> None:
    path = tmp_path / "other.npz"
    np.savez(path, vectors=UNIT)
    with pytest.raises(ValueError, match=r"lacks \['model_identity', 'texts'\]"):
        TextVectors.load(path)


def test_embed_stats_rate() -> None:
    stats = EmbedStats(n_texts=100, n_unique=80, n_cached=30, n_computed=50, n_invalid=0, seconds=2.0)
    assert stats.texts_per_second == 50.0
    assert stats.as_dict()["texts_per_second"] == 50.0


def test_nearest_neighbours_hand_scores() -> None:
    gallery = np.array([[1, 0], [0.6, 0.8], [0, 1], [0.6, 0.8]], dtype=np.float32)
    queries = np.array([[0.8, 0.6]], dtype=np.float32)
    table = nearest_neighbours(queries, ["q"], gallery, ["east", "tie-1", "north", "tie-2"], k=3)
    # Scores: east 0.8, tie-1 0.48 + 0.48 = 0.96, north 0.6, tie-2 0.96; ties keep gallery order.
    assert table["neighbour"].tolist() == ["tie-1", "tie-2", "east"]
    assert table["rank"].tolist() == [1, 2, 3]
    assert table["score"].tolist() == pytest.approx([0.96, 0.96, 0.8])
    assert table["gallery_index"].tolist() == [1, 3, 0]


def test_nearest_neighbours_k_clipped() -> None:
    table = nearest_neighbours(UNIT[:2], ["q1", "q2"], UNIT[:2], ["g1", "g2"], k=5)
    assert len(table) == 4
    assert table[table["query"] == "q2"]["neighbour"].tolist() == ["g2", "g1"]


def test_nearest_neighbours_length_mismatch() -> None:
    with pytest.raises(ValueError, match="1 query texts for 2 vectors"):
        nearest_neighbours(UNIT[:2], ["q1"], UNIT, ["a", "b", "c"])


def test_project_pca_line() -> None:
    # Points on a line in 3-D project onto the first axis with their spacing kept.
    points = np.array([[0, 0, 0], [1, 1, 0], [2, 2, 0], [3, 3, 0]], dtype=np.float32)
    projected = project_2d(points, method="pca")
    assert projected.shape == (4, 2)
    gaps = np.abs(np.diff(projected[:, 0]))
    assert gaps == pytest.approx([np.sqrt(2)] * 3, abs=1e-5)
    assert np.abs(projected[:, 1]).max() < 1e-5


def test_project_tsne_seeded() -> None:
    rng = np.random.default_rng(0)
    points = rng.standard_normal((12, 8)).astype(np.float32)
    first = project_2d(points, method="tsne", seed=3)
    assert first.shape == (12, 2)
    assert np.array_equal(first, project_2d(points, method="tsne", seed=3))


def test_project_unknown_method() -> None:
    with pytest.raises(ValueError, match="use 'pca' or 'tsne'"):
        project_2d(UNIT, method="umap")


def test_project_too_few_points() -> None:
    with pytest.raises(ValueError, match="at least 3 vectors"):
        project_2d(UNIT[:2])


def test_text_vectors_keep_model_description(tmp_path):
    table = TextVectors(["a", "b", "c"], UNIT, "m@1", model_name="m", source="package p at /x")
    loaded = TextVectors.load(table.save(tmp_path / "e.npz"))
    assert loaded.model_name == "m"
    assert loaded.source == "package p at /x"
