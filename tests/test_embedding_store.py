"""Vector store robustness and embed_texts bookkeeping, with a fake embedder whose vectors are known."""

from __future__ import annotations

import hashlib
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from trsllava_utils.embedders import Embedder, EmbedderError, l2_normalise
from trsllava_utils.embedding import embed_texts
from trsllava_utils.vector_store import VectorStore, row_checksum, text_hash


class FakeEmbedder(Embedder):
    """Deterministic 4-d vectors derived from the text's SHA-256; counts the texts it encodes."""

    def __init__(self, name: str = "fake") -> None:
        self.name = name
        self.identity = f"{name}@0123456789ab"
        self.source = "test"
        self.dimension = 4
        self.encoded: list[str] = []

    def encode(self, texts: Sequence[str], batch_size: int = 64, show_progress: bool = False) -> np.ndarray:
        self.encoded.extend(texts)
        return fake_vectors(texts)


def fake_vectors(texts: Sequence[str]) -> np.ndarray:
    rows = [np.frombuffer(hashlib.sha256(t.encode()).digest()[:4], dtype=np.uint8).astype(np.float32) + 1
            for t in texts]
    return l2_normalise(np.array(rows))


@pytest.fixture
def store(tmp_path: Path) -> VectorStore:
    with VectorStore(tmp_path / "vectors.sqlite") as opened:
        yield opened


