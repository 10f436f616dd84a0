"""A persistent store of text vectors, keyed by model identity and text hash.

All runs share one SQLite file under ``outputs/cache/``, so an ablation never
embeds the same text twice with the same model. Safety properties:

- every write is one SQLite transaction in write-ahead-log mode, so a process
  killed mid-write leaves the store as it was before that transaction;
- each row carries its dimension and a BLAKE2b checksum over the model
  identity, the text hash and the vector bytes. A row whose length, checksum,
  values (NaN, infinity) or norm is wrong is reported as invalid, so that
  :func:`trsllava_utils.embedding.embed_texts` recomputes and overwrites it;
- rows are looked up by the model identity (name plus a hash of the weight
  files), and the checksum covers it, so a vector made by one model is never
  returned for another;
- a file that is not a readable SQLite database is moved aside with a warning
  and a new store is created, because the store is a cache, never the only
  copy of a result.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .paths import cache_dir

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
_QUERY_CHUNK = 500  # host parameters per SELECT; SQLite's default limit is 32766
_NORM_TOLERANCE = 1e-3

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS vectors (
    model TEXT NOT NULL,
    text_hash TEXT NOT NULL,
    dim INTEGER NOT NULL,
    vector BLOB NOT NULL,
    checksum TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (model, text_hash)
) WITHOUT ROWID;
"""


def text_hash(text: str) -> str:
    """Return the SHA-256 hex digest of the UTF-8 bytes of ``text`` (exact text, no normalising)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def row_checksum(model_identity: str, hashed_text: str, blob: bytes) -> str:
    """Return the checksum stored with a row: BLAKE2b-128 over identity, text hash and vector bytes."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(model_identity.encode("utf-8"))
    digest.update(b"\0")
    digest.update(hashed_text.encode("ascii"))
    digest.update(b"\0")
    digest.update(blob)
    return digest.hexdigest()


@dataclass
class StoreLookup:
    """Result of :meth:`VectorStore.lookup`: valid vectors by input position, and invalid positions."""

    found: dict[int, np.ndarray] = field(default_factory=dict)
    invalid: list[int] = field(default_factory=list)


class VectorStoreError(RuntimeError):
    """The vector store cannot be opened or written; the message names the file."""


