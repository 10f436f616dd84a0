"""Tests of the run summaries and the published-results table."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from analysis_fixtures import make_metrics, write_run
from trsllava_utils.baselines import PUBLISHED, published_results
from trsllava_utils.summary import (MetricsFileError, ablation_slice, collect_runs, format_markdown, format_value, latex_escape,
                                    metric_keys, write_summary)


@pytest.fixture()
def three_runs(tmp_path):
    """Two training-free runs (N=5, N=1) and one oracle run on RSITMD, plus a folder without metrics."""
    write_run(tmp_path, make_metrics("rsitmd_n5", n_variants=5))
    write_run(tmp_path, make_metrics("rsitmd_n1", n_variants=1, recalls=(4.0, 20.0, 30.0, 6.0, 24.0, 36.0)))
    write_run(tmp_path, make_metrics("rsitmd_oracle", captioner="human-holdout",
                                     recalls=(30.0, 60.0, 70.0, 40.0, 65.0, 75.0)))
    (tmp_path / "cache").mkdir()
    return tmp_path


def test_metric_keys_order():
    keys = ["mR", "i2t_R@10", "t2i_R@10", "i2t_R@1", "t2i_R@5", "t2i_R@1", "i2t_R@5", "created"]
    assert metric_keys(keys) == ["t2i_R@1", "t2i_R@5", "t2i_R@10", "i2t_R@1", "i2t_R@5", "i2t_R@10", "mR"]


def test_collect_runs_rows_and_order(three_runs):
    df = collect_runs(three_runs)
    assert list(df["run_name"]) == ["rsitmd_n1", "rsitmd_n5", "rsitmd_oracle"]
    assert list(df["oracle"]) == [False, False, True]
    assert df.attrs["skipped"] == []


def test_collect_runs_columns(three_runs):
    df = collect_runs(three_runs)
    assert list(df.columns[:11]) == ["run_name", "dataset", "split", "captioner", "oracle", "label",
                                     "embedding_model", "db_fields", "db_text_mode", "n_variants", "aggregation"]
    assert list(df.columns[11:18]) == ["t2i_R@1", "t2i_R@5", "t2i_R@10", "i2t_R@1", "i2t_R@5", "i2t_R@10", "mR"]
    assert "mR_lo" in df.columns
    assert "mR_hi" in df.columns


def test_collect_runs_values(three_runs):
    row = collect_runs(three_runs).set_index("run_name").loc["rsitmd_n1"]
    assert row["db_fields"] == "one_sentence+feature+caption"
    assert row["mR"] == pytest.approx(20.0)  # (4 + 20 + 30 + 6 + 24 + 36) / 6
    assert row["mR_lo"] == pytest.approx(18.0)
    assert row["mR_hi"] == pytest.approx(22.0)
    assert row["n_variants"] == 1


def test_collect_runs_skips_broken_file(three_runs, caplog):
    broken = three_runs / "broken"
    broken.mkdir()
    (broken / "metrics.json").write_text("{not json", encoding="utf-8")
    df = collect_runs(three_runs)
    assert len(df) == 3
    assert df.attrs["skipped"] == [str(broken / "metrics.json")]
    assert "broken/metrics.json" in caplog.text


def test_collect_runs_strict_names_file(three_runs):
    broken = three_runs / "broken"
    broken.mkdir()
    (broken / "metrics.json").write_text(json.dumps({"run_name": "broken"}), encoding="utf-8")
    with pytest.raises(MetricsFileError, match=r"broken/metrics.json: missing key 'params'"):
        collect_runs(three_runs, strict=True)


def test_collect_runs_rejects_fractions(tmp_path):
    metrics = make_metrics("fractions")
    metrics["unit"] = "fraction"
    write_run(tmp_path, metrics)
    with pytest.raises(MetricsFileError, match="unit is 'fraction'"):
        collect_runs(tmp_path, strict=True)


def test_collect_runs_without_intervals(tmp_path):
    metrics = make_metrics("no_bootstrap")
    metrics["ci95"] = {key: [None, None] for key in metrics["metrics"]}
    write_run(tmp_path, metrics)
    df = collect_runs(tmp_path, strict=True)
    assert math.isnan(df.loc[0, "mR_lo"])
    assert format_markdown(df).count("29.17 |") == 1  # mR without brackets


def test_collect_runs_extra_k(tmp_path):
    metrics = make_metrics("k50")
    metrics["metrics"]["t2i_R@50"] = 90.0
    metrics["ci95"]["t2i_R@50"] = [88.0, 92.0]
    write_run(tmp_path, metrics)
    write_run(tmp_path, make_metrics("k10"))
    df = collect_runs(tmp_path)
    assert list(df.columns[11:19]) == ["t2i_R@1", "t2i_R@5", "t2i_R@10", "t2i_R@50", "i2t_R@1", "i2t_R@5",
                                       "i2t_R@10", "mR"]
    assert math.isnan(df.set_index("run_name").loc["k10", "t2i_R@50"])


def test_collect_runs_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="outputs folder not found"):
        collect_runs(tmp_path / "absent")


def test_collect_runs_empty_root(tmp_path):
    df = collect_runs(tmp_path)
    assert df.empty
    assert "mR" not in df.columns or df["mR"].empty


def test_format_value_interval():
    assert format_value(29.1666, 27.1666, 31.1666) == "29.17 [27.2, 31.2]"


def test_format_value_approximate_latex():
    assert format_value(31.33, approximate=True, latex=True) == r"$\approx$31.33"


def test_format_value_missing():
    assert format_value(math.nan) == "–"


def test_latex_escape_specials():
    assert latex_escape("a_b & 95%") == r"a\_b \& 95\%"


def test_markdown_groups_oracle_after_runs(three_runs):
    text = format_markdown(collect_runs(three_runs))
    lines = text.splitlines()
    runs_title = next(i for i, line in enumerate(lines) if "This workbook: training-free runs" in line)
    oracle_title = next(i for i, line in enumerate(lines) if "human-holdout oracle (upper bound" in line)
    oracle_row = next(i for i, line in enumerate(lines) if line.startswith("| rsitmd_oracle"))
    n5_row = next(i for i, line in enumerate(lines) if line.startswith("| rsitmd_n5"))
    assert runs_title < n5_row < oracle_title < oracle_row
    assert "| rsitmd_oracle (upper bound) |" in text


def test_markdown_interval_cell(three_runs):
    text = format_markdown(collect_runs(three_runs))
    n5_row = next(line for line in text.splitlines() if line.startswith("| rsitmd_n5"))
    assert "29.17 [27.2, 31.2]" in n5_row  # mR = (10 + 30 + 40 + 15 + 35 + 45) / 6
    assert "10.00 [8.0, 12.0]" in n5_row


def test_markdown_shows_varying_axis_only(three_runs):
    text = format_markdown(collect_runs(three_runs))
    header = next(line for line in text.splitlines() if line.startswith("| Method / run"))
    assert "| N |" in header
    assert "Embedding" not in header
    assert "Embedding = all-MiniLM-L6-v2" in text


def test_markdown_without_baselines(three_runs):
    assert "GaLR" not in format_markdown(collect_runs(three_runs))


def test_markdown_empty_table():
    assert format_markdown(pd.DataFrame()) == "No runs with a metrics.json were found.\n"


def test_write_summary_files(three_runs):
    paths = write_summary(collect_runs(three_runs), three_runs)
    assert sorted(paths) == ["csv", "md", "tex"]
    assert all(path.is_file() for path in paths.values())
    assert paths["csv"] == three_runs / "summary.csv"


def test_write_summary_csv_roundtrip(three_runs):
    paths = write_summary(collect_runs(three_runs), three_runs)
    csv = pd.read_csv(paths["csv"])
    assert list(csv["run_name"]) == ["rsitmd_n1", "rsitmd_n5", "rsitmd_oracle"]
    assert csv.loc[0, "mR"] == pytest.approx(20.0)


def test_write_summary_markdown_baselines(three_runs):
    text = write_summary(collect_runs(three_runs), three_runs)["md"].read_text(encoding="utf-8")
    galr = next(line for line in text.splitlines() if line.startswith("| GaLR"))
    assert "31.41" in galr
    assert "GaLR (Yuan et al., 2022)" in galr
    assert "| **Published: supervised** |" in text
    assert "42.62" in text
    # RSICD values have no RSICD runs here, so they go into their own table.
    assert "| TRSLLaVA text-to-text | rsicd | training-free | ≈31.33 |" in text


def test_write_summary_latex_booktabs(three_runs):
    tex = write_summary(collect_runs(three_runs), three_runs)["tex"].read_text(encoding="utf-8")
    assert tex.count(r"\toprule") == 2
    assert tex.count(r"\bottomrule") == 2
    assert r"\midrule" in tex
    assert r"29.17 {\scriptsize [27.2, 31.2]}" in tex
    assert r"rsitmd\_oracle (upper bound)" in tex
    assert r"$\approx$31.33" in tex


def test_write_summary_latex_oracle_separated(three_runs):
    tex = write_summary(collect_runs(three_runs), three_runs)["tex"].read_text(encoding="utf-8")
    lines = tex.splitlines()
    oracle_row = next(i for i, line in enumerate(lines) if line.startswith(r"rsitmd\_oracle"))
    assert lines[oracle_row - 2] == r"\midrule"
    assert "human-holdout oracle (upper bound" in lines[oracle_row - 1]


def test_write_summary_no_baselines(three_runs):
    paths = write_summary(collect_runs(three_runs), three_runs, with_baselines=False)
    assert "GaLR" not in paths["md"].read_text(encoding="utf-8")
    assert "GaLR" not in paths["tex"].read_text(encoding="utf-8")


def test_demo_runs_note_no_published_split(tmp_path):
    write_run(tmp_path, make_metrics("demo_run", dataset="demo"))
    text = format_markdown(collect_runs(tmp_path), with_baselines=True)
    assert "No published results exist for this split" in text
    assert "### Published results on datasets without runs here" in text


def test_published_values_as_given():
    table = published_results()
    values = {(row.method, row.backbone, row.dataset, row.mR) for row in table.itertuples()}
    expected = {("CLIP", "ViT-B/32", "rsitmd", 24.19), ("CLIP", "ViT-B/32", "rsicd", 15.74),
                ("CLIP", "ViT-B/32", "rsitmd", 23.86), ("TRSLLaVA text-to-text", "", "rsitmd", 42.62),
                ("TRSLLaVA text-to-text", "", "rsicd", 31.33), ("GeoRSCLIP", "ViT-H/14", "rsitmd", 40.38),
                ("GeoRSCLIP", "ViT-H/14", "rsicd", 28.48), ("GeoRSCLIP fine-tuned", "", "rsitmd", 51.81),
                ("GeoRSCLIP fine-tuned", "", "rsicd", 38.87), ("RemoteCLIP", "ViT-L/14", "rsitmd", 50.52),
                ("RemoteCLIP", "ViT-L/14", "rsicd", 36.35), ("AMFMN", "", "rsitmd", 29.32),
                ("AMFMN", "", "rsitmd", 29.72), ("AMFMN", "", "rsicd", 16.42), ("GaLR", "", "rsitmd", 31.41),
                ("GaLR", "", "rsicd", 18.96), ("PIR", "", "rsitmd", 38.24), ("PIR", "", "rsicd", 24.46)}
    assert values == expected


def test_published_kinds():
    kinds = {(row.method, row.dataset): row.kind for row in PUBLISHED}
    assert kinds[("TRSLLaVA text-to-text", "rsitmd")] == "training-free"
    assert kinds[("CLIP", "rsicd")] == "zero-shot"
    assert kinds[("GaLR", "rsicd")] == "supervised"


def test_published_approximate_only_rsicd_method():
    approximate = [(row.method, row.dataset) for row in PUBLISHED if row.approximate]
    assert approximate == [("TRSLLaVA text-to-text", "rsicd")]


def test_published_sources_non_empty():
    assert all(row.source for row in PUBLISHED)


def test_published_results_filter():
    assert set(published_results("RSICD")["dataset"]) == {"rsicd"}
    assert published_results("demo").empty


def test_ablation_slice_fixes_other_axes(tmp_path):
    write_run(tmp_path, make_metrics("n1_max", dataset="demo", n_variants=1))
    write_run(tmp_path, make_metrics("n3_max", dataset="demo", n_variants=3))
    write_run(tmp_path, make_metrics("n3_rsitmd", dataset="rsitmd", n_variants=3))
    runs = collect_runs(tmp_path)
    reference = runs[runs["run_name"] == "n1_max"].iloc[0].to_dict()
    sliced = ablation_slice(runs, reference, ["n_variants"])
    assert sliced["run_name"].tolist() == ["n1_max", "n3_max"]


def test_ablation_slice_keeps_reference_among_twins(tmp_path):
    write_run(tmp_path, make_metrics("a_default", dataset="demo"))
    write_run(tmp_path, make_metrics("b_default", dataset="demo"))
    runs = collect_runs(tmp_path)
    reference = runs[runs["run_name"] == "b_default"].iloc[0].to_dict()
    sliced = ablation_slice(runs, reference, ["n_variants"])
    assert sliced["run_name"].tolist() == ["b_default"]
