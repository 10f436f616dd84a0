"""Tests of the paper figures: files written, axes labelled with units, one bar or line per series."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from matplotlib.container import BarContainer  # noqa: E402

from analysis_fixtures import make_metrics  # noqa: E402
from trsllava_utils import plotting  # noqa: E402
from trsllava_utils.baselines import published_results  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def bar_containers(ax):
    return [container for container in ax.containers if isinstance(container, BarContainer)]


def test_palette_distinct_hex():
    assert len(set(plotting.PALETTE)) == len(plotting.PALETTE)
    assert all(colour.startswith("#") and len(colour) == 7 for colour in plotting.PALETTE)


def test_paper_style_restores_rcparams():
    before = matplotlib.rcParams["font.size"]
    with plotting.paper_style():
        assert matplotlib.rcParams["font.size"] == 8
    assert matplotlib.rcParams["font.size"] == before


def test_save_figure_writes_pdf_and_png(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    paths = plotting.save_figure(fig, tmp_path / "figures" / "line")
    assert paths == [tmp_path / "figures" / "line.pdf", tmp_path / "figures" / "line.png"]
    assert paths[0].read_bytes().startswith(b"%PDF")
    assert paths[1].read_bytes().startswith(b"\x89PNG")


def test_save_figure_png_300_dpi(tmp_path):
    from PIL import Image

    fig = plt.figure(figsize=(1.0, 1.0))
    fig.add_subplot().plot([0, 1], [0, 1])
    png = plotting.save_figure(fig, tmp_path / "dpi")[1]
    with Image.open(png) as image:
        assert image.info["dpi"] == pytest.approx((300, 300), abs=1)


def test_save_figure_drops_suffix(tmp_path):
    fig, _ = plt.subplots()
    paths = plotting.save_figure(fig, tmp_path / "figure.pdf")
    assert [path.name for path in paths] == ["figure.pdf", "figure.png"]


def test_plot_recalls_bars_per_run():
    runs = [make_metrics("a"), make_metrics("b", n_variants=1), make_metrics("c", captioner="human-holdout")]
    fig = plotting.plot_recalls(runs)
    containers = bar_containers(fig.axes[0])
    assert len(fig.axes) == 1
    assert len(containers) == 3
    assert all(len(container) == 7 for container in containers)  # six recalls and mR


def test_plot_recalls_labels_and_units():
    fig = plotting.plot_recalls(make_metrics("a"))
    ax = fig.axes[0]
    assert ax.get_ylabel() == "Recall (%)"
    assert ax.get_xlabel()
    assert [tick.get_text() for tick in ax.get_xticklabels()] == ["R@1", "R@5", "R@10", "R@1", "R@5", "R@10", "mR"]


def test_plot_recalls_oracle_legend():
    fig = plotting.plot_recalls([make_metrics("a"), make_metrics("o", captioner="human-holdout")])
    labels = [text.get_text() for text in fig.axes[0].get_legend().get_texts()]
    assert labels == ["a", "o (upper bound)"]


def test_plot_recalls_bar_heights():
    fig = plotting.plot_recalls(make_metrics("a", recalls=(1.0, 2.0, 3.0, 4.0, 5.0, 6.0)))
    heights = [patch.get_height() for patch in bar_containers(fig.axes[0])[0]]
    assert heights == pytest.approx([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 3.5])


def test_plot_recalls_baselines_same_split():
    runs = [make_metrics("a"), make_metrics("b")]
    fig = plotting.plot_recalls(runs, published_results())
    comparison = fig.axes[1]
    n_rsitmd = len(published_results("rsitmd"))
    assert len(comparison.patches) == n_rsitmd + 2
    assert comparison.get_xlabel() == "mR (%)"
    names = [tick.get_text() for tick in comparison.get_yticklabels()]
    assert "GaLR" in names
    assert "CLIP ViT-B/32 [Beyond Pixels]" in names


def test_plot_recalls_baselines_other_split():
    fig = plotting.plot_recalls(make_metrics("demo_run", dataset="demo"), published_results(), width=3.5)
    comparison = fig.axes[1]
    names = [tick.get_text() for tick in comparison.get_yticklabels()]
    assert len(comparison.patches) == len(published_results()) + 1
    assert "GaLR (rsicd)" in names
    assert "TRSLLaVA text-to-text (rsicd) (approx.)" in names


def test_plot_recalls_from_summary_table(tmp_path):
    from analysis_fixtures import write_run
    from trsllava_utils.summary import collect_runs

    write_run(tmp_path, make_metrics("a"))
    write_run(tmp_path, make_metrics("b", n_variants=1))
    fig = plotting.plot_recalls(collect_runs(tmp_path))
    assert len(bar_containers(fig.axes[0])) == 2


def test_plot_recalls_saves_files(tmp_path):
    fig = plotting.plot_recalls([make_metrics("a"), make_metrics("b")], published_results())
    paths = plotting.save_figure(fig, tmp_path / "recalls")
    assert all(path.stat().st_size > 0 for path in paths)


# Figures 2-5 -------------------------------------------------------------------------------------------------------


def runs_table():
    """A summary table: N in {1, 3} x aggregation in {max, mean}, plus one oracle run."""
    import pandas as pd

    rows = []
    for n, aggregation, mr in ((1, "max", 40.0), (3, "max", 44.0), (1, "mean", 38.0), (3, "mean", 41.5)):
        rows.append({"run_name": f"n{n}_{aggregation}", "dataset": "demo", "oracle": False, "n_variants": n,
                     "aggregation": aggregation, "embedding_model": "m", "db_fields": "caption",
                     "db_text_mode": "joined", "mR": mr, "mR_lo": mr - 3, "mR_hi": mr + 3})
    rows.append({"run_name": "oracle", "dataset": "demo", "oracle": True, "n_variants": 5, "aggregation": "max",
                 "embedding_model": "m", "db_fields": "caption", "db_text_mode": "joined", "mR": 60.0,
                 "mR_lo": 57.0, "mR_hi": 63.0})
    return pd.DataFrame(rows)


def test_heatmap_cells_and_labels():
    fig = plotting.plot_mr_heatmap(runs_table(), "aggregation", "n_variants")
    ax = fig.axes[0]
    cells = sorted(text.get_text() for text in ax.texts)
    assert cells == ["38.0", "40.0", "41.5", "44.0"]  # the oracle's 60.0 is left out
    assert ax.get_xlabel() == "Variants per image N (count)"
    assert ax.get_ylabel() == "Aggregation over texts"
    assert fig.axes[1].get_ylabel() == "mR (%)"


def test_heatmap_abbreviates_field_sets():
    import pandas as pd

    rows = [{"run_name": f"r{i}", "dataset": "demo", "oracle": False, "embedding_model": "m",
             "db_fields": fields, "mR": 50.0 + i}
            for i, fields in enumerate(["caption", "one_sentence+feature", "feature", "one_sentence",
                                        "feature+caption"])]
    fig = plotting.plot_mr_heatmap(pd.DataFrame(rows), "embedding_model", "db_fields")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["C", "F", "F+C", "S", "S+F"]
    assert "S = one_sentence" in ax.get_xlabel()
    assert fig.get_figwidth() == plotting.TWO_COLUMN_WIDTH_IN


def test_heatmap_rejects_shared_cell():
    table = runs_table()
    table.loc[len(table)] = {**table.iloc[0].to_dict(), "run_name": "copy", "db_fields": "feature"}
    with pytest.raises(ValueError, match="several runs share a cell: aggregation=max, n_variants=1"):
        plotting.plot_mr_heatmap(table, "aggregation", "n_variants")


def test_heatmap_unknown_column():
    with pytest.raises(ValueError, match="column 'seed' not in the runs table"):
        plotting.plot_mr_heatmap(runs_table(), "seed", "n_variants")


def test_mr_vs_variants_lines_and_band():
    fig = plotting.plot_mr_vs_variants(runs_table())
    ax = fig.axes[0]
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels == ["max", "mean", "oracle (oracle, upper bound)"]
    assert list(ax.get_lines()[0].get_ydata()) == [40.0, 44.0]
    assert len(ax.collections) == 2  # one interval band per setting
    assert list(ax.get_xticks()) == [1, 3]
    assert ax.get_ylabel() == "mR (%)"


def test_mr_vs_variants_needs_method_runs():
    table = runs_table()
    with pytest.raises(ValueError, match="no method runs"):
        plotting.plot_mr_vs_variants(table[table["oracle"]])


def test_rank_cdf_lines_per_direction():
    from analysis_fixtures import make_ranks

    ranks = {"a": make_ranks([1, 2, 2, 10], [1, 3]), "b": make_ranks([1, 1, 5, 7], [2, 2])}
    fig = plotting.plot_rank_cdf(ranks)
    t2i, i2t = fig.axes
    assert len(t2i.get_lines()) == 2 + 3  # two runs and three K guides
    assert t2i.get_title() == "Text → image"
    assert t2i.get_ylabel() == "Queries with rank ≤ r (%)"
    assert i2t.get_xlabel() == "Rank r (log scale)"


def test_rank_cdf_values():
    from analysis_fixtures import make_ranks

    fig = plotting.plot_rank_cdf({"a": make_ranks([1, 2, 2, 10], [3])}, ks=())
    t2i_line = fig.axes[0].get_lines()[0]
    i2t_line = fig.axes[1].get_lines()[0]
    assert list(t2i_line.get_xdata()) == [1, 2, 10]
    assert list(t2i_line.get_ydata()) == [25.0, 75.0, 100.0]
    assert list(i2t_line.get_xdata()) == [1, 3]  # starts at 0 % at rank 1
    assert list(i2t_line.get_ydata()) == [0.0, 100.0]


def test_rank_cdf_oracle_label():
    from analysis_fixtures import make_ranks

    ranks = make_ranks([1, 2], [1])
    ranks["episode"] = "fold1"
    fig = plotting.plot_rank_cdf({"holdout": ranks})
    assert [text.get_text() for text in fig.legends[0].get_texts()] == ["holdout (oracle, upper bound)"]


def per_class_metrics():
    classes = {"t2i": {"boat": {"n": 10, "R@1": 20.0, "R@5": 50.0, "R@10": 70.0},
                       "pond": {"n": 5, "R@1": 60.0, "R@5": 80.0, "R@10": 100.0},
                       "farm": {"n": 5, "R@1": 0.0, "R@5": 40.0, "R@10": 60.0}},
               "i2t": {"boat": {"n": 2, "R@1": 50.0, "R@5": 100.0, "R@10": 100.0},
                       "pond": {"n": 1, "R@1": 100.0, "R@5": 100.0, "R@10": 100.0},
                       "farm": {"n": 1, "R@1": 0.0, "R@5": 0.0, "R@10": 100.0}}}
    return make_metrics("classes", per_class=classes)


def test_per_class_bars():
    fig = plotting.plot_per_class_recall(per_class_metrics())
    t2i, i2t = fig.axes
    assert len(t2i.patches) == 9  # three classes x three K
    assert [tick.get_text() for tick in t2i.get_yticklabels()] == ["farm (5 / 1)", "boat (10 / 2)",
                                                                  "pond (5 / 1)"]
    assert t2i.get_xlabel() == "Recall (%)"
    assert i2t.get_title() == "Image → text"


def test_per_class_bar_widths():
    fig = plotting.plot_per_class_recall(per_class_metrics(), ks=[1])
    assert [patch.get_width() for patch in fig.axes[0].patches] == [0.0, 20.0, 60.0]


def test_per_class_without_labels():
    with pytest.raises(ValueError, match="has no per-class recall"):
        plotting.plot_per_class_recall(make_metrics("plain"))


def test_per_class_unknown_k():
    with pytest.raises(ValueError, match="no R@20"):
        plotting.plot_per_class_recall(per_class_metrics(), ks=[20])


def test_embedding_map_one_series_per_label():
    import numpy as np

    points = np.arange(20, dtype=float).reshape(10, 2)
    fig = plotting.plot_embedding_map(points, ["b", "a"] * 5)
    ax = fig.axes[0]
    assert len(ax.collections) == 2
    assert [text.get_text() for text in ax.get_legend().get_texts()] == ["a", "b"]
    assert ax.get_xlabel() == "PCA component 1 (arbitrary units)"


def test_embedding_map_greys_rare_classes():
    import numpy as np

    labels = ["c"] * 3 + ["a"] * 2 + ["b"] * 2 + ["d"]
    fig = plotting.plot_embedding_map(np.zeros((8, 2)), labels, max_classes=2)
    ax = fig.axes[0]
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    # "c" is the most frequent; "a" wins the tie with "b" by name.
    assert legend == ["2 other classes", "a", "c"]
    assert len(ax.collections[0].get_offsets()) == 3


def test_embedding_map_shape_check():
    import numpy as np

    with pytest.raises(ValueError, match=r"shape \(n, 2\)"):
        plotting.plot_embedding_map(np.zeros((4, 3)), ["a"] * 4)


# Figure 6 ----------------------------------------------------------------------------------------------------------


@pytest.fixture()
def demo(data_root):
    from trsllava_utils.data import load_dataset

    return load_dataset("demo", data_root=data_root)


def demo_ranks(demo):
    """Three text-to-image queries over the demo images: ground truth at rank 1, rank 3 and rank 12."""
    import pandas as pd

    ids = demo.image_ids
    rows = []
    for number, (truth, rank) in enumerate(((ids[0], 1), (ids[5], 3), (ids[9], 12))):
        others = [image for image in ids if image != truth]
        top5 = [truth] + others[:4] if rank == 1 else others[:2] + [truth] + others[2:4] if rank == 3 \
            else others[:5]
        item = demo.items[ids.index(truth)]
        rows.append({"direction": "t2i", "episode": "all", "query_id": f"{truth}#0",
                     "query_text": item.captions[0], "ground_truth": truth, "rank": rank, "tied": False,
                     "top5": " ".join(top5), "label": item.label or ""})
    first = demo.items[0]
    captions = [f"{first.image_id}#1", f"{ids[3]}#0", f"{first.image_id}#4", f"{ids[4]}#2", f"{ids[6]}#0"]
    rows.append({"direction": "i2t", "episode": "all", "query_id": first.image_id, "query_text": "a playground",
                 "ground_truth": first.image_id, "rank": 1, "tied": False, "top5": " ".join(captions),
                 "label": first.label or ""})
    return pd.DataFrame(rows)


def image_axes(fig):
    return [ax for ax in fig.axes if ax.images or ax.texts and "image not available" in ax.texts[0].get_text()]


def outlined(ax):
    return ax.spines["left"].get_visible() and ax.spines["left"].get_linewidth() == 2.5


def test_t2i_examples_tiles(demo):
    fig = plotting.plot_t2i_examples(demo_ranks(demo), demo, n_queries=3)
    tiles = image_axes(fig)
    assert len(tiles) == 3 * 5 + 1  # five per query, plus the rank-12 ground truth
    assert all(ax.images for ax in tiles)  # every demo image file exists
    assert sum(outlined(ax) for ax in tiles) == 3


def test_t2i_examples_missing_ground_truth_column(demo):
    fig = plotting.plot_t2i_examples(demo_ranks(demo), demo, query_ids=[f"{demo.image_ids[9]}#0"])
    titles = [ax.get_title() for ax in fig.axes]
    assert "rank 12" in titles


def test_t2i_examples_scores(demo):
    import pandas as pd

    ranks = demo_ranks(demo)
    query = ranks.iloc[0]
    scores = pd.DataFrame({"query_id": query["query_id"], "position": [1, 2, 3, 4, 5],
                           "score": [0.9, 0.8, 0.7, 0.6, 0.5]})
    fig = plotting.plot_t2i_examples(ranks, demo, query_ids=[query["query_id"]], scores=scores)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["#1  score 0.900", "#2  score 0.800", "#3  score 0.700", "#4  score 0.600",
                      "#5  score 0.500"]


def test_t2i_examples_blank_tile_for_missing_file(demo, tmp_path):
    from dataclasses import replace

    moved = replace(demo, items=[replace(item, path=tmp_path / "absent.jpg") for item in demo.items])
    fig = plotting.plot_t2i_examples(demo_ranks(demo), moved, n_queries=1)
    texts = [ax.texts[0].get_text() for ax in fig.axes if ax.texts and not ax.images]
    assert f"image not available\n{demo.image_ids[0]}" in texts


def test_t2i_examples_unknown_query(demo):
    with pytest.raises(ValueError, match="query ids not in the t2i ranks"):
        plotting.plot_t2i_examples(demo_ranks(demo), demo, query_ids=["nope#0"])


def test_i2t_example_captions(demo):
    fig = plotting.plot_i2t_example(demo_ranks(demo), demo)
    text_ax = fig.axes[1]
    lines = [text.get_text() for text in text_ax.texts]
    first = demo.items[0]
    assert fig.axes[0].images
    assert lines[0].startswith("Top 5 captions; the image's best own caption is at rank 1")
    assert "✓ own caption" in lines[1]
    assert first.captions[1].split()[0] in lines[1]
    assert f"caption of {demo.image_ids[3]}" in lines[2]


def test_example_figures_save(demo, tmp_path):
    ranks = demo_ranks(demo)
    paths = plotting.save_figure(plotting.plot_t2i_examples(ranks, demo), tmp_path / "t2i")
    paths += plotting.save_figure(plotting.plot_i2t_example(ranks, demo), tmp_path / "i2t")
    assert all(path.stat().st_size > 0 for path in paths)


def test_t2i_examples_scores_from_evaluation(demo):
    import numpy as np
    from sklearn.feature_extraction.text import HashingVectorizer

    from trsllava_utils.episodes import human_caption_set, method_episode, rsrt_text_set
    from trsllava_utils.retrieval import evaluate
    from trsllava_utils.rsrt import read_records

    database = rsrt_text_set(demo, read_records(demo.rsrt_file), ["one_sentence"])
    episode = method_episode(demo, database, database)
    hashing = HashingVectorizer(n_features=512, norm="l2", alternate_sign=False)
    evaluation = evaluate([episode], lambda texts: np.asarray(hashing.transform(texts).todense()) + 1e-3,
                          n_bootstrap=0, image_ids=demo.image_ids)
    first = human_caption_set(demo).ids[0]
    fig = plotting.plot_t2i_examples(evaluation, demo, query_ids=[first])
    titles = [ax.get_title() for ax in fig.axes if ax.get_title().startswith("#")]
    assert len(titles) == 5
    assert all("  score " in title for title in titles)
    assert fig.get_supxlabel() == ""
