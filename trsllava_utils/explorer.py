"""An interactive explorer of what a run retrieves, and why, built on ipywidgets.

Type a query or pick a human caption of the dataset, choose a run, and see
the top-k images with their scores and the database text that matched best.
Pick an image to see its RSRT variants (for the oracle, its held-out
captions) and the captions that retrieve it.

All logic lives in plain methods (:meth:`RetrievalExplorer.search`,
:meth:`RetrievalExplorer.image_details` and the HTML renderers), so tests and
scripts call it without a browser; the widget callbacks only read the
widgets and call them.

Static fallback: :meth:`RetrievalExplorer.show` renders an HTML snapshot of a
sample query in place of the widgets when ``static=True``. With
``static=None`` it reads the ``TRSLLAVA_STATIC`` environment variable
(``1``/``0``), and without it shows the widgets only inside a Jupyter kernel
(an IPython ``ZMQInteractiveShell``). Papermill also runs notebooks in a
Jupyter kernel, so a batch run that wants the snapshot sets
``TRSLLAVA_STATIC=1`` (the kernel inherits the environment) or passes
``static=True``.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .data import Dataset, load_dataset_from_params
from .embedding import TextVectors
from .episodes import Episode, build_run_episodes
from .params import RunParams, validate_params
from .rsrt import RSRTRecord, image_key, read_records

logger = logging.getLogger(__name__)

STATIC_ENV_VAR = "TRSLLAVA_STATIC"
"""Environment variable that forces the static snapshot (``1``) or the widgets (``0``)."""

TEXT_PREVIEW_CHARS = 220
"""Characters of a database text shown in a result row before it is cut with an ellipsis."""

TABLE_THUMBNAIL_PX = 96
"""Maximum side, in pixels, of the thumbnails in the HTML tables."""

Embed = Callable[[list[str]], np.ndarray]


class ExplorerError(ValueError):
    """A run folder or a request the explorer cannot serve; the message names what to run or pass."""


@dataclass
class ExplorerRun:
    """The data of one run that the explorer reads: database texts and their vectors, ranks and RSRT records.

    Attributes:
        name: The run name.
        params: The run's parameters, from its metrics.json.
        episode: The episode searched: the method's only episode, or the
            oracle's first fold.
        gallery_vectors: One L2-normalised vector per database text of the
            episode (``episode.t2i_gallery``), in the same order.
        table: Every text vector of the run (``embeddings.npz``).
        ranks: The run's ranks.csv.
        records: RSRT record per image id; empty for the oracle.
    """

    name: str
    params: RunParams
    episode: Episode
    gallery_vectors: np.ndarray
    table: TextVectors
    ranks: pd.DataFrame
    records: dict[str, RSRTRecord] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """Run name and kind: the method, or the oracle as an upper bound."""
        if self.params.is_oracle:
            return f"{self.name}: human-holdout oracle, upper bound ({self.episode.name})"
        return f"{self.name}: method (training-free)"


def load_explorer_run(run_dir: str | os.PathLike, dataset: Dataset | None = None) -> tuple[ExplorerRun, Dataset]:
    """Read a run folder (metrics.json, ranks.csv, embeddings.npz and, for the method, rsrt.jsonl).

    Args:
        run_dir: The run's output folder.
        dataset: The run's dataset; loaded from the run's parameters when None.

    Returns:
        The run and the dataset it was read with.

    Raises:
        ExplorerError: a file is missing or does not match the dataset.
    """
    from .retrieval import read_ranks

    folder = Path(run_dir)
    metrics_path = folder / "metrics.json"
    if not metrics_path.is_file():
        raise ExplorerError(f"{metrics_path} not found; run notebooks/03_retrieval.ipynb for this run first")
    metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    params = validate_params(metrics["params"], source=str(metrics_path))
    if dataset is None:
        dataset = load_dataset_from_params(params)
    elif dataset.name != params.dataset:
        raise ExplorerError(f"run {params.run_name} is on dataset {params.dataset!r}, but the explorer was given "
                            f"{dataset.name!r}; pass the run's dataset or dataset=None")
    ranks_path = folder / "ranks.csv"
    if not ranks_path.is_file():
        raise ExplorerError(f"{ranks_path} not found; run notebooks/03_retrieval.ipynb for this run first")
    ranks = read_ranks(ranks_path)
    episode = build_run_episodes(params, dataset, folder)[0]
    try:
        table = TextVectors.load(folder / "embeddings.npz")
        gallery_vectors = table.lookup(episode.t2i_gallery.texts)
    except (FileNotFoundError, KeyError) as exc:
        raise ExplorerError(f"{folder}: {exc}; run notebooks/02_embedding.ipynb for this run again") from None
    records = {} if params.is_oracle else {image_key(r.image): r for r in read_records(folder / "rsrt.jsonl")}
    run = ExplorerRun(name=params.run_name, params=params, episode=episode, gallery_vectors=gallery_vectors,
                      table=table, ranks=ranks, records=records)
    return run, dataset


def _as_embed(embedder: Any) -> Embed | None:
    """Wrap an embedder object (with ``encode``) or a callable as ``texts -> vectors``."""
    if embedder is None:
        return None
    if hasattr(embedder, "encode"):
        return lambda texts: embedder.encode(texts)
    if callable(embedder):
        return embedder
    raise TypeError(f"embedder must be a callable texts -> vectors, an Embedder or 'auto', got {type(embedder)}")


def in_jupyter_kernel() -> bool:
    """Return whether the code runs in a Jupyter kernel (JupyterLab, Notebook, VS Code, or papermill)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def static_by_default() -> bool:
    """Decide static versus widgets when :meth:`RetrievalExplorer.show` gets ``static=None``.

    ``TRSLLAVA_STATIC=1`` (or ``true``/``yes``) forces the snapshot and
    ``0`` (``false``/``no``) the widgets. Otherwise, the widgets show only in
    a Jupyter kernel.
    """
    value = os.environ.get(STATIC_ENV_VAR, "").strip().lower()
    if value in ("1", "true", "yes"):
        return True
    if value in ("0", "false", "no"):
        return False
    if value:
        logger.warning("%s=%r is not 1 or 0; deciding from the kernel", STATIC_ENV_VAR, value)
    return not in_jupyter_kernel()