class VectorStore:
    """SQLite store of float32 vectors keyed by ``(model identity, SHA-256 of the text)``.

    Args:
        path: the SQLite file; by default ``outputs/cache/vectors.sqlite``.
        timeout_s: how long a writer waits for another process's lock, in seconds.
    """

    def __init__(self, path: str | os.PathLike | None = None, timeout_s: float = 60.0) -> None:
        self.path = Path(path) if path is not None else cache_dir() / "vectors.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.timeout_s = timeout_s
        self._connection = self._open()

    # Opening -----------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None)
        connection.execute("PRAGMA journal_mode=WAL")
        # FULL syncs the WAL on every commit, so a commit survives power loss too.
        connection.execute("PRAGMA synchronous=FULL")
        connection.executescript(_SCHEMA)
        connection.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
                           (str(SCHEMA_VERSION),))
        version = connection.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
        if int(version) != SCHEMA_VERSION:
            connection.close()
            raise VectorStoreError(f"{self.path}: store schema version {version}, this code reads "
                                   f"version {SCHEMA_VERSION}; delete the file or point VectorStore elsewhere")
        return connection

    def _open(self) -> sqlite3.Connection:
        try:
            return self._connect()
        except sqlite3.DatabaseError as exc:
            if not self.path.exists():
                raise VectorStoreError(f"{self.path}: cannot create the vector store: {exc}; check that the folder "
                                       "is writable") from exc
            aside = self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
            logger.warning("vector store %s is not a readable SQLite database (%s); moved it to %s "
                           "and started an empty store", self.path, exc, aside)
            os.replace(self.path, aside)
            for suffix in ("-wal", "-shm"):
                sidecar = Path(f"{self.path}{suffix}")
                if sidecar.exists():
                    os.replace(sidecar, Path(f"{aside}{suffix}"))
            return self._connect()

    def close(self) -> None:
        """Close the connection; the object cannot be used afterwards."""
        self._connection.close()

    def __enter__(self) -> "VectorStore":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"VectorStore({str(self.path)!r})"

    # Reading -----------------------------------------------------------------

    def lookup(self, model_identity: str, texts: Sequence[str]) -> StoreLookup:
        """Return the stored vectors of ``texts`` made by ``model_identity``.

        Positions missing from the result's ``found`` either have no row or a
        row that fails validation; the latter are also listed in ``invalid``.
        A text repeated in ``texts`` is found at each of its positions.
        """
        positions: dict[str, list[int]] = {}
        for position, text in enumerate(texts):
            positions.setdefault(text_hash(text), []).append(position)
        result = StoreLookup()
        hashes = list(positions)
        for start in range(0, len(hashes), _QUERY_CHUNK):
            chunk = hashes[start:start + _QUERY_CHUNK]
            marks = ",".join("?" * len(chunk))
            rows = self._connection.execute(
                f"SELECT text_hash, dim, vector, checksum FROM vectors WHERE model = ? AND text_hash IN ({marks})",
                (model_identity, *chunk),
            ).fetchall()
            for hashed, dim, blob, checksum in rows:
                vector = self._decode_row(model_identity, hashed, dim, blob, checksum)
                if vector is None:
                    result.invalid.extend(positions[hashed])
                    continue
                for position in positions[hashed]:
                    result.found[position] = vector
        if result.invalid:
            logger.warning("vector store %s: %d invalid rows for model %s will be recomputed",
                           self.path, len(result.invalid), model_identity)
        return result

    @staticmethod
    def _decode_row(model_identity: str, hashed: str, dim: int, blob: bytes, checksum: str) -> np.ndarray | None:
        if not isinstance(blob, bytes) or dim <= 0 or len(blob) != 4 * dim:
            return None
        if row_checksum(model_identity, hashed, blob) != checksum:
            return None
        vector = np.frombuffer(blob, dtype="<f4").astype(np.float32)
        if not np.all(np.isfinite(vector)):
            return None
        norm = float(np.linalg.norm(vector))
        if norm != 0.0 and abs(norm - 1.0) > _NORM_TOLERANCE:
            return None
        return vector

    # Writing -----------------------------------------------------------------

    def put(self, model_identity: str, texts: Sequence[str], vectors: np.ndarray) -> int:
        """Write the vectors of ``texts`` in one transaction, replacing existing rows; return the row count.

        Raises:
            ValueError: when the lengths differ, or a vector is not finite.
        """
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] != len(texts):
            raise ValueError(f"expected a ({len(texts)}, d) array of vectors, got shape {vectors.shape}")
        if not np.all(np.isfinite(vectors)):
            raise ValueError(f"rejected non-finite vectors for model {model_identity}; no row was written. "
                             "Check the model output for NaN or infinite values")
        dim = int(vectors.shape[1])
        now = time.time()
        rows = []
        for text, vector in zip(texts, vectors):
            hashed = text_hash(text)
            blob = vector.astype("<f4").tobytes()
            rows.append((model_identity, hashed, dim, blob, row_checksum(model_identity, hashed, blob), now))
        connection = self._connection
        connection.execute("BEGIN IMMEDIATE")
        try:
            connection.executemany(
                "INSERT OR REPLACE INTO vectors (model, text_hash, dim, vector, checksum, created) "
                "VALUES (?, ?, ?, ?, ?, ?)", rows)
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")
        return len(rows)

    def delete_model(self, model_identity: str) -> int:
        """Delete every row of ``model_identity``; return how many were deleted."""
        connection = self._connection
        connection.execute("BEGIN IMMEDIATE")
        cursor = connection.execute("DELETE FROM vectors WHERE model = ?", (model_identity,))
        connection.execute("COMMIT")
        return cursor.rowcount

    # Summaries ---------------------------------------------------------------

    def count(self, model_identity: str | None = None) -> int:
        """Return the number of rows, of one model or of all."""
        if model_identity is None:
            return self._connection.execute("SELECT COUNT(*) FROM vectors").fetchone()[0]
        return self._connection.execute("SELECT COUNT(*) FROM vectors WHERE model = ?",
                                        (model_identity,)).fetchone()[0]

    def models(self) -> dict[str, int]:
        """Return the row count of each model identity in the store."""
        rows = self._connection.execute("SELECT model, COUNT(*) FROM vectors GROUP BY model ORDER BY model")
        return {model: count for model, count in rows}
