"""Tests of the retrieval explorer, run headless: search, image details, HTML and widget callbacks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from analysis_fixtures import make_metrics, write_run
from trsllava_utils import explorer as explorer_module
from trsllava_utils.data import Dataset, ImageItem, LoadReport
from trsllava_utils.embedding import TextVectors
from trsllava_utils.episodes import build_run_episodes
from trsllava_utils.explorer import ExplorerError, RetrievalExplorer, static_by_default
from trsllava_utils.params import RunParams
from trsllava_utils.rsrt import RSRTRecord, write_records

VOCABULARY = ("river", "bridge", "tank", "field", "tree")


def keyword_embed(texts):
    """Count the vocabulary words of each text; a text without one gets an 'other' dimension."""
    rows = []
    for text in texts:
        words = text.lower().split()
        counts = [float(words.count(word)) for word in VOCABULARY]
        counts.append(0.0 if any(counts) else 1.0)
        vector = np.asarray(counts, dtype=np.float32)
        rows.append(vector / np.linalg.norm(vector))
    return np.stack(rows)


def variant(one_sentence, number):
    return {"one_sentence": one_sentence, "feature": f"feature {number}", "caption": f"caption {number}"}


@pytest.fixture()
def dataset(tmp_path):
    items = [ImageItem("img_a.jpg", ("a river", "a bridge over a river"), tmp_path / "missing" / "img_a.jpg", "river"),
             ImageItem("img_b.jpg", ("a tank", "a tank near a field"), None, "industrial"),
             ImageItem("img_c.jpg", ("a tree", "a tree in a field"), None, "forest")]
    return Dataset(name="demo", split="test", items=items, report=LoadReport(source="test", format="json"))


def write_explorer_run(root, dataset, run_name, **params_overrides):
    """Write a run folder the explorer reads: metrics.json, rsrt.jsonl, embeddings.npz, ranks.csv."""
    metrics = make_metrics(run_name, dataset="demo", n_variants=2, **params_overrides)
    metrics["params"]["db_fields"] = ["one_sentence"]
    folder = write_run(root, metrics)
    records = [RSRTRecord("img_a.jpg", [variant("river", 1), variant("river bridge", 2)]),
               RSRTRecord("img_b.jpg", [variant("tank", 3), variant("tank field", 4)]),
               RSRTRecord("img_c.jpg", [variant("field tree", 5), variant("tree", 6)])]
    write_records(folder / "rsrt.jsonl", records)
    params = RunParams(**metrics["params"])
    episodes = build_run_episodes(params, dataset, folder)
    texts = list(dict.fromkeys(text for episode in episodes for text in episode.all_texts()))
    TextVectors(texts, keyword_embed(texts), "keyword@test").save(folder / "embeddings.npz")
    episode = episodes[0].name
    lines = ["direction,episode,query_id,query_text,ground_truth,rank,tied,top5,label",
             f"t2i,{episode},img_a.jpg#0,a river,img_a.jpg,1,False,img_a.jpg img_b.jpg img_c.jpg,river",
             f"t2i,{episode},img_b.jpg#0,a tank,img_b.jpg,1,False,img_b.jpg img_a.jpg img_c.jpg,industrial",
             f"t2i,{episode},img_c.jpg#0,a tree,img_c.jpg,2,False,img_b.jpg img_c.jpg img_a.jpg,forest",
             f"i2t,{episode},img_a.jpg,river,img_a.jpg,1,False,img_a.jpg#0 img_b.jpg#0,river"]
    (folder / "ranks.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


@pytest.fixture()
def method_dir(tmp_path, dataset):
    return write_explorer_run(tmp_path, dataset, "method_run")


@pytest.fixture()
def explorer(method_dir, dataset):
    return RetrievalExplorer.from_run(method_dir, dataset=dataset, embedder=keyword_embed)


def test_search_scores_max(explorer):
    results = explorer.search("bridge")
    assert list(results["image_id"]) == ["img_a.jpg", "img_b.jpg", "img_c.jpg"]
    assert results["score"].iloc[0] == pytest.approx(1 / math.sqrt(2))  # "bridge" . "river bridge"
    assert results["score"].iloc[1] == pytest.approx(0.0)
    assert results["best_text_id"].iloc[0] == "img_a.jpg@1"


def test_search_ties_keep_dataset_order(explorer):
    results = explorer.search("river field")
    assert list(results["image_id"]) == ["img_a.jpg", "img_b.jpg", "img_c.jpg"]
    assert results["score"].iloc[1] == pytest.approx(0.5)
    assert results["score"].iloc[2] == pytest.approx(0.5)


def test_search_mean_aggregation(tmp_path, dataset):
    folder = write_explorer_run(tmp_path, dataset, "mean_run", aggregation="mean")
    results = RetrievalExplorer.from_run(folder, dataset=dataset, embedder=keyword_embed).search("river field")
    # img_a: mean(1/sqrt(2), 1/2); img_b: mean(0, 1/2).
    assert results["score"].iloc[0] == pytest.approx((1 / math.sqrt(2) + 0.5) / 2)
    assert results["score"].iloc[1] == pytest.approx(0.25)


def test_search_marks_ground_truth(explorer):
    results = explorer.search("a tank near a field")
    truth = results.set_index("image_id")["ground_truth"]
    assert truth["img_b.jpg"]
    assert not truth["img_a.jpg"]


def test_search_top_k(explorer):
    assert len(explorer.search("tree", k=2)) == 2


def test_search_new_query_needs_embedder(method_dir, dataset):
    explorer = RetrievalExplorer.from_run(method_dir, dataset=dataset)
    with pytest.raises(ExplorerError, match="no embedder"):
        explorer.search("tank tree")


def test_search_stored_caption_without_embedder(method_dir, dataset):
    explorer = RetrievalExplorer.from_run(method_dir, dataset=dataset)
    assert explorer.search("a river")["image_id"].iloc[0] == "img_a.jpg"


def test_search_new_query_with_embedder(explorer):
    results = explorer.search("tank tree")
    assert set(results["image_id"].iloc[:2]) == {"img_b.jpg", "img_c.jpg"}
    assert results["score"].iloc[0] == pytest.approx(1 / math.sqrt(2))


def test_search_empty_query(explorer):
    with pytest.raises(ExplorerError, match="empty"):
        explorer.search("  ")


def test_search_wrong_dimension(method_dir, dataset):
    explorer = RetrievalExplorer.from_run(method_dir, dataset=dataset, embedder=lambda texts: np.ones((1, 3)))
    with pytest.raises(ExplorerError, match="3 dimensions"):
        explorer.search("tank tree")


def test_image_details_variants(explorer):
    details = explorer.image_details("img_a.jpg")
    assert [v["one_sentence"] for v in details["variants"]] == ["river", "river bridge"]
    assert details["captions"] == ["a river", "a bridge over a river"]
    assert details["database_texts"] == ["river", "river bridge"]


def test_image_details_retrieved_by(explorer):
    found = explorer.image_details("img_a.jpg")["retrieved_by"]
    assert list(found["query_id"]) == ["img_a.jpg#0", "img_b.jpg#0", "img_c.jpg#0"]
    assert list(found["position"]) == [1, 2, 3]
    assert list(found["own"]) == [True, False, False]


def test_image_details_unknown_image(explorer):
    with pytest.raises(ExplorerError, match="not in dataset"):
        explorer.image_details("nope.jpg")


def test_oracle_run_uses_fold(tmp_path, dataset):
    folder = write_explorer_run(tmp_path, dataset, "oracle_run", captioner="human-holdout")
    explorer = RetrievalExplorer.from_run(folder, dataset=dataset)
    details = explorer.image_details("img_a.jpg")
    assert "upper bound (fold1)" in explorer.runs["oracle_run"].label
    assert details["variants"] == []
    assert details["database_texts"] == ["a bridge over a river"]


def test_results_html_marks_truth(explorer):
    query = "a tank near a field"
    html_text = explorer.results_html(query, explorer.search(query))
    assert "ground truth" in html_text
    assert "image not available" in html_text
    assert "method_run: method (training-free)" in html_text


def test_static_html_has_sample_query(explorer):
    html_text = explorer.static_html()
    assert "“a river”" in html_text
    assert "RSRT variants" in html_text
    assert "Static snapshot" in html_text


def test_missing_ranks_names_notebook(method_dir, dataset):
    (method_dir / "ranks.csv").unlink()
    with pytest.raises(ExplorerError, match="ranks.csv not found; run notebooks/03_retrieval.ipynb"):
        RetrievalExplorer.from_run(method_dir, dataset=dataset)


def test_missing_embeddings_names_notebook(method_dir, dataset):
    (method_dir / "embeddings.npz").unlink()
    with pytest.raises(ExplorerError, match="02_embedding"):
        RetrievalExplorer.from_run(method_dir, dataset=dataset)


def test_dataset_mismatch(method_dir, dataset):
    other = Dataset(name="rsitmd", split="test", items=dataset.items, report=dataset.report)
    with pytest.raises(ExplorerError, match="dataset 'demo'"):
        RetrievalExplorer.from_run(method_dir, dataset=other)


def test_widget_search_callback(explorer):
    explorer.widget.children  # builds the widgets
    explorer.query_box.value = "a bridge over a river"
    assert "img_a.jpg" in explorer.results.value
    assert explorer.status.value == ""
    assert explorer.image_picker.value == "img_a.jpg"
    assert "river bridge" in explorer.details.value


def test_widget_error_in_status(method_dir, dataset):
    explorer = RetrievalExplorer.from_run(method_dir, dataset=dataset)
    explorer.widget.children
    explorer.query_box.value = "tank tree"
    assert "no embedder" in explorer.status.value


def test_widget_k_slider(explorer):
    explorer.widget.children
    explorer.k_slider.value = 2
    explorer.query_box.value = "tree"
    assert explorer.results.value.count("<tr") == 3  # header and two rows


def test_widget_run_switch(tmp_path, dataset):
    method = write_explorer_run(tmp_path, dataset, "method_run")
    oracle = write_explorer_run(tmp_path, dataset, "oracle_run", captioner="human-holdout")
    explorer = RetrievalExplorer.from_runs([method, oracle], dataset=dataset)
    explorer.widget.children
    explorer.query_box.value = "a river"
    explorer.run_picker.value = "oracle_run"
    assert explorer.current_run == "oracle_run"
    assert "oracle_run: human-holdout oracle" in explorer.results.value
    assert "Database texts" in explorer.details.value


def test_show_static_displays_html(explorer, monkeypatch):
    shown = []
    monkeypatch.setattr("IPython.display.display", shown.append)
    explorer.show(static=True)
    assert len(shown) == 1
    assert "Static snapshot" in shown[0].data


def test_show_widget(explorer, monkeypatch):
    shown = []
    monkeypatch.setattr("IPython.display.display", shown.append)
    explorer.show(static=False)
    assert shown == [explorer.widget]


def test_static_default_env(monkeypatch):
    monkeypatch.setenv(explorer_module.STATIC_ENV_VAR, "1")
    assert static_by_default()
    monkeypatch.setenv(explorer_module.STATIC_ENV_VAR, "0")
    assert not static_by_default()


def test_static_default_outside_kernel(monkeypatch):
    monkeypatch.delenv(explorer_module.STATIC_ENV_VAR, raising=False)
    assert static_by_default()


def test_auto_embedder_checks_identity(method_dir, dataset):
    explorer = RetrievalExplorer.from_run(method_dir, dataset=dataset, embedder="auto")
    # The run's vectors come from the keyword embedder, not the run's all-MiniLM-L6-v2 model.
    with pytest.raises(ExplorerError, match="differs from the one that embedded run method_run"):
        explorer.search("tank tree")