def test_text_hash_is_sha256() -> None:
    assert text_hash("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_store_round_trip_exact(store: VectorStore) -> None:
    texts = ["a plane", "a ship"]
    vectors = fake_vectors(texts)
    assert store.put("m@1", texts, vectors) == 2
    found = store.lookup("m@1", ["a ship", "missing", "a plane", "a ship"])
    assert sorted(found.found) == [0, 2, 3]
    assert np.array_equal(found.found[0], vectors[1])
    assert np.array_equal(found.found[2], vectors[0])
    assert found.invalid == []


def test_store_other_identity_gets_nothing(store: VectorStore) -> None:
    store.put("model-a@1", ["a plane"], fake_vectors(["a plane"]))
    assert store.lookup("model-b@1", ["a plane"]).found == {}
    assert store.lookup("model-a@2", ["a plane"]).found == {}
    assert store.models() == {"model-a@1": 1}


def test_store_relabelled_row_is_invalid(store: VectorStore) -> None:
    # A row moved to another model by hand fails its checksum, which covers the identity.
    store.put("model-a@1", ["a plane"], fake_vectors(["a plane"]))
    store._connection.execute("UPDATE vectors SET model = 'model-b@1'")
    found = store.lookup("model-b@1", ["a plane"])
    assert found.found == {}
    assert found.invalid == [0]


def _overwrite_blob(store: VectorStore, blob: bytes, fix_checksum: bool) -> None:
    hashed = text_hash("a plane")
    checksum = row_checksum("m@1", hashed, blob) if fix_checksum else "0" * 32
    store._connection.execute("UPDATE vectors SET vector = ?, checksum = ? WHERE text_hash = ?",
                              (blob, checksum, hashed))


@pytest.mark.parametrize("case", ["short", "nan", "not_unit", "bad_checksum"])
def test_store_corrupt_row_is_invalid(store: VectorStore, case: str) -> None:
    vector = fake_vectors(["a plane"])[0]
    store.put("m@1", ["a plane"], vector[None])
    blobs = {
        "short": (vector[:3].tobytes(), True),
        "nan": (np.array([np.nan, 0, 0, 0], dtype="<f4").tobytes(), True),
        "not_unit": ((vector * 2).astype("<f4").tobytes(), True),
        "bad_checksum": (vector.tobytes(), False),
    }
    _overwrite_blob(store, *blobs[case])
    found = store.lookup("m@1", ["a plane"])
    assert found.found == {}
    assert found.invalid == [0]


def test_embed_texts_recomputes_corrupt_row(store: VectorStore) -> None:
    embedder = FakeEmbedder()
    embed_texts(embedder, ["a plane", "a ship"], store=store, show_progress=False)
    _overwrite_blob_for(store, embedder.identity, "a plane", b"\x00\x00")
    embedder.encoded.clear()
    vectors, stats = embed_texts(embedder, ["a plane", "a ship"], store=store, show_progress=False)
    assert embedder.encoded == ["a plane"]
    assert stats.n_invalid == 1
    assert stats.n_cached == 1
    assert stats.n_computed == 1
    assert np.array_equal(vectors, fake_vectors(["a plane", "a ship"]))
    assert sorted(store.lookup(embedder.identity, ["a plane"]).found) == [0]


def _overwrite_blob_for(store: VectorStore, identity: str, text: str, blob: bytes) -> None:
    store._connection.execute("UPDATE vectors SET vector = ? WHERE model = ? AND text_hash = ?",
                              (blob, identity, text_hash(text)))


def test_store_rejects_nan_on_put(store: VectorStore) -> None:
    with pytest.raises(ValueError, match="non-finite"):
        store.put("m@1", ["a"], np.array([[np.nan, 0.0]], dtype=np.float32))
    assert store.count() == 0


def test_store_rejects_length_mismatch(store: VectorStore) -> None:
    with pytest.raises(ValueError, match=r"\(2, d\)"):
        store.put("m@1", ["a", "b"], fake_vectors(["a"]))


def test_store_garbage_file_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "vectors.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with VectorStore(path) as store:
        store.put("m@1", ["a"], fake_vectors(["a"]))
        assert store.count() == 1
    aside = list(tmp_path.glob("vectors.sqlite.corrupt-*"))
    assert len(aside) == 1
    assert aside[0].read_bytes().startswith(b"this is not a database")


_WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    from trsllava_utils.vector_store import VectorStore

    store = VectorStore(sys.argv[1])
    rng = np.random.default_rng(0)
    batch = 2000
    for number in range(10_000):
        vectors = rng.standard_normal((batch, 384)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        store.put("m@1", [f"text {number} {i}" for i in range(batch)], vectors)
        print(number, flush=True)
""")


def test_store_survives_killed_writer(tmp_path: Path) -> None:
    path = tmp_path / "vectors.sqlite"
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "0"  # one batch committed
        time.sleep(0.3)  # well inside a later transaction
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
    finally:
        if writer.poll() is None:
            writer.kill()
    assert writer.returncode == -signal.SIGKILL

    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    with VectorStore(path) as store:
        rows = store.count("m@1")
        assert rows >= 2000
        assert rows % 2000 == 0  # whole transactions only
        texts = [f"text 0 {i}" for i in range(2000)]
        found = store.lookup("m@1", texts)
        assert len(found.found) == 2000
        assert found.invalid == []
        store.put("m@1", ["after the crash"], fake_vectors(["after the crash"]))
        assert store.count("m@1") == rows + 1


def test_embed_texts_counts_and_order(store: VectorStore) -> None:
    embedder = FakeEmbedder()
    texts = ["b", "a", "b", "c"]
    vectors, stats = embed_texts(embedder, texts, store=store, show_progress=False)
    assert np.array_equal(vectors, fake_vectors(texts))
    assert vectors.dtype == np.float32
    assert (stats.n_texts, stats.n_unique, stats.n_cached, stats.n_computed) == (4, 3, 0, 3)
    assert sorted(embedder.encoded) == ["a", "b", "c"]


def test_embed_texts_second_call_cached(store: VectorStore) -> None:
    embedder = FakeEmbedder()
    embed_texts(embedder, ["a", "b"], store=store, show_progress=False)
    embedder.encoded.clear()
    vectors, stats = embed_texts(embedder, ["b", "a", "d"], store=store, show_progress=False)
    assert embedder.encoded == ["d"]
    assert (stats.n_cached, stats.n_computed, stats.n_invalid) == (2, 1, 0)
    assert np.array_equal(vectors, fake_vectors(["b", "a", "d"]))


def test_embed_texts_models_kept_apart(store: VectorStore) -> None:
    first, second = FakeEmbedder("one"), FakeEmbedder("two")
    embed_texts(first, ["a"], store=store, show_progress=False)
    _, stats = embed_texts(second, ["a"], store=store, show_progress=False)
    assert stats.n_cached == 0
    assert second.encoded == ["a"]


def test_embed_texts_chunks_written_in_turn(store: VectorStore) -> None:
    embedder = FakeEmbedder()
    texts = [f"text {i}" for i in range(10)]
    _, stats = embed_texts(embedder, texts, store=store, batch_size=2, chunk_batches=2, show_progress=False)
    assert stats.n_computed == 10
    assert store.count(embedder.identity) == 10


def test_embed_texts_without_store() -> None:
    embedder = FakeEmbedder()
    vectors, stats = embed_texts(embedder, ["a", "a"], store=None, show_progress=False)
    assert vectors.shape == (2, 4)
    assert (stats.n_unique, stats.n_cached, stats.n_computed) == (1, 0, 1)


def test_embed_texts_empty_list() -> None:
    vectors, stats = embed_texts(FakeEmbedder(), [], show_progress=False)
    assert vectors.shape == (0, 4)
    assert stats.n_texts == 0


def test_embed_texts_rejects_non_string() -> None:
    with pytest.raises(TypeError, match=r"texts\[1\] is int"):
        embed_texts(FakeEmbedder(), ["a", 3], show_progress=False)


def test_embed_texts_rejects_bad_encoder_shape() -> None:
    class Broken(FakeEmbedder):
        def encode(self, texts, batch_size=64, show_progress=False):
            return np.zeros((1, 4), dtype=np.float32)

    with pytest.raises(EmbedderError, match=r"shape \(1, 4\) for 2 texts"):
        embed_texts(Broken(), ["a", "b"], show_progress=False)
