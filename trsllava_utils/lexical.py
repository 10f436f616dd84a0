"""Lexical baselines with the embedder interface: TF-IDF and BM25.

Both are fitted on the texts of the run, queries and gallery together, so
that every word of a query has a document frequency. They return dense,
L2-normalised float32 term vectors, which the retrieval code treats like
those of any neural embedder: the dot product of two rows is their cosine.

Both tokenise with scikit-learn's default word pattern (lower case, words of
two or more letters or digits). Words that were not seen during ``fit`` are
ignored, so a text made only of unseen words gets an all-zero vector, whose
dot product with every other text is 0.

NOTE: vectors are dense with one column per vocabulary word, so memory grows
as texts x vocabulary (an RSICD test split, about 3,300 distinct captions and
3,000 words, takes about 40 MB).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence

import numpy as np
from scipy import sparse
from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer

from .embedders import Embedder, EmbedderError, l2_normalise

logger = logging.getLogger(__name__)


def _vocabulary_hash(vocabulary: dict[str, int], weights: np.ndarray, settings: str) -> str:
    digest = hashlib.sha256(settings.encode("utf-8"))
    for word in sorted(vocabulary, key=vocabulary.__getitem__):
        digest.update(word.encode("utf-8"))
        digest.update(b"\0")
    digest.update(np.ascontiguousarray(weights, dtype="<f8").tobytes())
    return digest.hexdigest()[:12]


class _LexicalEmbedder(Embedder):
    needs_fit = True
    cacheable = False

    def __init__(self, name: str) -> None:
        self.name = name
        self.identity = f"{name}@unfitted"
        self.source = "scikit-learn, not fitted yet"
        self.dimension = None
        self.is_fitted = False

    def _require_fitted(self) -> None:
        if not self.is_fitted:
            raise EmbedderError(f"{self.name} must be fitted on the run's texts first: call embedder.fit(texts)")

    def _log_empty(self, vectors: np.ndarray) -> None:
        empty = int(np.count_nonzero(~vectors.any(axis=1)))
        if empty:
            logger.warning("%s: %d of %d texts have no word of the fitted vocabulary; their vectors are zero",
                           self.name, empty, len(vectors))


class TfidfEmbedder(_LexicalEmbedder):
    """TF-IDF term vectors (scikit-learn ``TfidfVectorizer``: smooth idf, raw term counts, L2 norm).

    The dot product of two returned rows is the cosine of their TF-IDF vectors.
    """

    def __init__(self) -> None:
        super().__init__("tfidf")
        self.vectorizer = TfidfVectorizer(lowercase=True, dtype=np.float32)

    def fit(self, texts: Sequence[str]) -> None:
        """Learn the vocabulary and the inverse document frequencies of ``texts``."""
        texts = list(dict.fromkeys(texts))
        if not texts:
            raise ValueError("tfidf: cannot fit on an empty list of texts")
        self.vectorizer.fit(texts)
        vocabulary = self.vectorizer.vocabulary_
        self.dimension = len(vocabulary)
        self.identity = f"tfidf@{_vocabulary_hash(vocabulary, self.vectorizer.idf_, 'tfidf-smooth-l2')}"
        self.source = f"scikit-learn TfidfVectorizer fitted on {len(texts)} distinct texts, {self.dimension} words"
        self.is_fitted = True

    def encode(self, texts: Sequence[str], batch_size: int = 64, show_progress: bool = False) -> np.ndarray:
        """Return L2-normalised TF-IDF rows as a dense float32 array."""
        self._require_fitted()
        vectors = self.vectorizer.transform(list(texts)).toarray().astype(np.float32)
        self._log_empty(vectors)
        return vectors


class BM25Embedder(_LexicalEmbedder):
    """BM25 term weights, L2-normalised: ranking by dot product is the cosine of BM25 weight vectors.

    Each text, query or gallery alike, gets the BM25 document weight of each
    of its words ``w``::

        weight(w) = idf(w) * tf * (k1 + 1) / (tf + k1 * (1 - b + b * length / mean_length))
        idf(w)    = ln(1 + (N - df(w) + 0.5) / (df(w) + 0.5))

    with ``tf`` the count of ``w`` in the text, ``length`` its word count, and
    ``N``, ``df`` and ``mean_length`` taken from the fitted texts (the idf is
    the non-negative Lucene form). The row is then scaled to unit L2 norm.

    This is a symmetric variant, chosen because the retrieval code compares
    L2-normalised vectors and the same text can be a query in one direction
    and a gallery item in the other (and in every fold of the human-holdout
    oracle). It keeps BM25's saturation of repeated words, its length
    normalisation and its idf, but it is not Okapi scoring: Okapi sums the
    gallery weights of the query's words, without the query-side weights and
    without the gallery norm. :meth:`okapi_scores` computes Okapi scores for
    comparison.

    Args:
        k1: term-frequency saturation (Okapi's usual 1.2 to 2.0).
        b: strength of the length normalisation, from 0 (none) to 1 (full).
    """

    def __init__(self, k1: float = 1.5, b: float = 0.75) -> None:
        super().__init__("bm25")
        if k1 < 0 or not 0.0 <= b <= 1.0:
            raise ValueError(f"bm25 needs k1 >= 0 and 0 <= b <= 1, got k1={k1}, b={b}")
        self.k1 = k1
        self.b = b
        self.counter = CountVectorizer(lowercase=True, dtype=np.float64)

    def fit(self, texts: Sequence[str]) -> None:
        """Learn the vocabulary, document frequencies and mean length of ``texts``."""
        texts = list(dict.fromkeys(texts))
        if not texts:
            raise ValueError("bm25: cannot fit on an empty list of texts")
        counts = self.counter.fit_transform(texts)
        n_docs = counts.shape[0]
        document_frequency = np.asarray((counts > 0).sum(axis=0)).ravel()
        self.idf = np.log1p((n_docs - document_frequency + 0.5) / (document_frequency + 0.5))
        self.mean_length = float(np.mean(self._lengths(texts)))
        self.dimension = len(self.counter.vocabulary_)
        settings = f"bm25-k1={self.k1}-b={self.b}-mean_length={self.mean_length!r}"
        self.identity = f"bm25@{_vocabulary_hash(self.counter.vocabulary_, self.idf, settings)}"
        self.source = (f"BM25 (k1={self.k1}, b={self.b}) fitted on {n_docs} distinct texts, "
                       f"{self.dimension} words")
        self.is_fitted = True

    def _lengths(self, texts: Sequence[str]) -> np.ndarray:
        analyse = self.counter.build_analyzer()
        return np.array([len(analyse(text)) for text in texts], dtype=np.float64)

    def term_weights(self, texts: Sequence[str]) -> sparse.csr_matrix:
        """Return the unnormalised BM25 weight of each vocabulary word in each text (sparse)."""
        self._require_fitted()
        texts = list(texts)
        counts = sparse.csr_matrix(self.counter.transform(texts), dtype=np.float64)
        lengths = self._lengths(texts)
        scale = self.k1 * (1.0 - self.b + self.b * lengths / self.mean_length)
        rows = np.repeat(np.arange(counts.shape[0]), np.diff(counts.indptr))
        tf = counts.data
        counts.data = self.idf[counts.indices] * tf * (self.k1 + 1.0) / (tf + scale[rows])
        return counts

    def encode(self, texts: Sequence[str], batch_size: int = 64, show_progress: bool = False) -> np.ndarray:
        """Return L2-normalised BM25 weight rows as a dense float32 array."""
        vectors = l2_normalise(self.term_weights(texts).toarray())
        self._log_empty(vectors)
        return vectors

    def okapi_scores(self, queries: Sequence[str], documents: Sequence[str]) -> np.ndarray:
        """Return classic Okapi BM25 scores, ``(len(queries), len(documents))``.

        The score of a document is the sum, over the query's words counted
        with repeats, of the document's BM25 weight of that word.
        """
        self._require_fitted()
        query_counts = sparse.csr_matrix(self.counter.transform(list(queries)), dtype=np.float64)
        return np.asarray((query_counts @ self.term_weights(documents).T).toarray())