class RetrievalExplorer:
    """Search a run's gallery with any query and inspect images, with widgets or headless.

    Args:
        runs: The runs to choose from, all on ``dataset``.
        dataset: The dataset of the runs: images, captions and labels.
        embedder: Maps typed queries to vectors: a callable ``texts -> (n, d)
            array``, an Embedder from :func:`trsllava_utils.embedding.load_embedder`,
            ``"auto"`` to load the current run's embedding model on the first
            typed query, or None. Without one, only texts that the run already
            embedded (the dataset's captions) can be searched.
        k: Number of images shown per query.
        sample_query: The query of the static snapshot; the dataset's first
            caption by default.
    """

    def __init__(self, runs: Sequence[ExplorerRun], dataset: Dataset, embedder: Any = None, *, k: int = 5,
                 sample_query: str | None = None) -> None:
        if not runs:
            raise ExplorerError("the explorer needs at least one run")
        names = [run.name for run in runs]
        if len(set(names)) != len(names):
            raise ExplorerError(f"run names repeat: {names}; pass each run once")
        self.runs: dict[str, ExplorerRun] = {run.name: run for run in runs}
        self.dataset = dataset
        self.k = k
        self.current_run = names[0]
        self._auto_embedder = embedder == "auto"
        self._embed: Embed | None = None if self._auto_embedder else _as_embed(embedder)
        self._auto_embedders: dict[str, Embed] = {}
        self._items = {item.image_id: item for item in dataset.items}
        self._index = {item.image_id: index for index, item in enumerate(dataset.items)}
        owners: dict[str, list[str]] = {}
        for item in dataset.items:
            for caption in item.captions:
                owners.setdefault(caption, []).append(item.image_id)
        self._caption_owners = owners
        self.sample_query = sample_query or (dataset.items[0].captions[0] if dataset.items else "")
        self._widget: Any = None

    # Construction ------------------------------------------------------------------------------------------------

    @classmethod
    def from_run(cls, run_dir: str | os.PathLike, dataset: Dataset | None = None, embedder: Any = None,
                 **kwargs: Any) -> "RetrievalExplorer":
        """Build an explorer of one run folder; see the class for the arguments."""
        run, dataset = load_explorer_run(run_dir, dataset)
        return cls([run], dataset, embedder, **kwargs)

    @classmethod
    def from_runs(cls, run_dirs: Sequence[str | os.PathLike], dataset: Dataset | None = None,
                  embedder: Any = None, **kwargs: Any) -> "RetrievalExplorer":
        """Build an explorer of several run folders on one dataset and split."""
        runs = []
        for run_dir in run_dirs:
            run, dataset = load_explorer_run(run_dir, dataset)
            runs.append(run)
        splits = {(run.params.dataset, run.params.split) for run in runs}
        if len(splits) > 1:
            raise ExplorerError(f"the runs cover several datasets or splits {sorted(splits)}; "
                                "explore one dataset and split at a time")
        return cls(runs, dataset, embedder, **kwargs)

    # Logic ---------------------------------------------------------------------------------------------------------

    @property
    def run_names(self) -> list[str]:
        """Names of the runs, in the order given."""
        return list(self.runs)

    def _run(self, name: str | None) -> ExplorerRun:
        name = name or self.current_run
        if name not in self.runs:
            raise ExplorerError(f"unknown run {name!r}; runs: {', '.join(self.runs)}")
        return self.runs[name]

    def _embedder_for(self, run: ExplorerRun) -> Embed | None:
        if not self._auto_embedder:
            return self._embed
        if run.name not in self._auto_embedders:
            from .embedding import load_embedder

            params = run.params
            model = load_embedder(params.embedding_model, path=params.embedding_model_path,
                                  base_url=params.embedding_base_url)
            if model.needs_fit:
                # NOTE: a lexical model is refitted on the run's texts, which may differ from 02_embedding's fit.
                model.fit(run.table.texts)
            if getattr(model, "identity", run.table.model_identity) != run.table.model_identity:
                raise ExplorerError(f"the model {model.identity} differs from the one that embedded run "
                                    f"{run.name} ({run.table.model_identity}); scores would not be comparable")
            self._auto_embedders[run.name] = _as_embed(model)
        return self._auto_embedders[run.name]

    def query_vector(self, query: str, run: str | None = None) -> np.ndarray:
        """Return the L2-normalised vector of ``query``: the run's stored vector when it has one, else embedded.

        Raises:
            ExplorerError: the query is empty, or new and no embedder was given.
        """
        query = query.strip()
        if not query:
            raise ExplorerError("the query is empty; type a query or pick a caption")
        chosen = self._run(run)
        try:
            vector = chosen.table.lookup([query])[0]
        except KeyError:
            embed = self._embedder_for(chosen)
            if embed is None:
                raise ExplorerError("this query is not among the run's embedded texts, and the explorer has no "
                                    "embedder; pick a caption of the dataset, or pass embedder='auto'") from None
            vector = np.asarray(embed([query]), dtype=np.float32).reshape(-1)
        if vector.shape[0] != chosen.gallery_vectors.shape[1]:
            raise ExplorerError(f"the query vector has {vector.shape[0]} dimensions but run {chosen.name} has "
                                f"{chosen.gallery_vectors.shape[1]}; use the run's embedding model")
        norm = float(np.linalg.norm(vector))
        return vector / norm if norm > 0 else vector

    def search(self, query: str, run: str | None = None, k: int | None = None) -> pd.DataFrame:
        """Rank the run's images for a query, as the run's text-to-image retrieval does.

        An image's score is the max (or mean, per the run's ``aggregation``)
        cosine similarity between the query and the image's database texts.
        Equal scores keep dataset order.

        Returns:
            The top ``k`` images: ``rank``, ``image_id``, ``score``, ``label``,
            ``ground_truth`` (the query is one of the image's human captions),
            ``best_text_id`` and ``best_text`` (the database text with the
            highest similarity).
        """
        chosen = self._run(run)
        k = k or self.k
        vector = self.query_vector(query, chosen.name)
        gallery = chosen.episode.t2i_gallery
        similarities = chosen.gallery_vectors @ vector
        n_images = chosen.episode.n_images
        owners = gallery.image_index
        if chosen.params.aggregation == "mean":
            counts = np.bincount(owners, minlength=n_images)
            scores = np.bincount(owners, weights=similarities, minlength=n_images) / np.maximum(counts, 1)
            scores[counts == 0] = -np.inf
        else:
            scores = np.full(n_images, -np.inf)
            np.maximum.at(scores, owners, similarities)
        order = np.argsort(-scores, kind="stable")[:k]
        truth = set(self._caption_owners.get(query.strip(), []))
        rows = []
        for rank, image in enumerate(order, start=1):
            texts = np.flatnonzero(owners == image)
            best = int(texts[np.argmax(similarities[texts])]) if texts.size else -1
            item = self.dataset.items[int(image)]
            rows.append({"rank": rank, "image_id": item.image_id, "score": float(scores[image]),
                         "label": item.label or "", "ground_truth": item.image_id in truth,
                         "best_text_id": gallery.ids[best] if best >= 0 else "",
                         "best_text": gallery.texts[best] if best >= 0 else ""})
        return pd.DataFrame(rows, columns=["rank", "image_id", "score", "label", "ground_truth", "best_text_id",
                                           "best_text"])

    def image_details(self, image_id: str, run: str | None = None) -> dict[str, Any]:
        """Describe one image for a run: its captions, database texts, RSRT variants and the captions that find it.

        Returns:
            A dict with ``image_id``, ``label``, ``path``, ``captions`` (human),
            ``database_texts`` (the run's gallery texts of the image),
            ``variants`` (RSRT variant dicts, empty for the oracle) and
            ``retrieved_by``: the ranks.csv text-to-image queries of the run's
            episode that have this image in their top five, with ``position``
            (1-5) and ``own`` (the caption belongs to the image), best first.
        """
        chosen = self._run(run)
        if image_id not in self._items:
            raise ExplorerError(f"image {image_id!r} is not in dataset {self.dataset.name}")
        item = self._items[image_id]
        gallery = chosen.episode.t2i_gallery
        own_texts = [text for text, owner in zip(gallery.texts, gallery.image_index) if owner == self._index[image_id]]
        record = chosen.records.get(image_id)
        rows = chosen.ranks[(chosen.ranks["direction"] == "t2i") & (chosen.ranks["episode"] == chosen.episode.name)]
        found = []
        for row in rows.itertuples(index=False):
            retrieved = str(row.top5).split()
            if image_id in retrieved:
                found.append({"query_id": row.query_id, "query_text": row.query_text,
                              "position": retrieved.index(image_id) + 1, "own": row.ground_truth == image_id})
        retrieved_by = pd.DataFrame(found, columns=["query_id", "query_text", "position", "own"])
        if not retrieved_by.empty:
            retrieved_by = retrieved_by.sort_values(["position", "query_id"], kind="stable").reset_index(drop=True)
        return {"image_id": image_id, "label": item.label or "", "path": item.path, "captions": list(item.captions),
                "database_texts": own_texts, "variants": list(record.variants) if record else [],
                "retrieved_by": retrieved_by}

    # HTML -----------------------------------------------------------------------------------------------------------

    def _thumbnail_html(self, image_id: str) -> str:
        from .plotting import load_thumbnail

        item = self._items.get(image_id)
        image = load_thumbnail(item.path if item else None, TABLE_THUMBNAIL_PX)
        if image is None:
            return (f'<div style="width:{TABLE_THUMBNAIL_PX}px;height:{TABLE_THUMBNAIL_PX}px;background:#e6e6e6;'
                    f'font-size:10px;display:flex;align-items:center;justify-content:center;text-align:center">'
                    f"image not available</div>")
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        data = base64.b64encode(buffer.getvalue()).decode("ascii")
        return f'<img src="data:image/png;base64,{data}" alt="{html.escape(image_id)}"/>'

    def results_html(self, query: str, results: pd.DataFrame, run: str | None = None) -> str:
        """Render search results as an HTML table with thumbnails; the ground truth rows are marked."""
        chosen = self._run(run)
        lines = [f"<h4>{html.escape(chosen.label)}</h4>",
                 f"<p><b>Query:</b> “{html.escape(query)}” (image score: {chosen.params.aggregation} cosine "
                 f"similarity over the image's database texts)</p>",
                 '<table style="border-collapse:collapse">',
                 "<tr><th>rank</th><th>image</th><th>id</th><th>score</th><th>label</th>"
                 "<th>best-matching database text</th></tr>"]
        for row in results.itertuples(index=False):
            style = ' style="outline:3px solid #D55E00"' if row.ground_truth else ""
            mark = "<br/><b>ground truth</b>" if row.ground_truth else ""
            text = row.best_text if len(row.best_text) <= TEXT_PREVIEW_CHARS else \
                row.best_text[:TEXT_PREVIEW_CHARS].rstrip() + " …"
            lines.append(f"<tr{style}><td>{row.rank}</td><td>{self._thumbnail_html(row.image_id)}</td>"
                         f"<td>{html.escape(row.image_id)}{mark}</td><td>{row.score:.3f}</td>"
                         f"<td>{html.escape(row.label)}</td><td>{html.escape(text)}</td></tr>")
        lines.append("</table>")
        return "\n".join(lines)

    def image_html(self, details: dict[str, Any]) -> str:
        """Render :meth:`image_details` as HTML: captions, RSRT variants and the captions that retrieve it."""
        parts = [f"<h4>{html.escape(details['image_id'])} ({html.escape(details['label'] or 'no label')})</h4>",
                 self._thumbnail_html(details["image_id"]), "<p><b>Human captions</b></p><ol>"]
        parts += [f"<li>{html.escape(caption)}</li>" for caption in details["captions"]]
        parts.append("</ol>")
        if details["variants"]:
            parts.append("<p><b>RSRT variants</b></p><ol>")
            for variant in details["variants"]:
                parts.append("<li>" + "<br/>".join(f"<i>{html.escape(name)}</i>: {html.escape(str(value))}"
                                                   for name, value in variant.items()) + "</li>")
            parts.append("</ol>")
        else:
            parts.append("<p><b>Database texts</b> (held-out human captions of the oracle)</p><ol>")
            parts += [f"<li>{html.escape(text)}</li>" for text in details["database_texts"]]
            parts.append("</ol>")
        found = details["retrieved_by"]
        parts.append(f"<p><b>Captions that retrieve it in their top five</b>: {len(found)}</p><ul>")
        for row in found.itertuples(index=False):
            own = " (own caption)" if row.own else ""
            parts.append(f"<li>#{row.position}{own}: {html.escape(str(row.query_text))}</li>")
        parts.append("</ul>")
        return "\n".join(parts)

    def static_html(self, query: str | None = None, run: str | None = None) -> str:
        """Render a snapshot: the results of one query and the details of its top image."""
        query = query or self.sample_query
        results = self.search(query, run)
        details = self.image_details(results["image_id"].iloc[0], run) if not results.empty else None
        body = [self.results_html(query, results, run)]
        if details is not None:
            body.append(self.image_html(details))
        note = ("<p><i>Static snapshot of the retrieval explorer; run the notebook in Jupyter for the "
                "interactive version.</i></p>")
        return note + "\n".join(body)

    # Widgets --------------------------------------------------------------------------------------------------------

    @property
    def widget(self) -> Any:
        """The ipywidgets box, built on first use; its callbacks are the ``on_*`` methods."""
        if self._widget is None:
            self._widget = self._build_widget()
        return self._widget

    def _build_widget(self) -> Any:
        import ipywidgets as widgets

        captions = sorted(self._caption_owners)
        self.run_picker = widgets.Dropdown(options=self.run_names, value=self.current_run, description="Run")
        self.query_box = widgets.Combobox(value="", placeholder="type a query or pick a caption", options=captions,
                                          ensure_option=False, continuous_update=False, description="Query",
                                          layout=widgets.Layout(width="60%"))
        self.k_slider = widgets.IntSlider(value=self.k, min=1, max=20, description="Top k")
        self.search_button = widgets.Button(description="Search", button_style="primary")
        self.image_picker = widgets.Dropdown(options=[(f"{item.image_id} ({item.label or 'no label'})",
                                                       item.image_id) for item in self.dataset.items],
                                             value=None, description="Image")
        self.status = widgets.HTML()
        self.results = widgets.HTML()
        self.details = widgets.HTML()
        self.search_button.on_click(self.on_search)
        self.query_box.observe(self.on_query_change, names="value")
        self.run_picker.observe(self.on_run_change, names="value")
        self.image_picker.observe(self.on_image_change, names="value")
        controls = widgets.VBox([self.run_picker, widgets.HBox([self.query_box, self.search_button]),
                                 self.k_slider, self.status])
        return widgets.VBox([controls, widgets.HBox([self.results, widgets.VBox([self.image_picker,
                                                                                 self.details])])])

    def on_search(self, _button: Any = None) -> None:
        """Search the query in the box with the chosen run and k; show errors in the status line."""
        self.widget  # noqa: B018 - builds the widgets when a test calls the callback first
        query = self.query_box.value
        self.k = int(self.k_slider.value)
        try:
            results = self.search(query, self.current_run, self.k)
        except ExplorerError as exc:
            self.status.value = f'<span style="color:#D55E00">{html.escape(str(exc))}</span>'
            return
        self.status.value = ""
        self.results.value = self.results_html(query, results)
        if not results.empty:
            self.image_picker.value = results["image_id"].iloc[0]

    def on_query_change(self, change: dict[str, Any]) -> None:
        """Search when a caption is picked or a typed query is submitted."""
        if change.get("new"):
            self.on_search()

    def on_run_change(self, change: dict[str, Any]) -> None:
        """Switch the run and refresh the results and the image details."""
        self.current_run = change["new"]
        if self.query_box.value:
            self.on_search()
        if self.image_picker.value:
            self.on_image_change({"new": self.image_picker.value})

    def on_image_change(self, change: dict[str, Any]) -> None:
        """Show the picked image's captions, variants and the captions that retrieve it."""
        self.widget  # noqa: B018 - builds the widgets when a test calls the callback first
        if change.get("new"):
            self.details.value = self.image_html(self.image_details(change["new"], self.current_run))

    def show(self, static: bool | None = None) -> None:
        """Display the widgets or the static snapshot. With ``static=None``, :func:`static_by_default` decides."""
        from IPython.display import HTML, display

        if static is None:
            static = static_by_default()
        if static:
            display(HTML(self.static_html()))
            return
        display(self.widget)
