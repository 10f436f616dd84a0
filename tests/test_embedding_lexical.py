"""TF-IDF and BM25 embedders, checked against weights worked out by hand on a three-text corpus."""

from __future__ import annotations

import numpy as np
import pytest

from trsllava_utils.embedders import EmbedderError
from trsllava_utils.embedding import embed_texts, load_embedder
from trsllava_utils.lexical import BM25Embedder

# Words: red car / red bus / blue car car. N = 3, lengths 2, 2, 3, mean length 7/3.
# Document frequencies: red 2, car 2, bus 1, blue 1.
CORPUS = ["red car", "red bus", "blue car car"]


def _column(embedder, word: str) -> int:
    vectorizer = getattr(embedder, "vectorizer", None) or embedder.counter
    return vectorizer.vocabulary_[word]


def test_tfidf_hand_cosine() -> None:
    tfidf = load_embedder("tfidf")
    tfidf.fit(CORPUS)
    vectors = tfidf.encode(CORPUS)
    # Smooth idf = ln((1 + N) / (1 + df)) + 1: df 2 gives 1.287682, df 1 gives 1.693147.
    # "red car" = (1.287682, 1.287682) / norm; "blue car car" = (car 2 * 1.287682, blue 1.693147) / norm.
    # Their cosine: 0.707107 * 2.575364 / hypot(2.575364, 1.693147) = 0.590852.
    assert float(vectors[0] @ vectors[2]) == pytest.approx(0.590852, abs=1e-6)
    assert vectors[0, _column(tfidf, "red")] == pytest.approx(0.707107, abs=1e-6)
    assert float(vectors[1] @ vectors[2]) == 0.0  # no shared word
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0)


def test_tfidf_identity_follows_fit() -> None:
    first, second = load_embedder("tfidf"), load_embedder("tfidf")
    assert first.identity == "tfidf@unfitted"
    first.fit(CORPUS)
    second.fit(CORPUS + ["a green field"])
    assert first.identity.startswith("tfidf@")
    assert first.identity != second.identity
    assert first.dimension == 4
    assert first.needs_fit


def test_bm25_hand_weights() -> None:
    bm25 = BM25Embedder(k1=1.5, b=0.75)
    bm25.fit(CORPUS)
    weights = bm25.term_weights(CORPUS).toarray()
    # idf = ln(1 + (N - df + 0.5) / (df + 0.5)): df 2 gives ln(1.6) = 0.470004, df 1 gives ln(8/3) = 0.980829.
    # Length factor k1 * (1 - b + b * length / mean): 1.339286 for length 2, 1.821429 for length 3.
    # red in "red car": 0.470004 * 1 * 2.5 / (1 + 1.339286) = 0.502294.
    # car in "blue car car": 0.470004 * 2 * 2.5 / (2 + 1.821429) = 0.614958.
    # blue in "blue car car": 0.980829 * 2.5 / (1 + 1.821429) = 0.869089.
    assert weights[0, _column(bm25, "red")] == pytest.approx(0.502294, abs=1e-6)
    assert weights[0, _column(bm25, "car")] == pytest.approx(0.502294, abs=1e-6)
    assert weights[2, _column(bm25, "car")] == pytest.approx(0.614958, abs=1e-6)
    assert weights[2, _column(bm25, "blue")] == pytest.approx(0.869089, abs=1e-6)
    assert weights[2, _column(bm25, "red")] == 0.0


def test_bm25_dot_is_weight_cosine() -> None:
    bm25 = load_embedder("bm25")
    bm25.fit(CORPUS)
    vectors = bm25.encode(CORPUS)
    # 0.707107 * 0.614958 / hypot(0.614958, 0.869089) = 0.408434.
    assert float(vectors[0] @ vectors[2]) == pytest.approx(0.408434, abs=1e-6)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0)
    assert vectors.dtype == np.float32


def test_bm25_okapi_hand_scores() -> None:
    bm25 = BM25Embedder()
    bm25.fit(CORPUS)
    scores = bm25.okapi_scores(["red car"], CORPUS)
    # red car -> 0.502294 + 0.502294; red bus -> 0.502294; blue car car -> 0.614958.
    assert scores.shape == (1, 3)
    assert scores[0].tolist() == pytest.approx([1.004588, 0.502294, 0.614958], abs=1e-6)


def test_bm25_rare_word_ranks_first() -> None:
    captions = ["a ship in the harbour", "many cars in a parking lot", "a plane near the runway",
                "a ship and boats in the harbour", "green trees near a river"]
    bm25 = load_embedder("bm25")
    bm25.fit(captions + ["a plane on the runway"])
    query = bm25.encode(["a plane on the runway"])
    order = np.argsort(-(bm25.encode(captions) @ query[0]))
    assert order[0] == 2


def test_lexical_unseen_words_zero() -> None:
    bm25 = load_embedder("bm25")
    bm25.fit(CORPUS)
    vectors = bm25.encode(["zebra yak", "red"])
    assert not vectors[0].any()
    assert vectors[1, _column(bm25, "red")] == pytest.approx(1.0)


def test_lexical_unfitted_raises() -> None:
    for name in ("tfidf", "bm25"):
        embedder = load_embedder(name)
        with pytest.raises(EmbedderError, match=f"{name} must be fitted"):
            embedder.encode(["red car"])
        with pytest.raises(EmbedderError, match="call embedder.fit"):
            embed_texts(embedder, ["red car"], show_progress=False)


def test_lexical_bypasses_store(tmp_path) -> None:
    from trsllava_utils.vector_store import VectorStore

    tfidf = load_embedder("tfidf")
    tfidf.fit(CORPUS)
    with VectorStore(tmp_path / "vectors.sqlite") as store:
        _, stats = embed_texts(tfidf, CORPUS, store=store, show_progress=False)
        assert stats.n_computed == 3
        assert store.count() == 0


def test_bm25_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError, match="0 <= b <= 1"):
        BM25Embedder(b=1.5)


def test_lexical_fit_empty() -> None:
    with pytest.raises(ValueError, match="empty list"):
        load_embedder("bm25").fit([])
