"""The numbered notebooks: stored clean, parameterised, and runnable end to end."""

import ast
import json
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from trsllava_utils import batch
from trsllava_utils.params import RunParams, notebook_params, validate_params

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOK_PATHS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))


def test_series_is_the_four_stages():
    assert [p.stem for p in NOTEBOOK_PATHS] == list(batch.NOTEBOOKS)


@pytest.mark.parametrize("path", NOTEBOOK_PATHS, ids=lambda p: p.stem)
def test_notebook_stored_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    code_cells = [c for c in notebook.cells if c.cell_type == "code"]
    assert all(c.outputs == [] for c in code_cells)
    assert all(c.execution_count is None for c in code_cells)


@pytest.mark.parametrize("path", NOTEBOOK_PATHS, ids=lambda p: p.stem)
def test_parameters_cell_matches_schema(path):
    notebook = nbformat.read(path, as_version=4)
    tagged = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    assignments = {}
    for node in ast.parse(tagged[0].source).body:
        assert isinstance(node, ast.Assign), "the parameters cell holds literal assignments only"
        assignments[node.targets[0].id] = ast.literal_eval(node.value)
    assert assignments == RunParams().model_dump(mode="json")


@pytest.mark.parametrize("path", NOTEBOOK_PATHS, ids=lambda p: p.stem)
def test_notebook_explains_before_code(path):
    notebook = nbformat.read(path, as_version=4)
    assert notebook.cells[0].cell_type == "markdown"
    assert notebook.cells[0].source.startswith("# 0")
    assert notebook.metadata["kernelspec"]["name"] == "python3"


def run_series(tmp_path: Path, **overrides) -> tuple[RunParams, Path]:
    params = validate_params({"output_root": str(tmp_path), "bootstrap_samples": 200, **overrides})
    outcome = batch.execute_run(params, progress=False)
    assert outcome.status == "done", f"{outcome.error} (see {outcome.notebook})"
    return params, tmp_path / params.run_name


@pytest.mark.slow
def test_demo_series_writes_metrics(tmp_path):
    params, folder = run_series(tmp_path, run_name="demo_test")
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["params"] == notebook_params(params)
    assert metrics["oracle"] is False
    assert metrics["dataset"]["n_images"] == 19
    assert metrics["counts"]["t2i_queries"] == 95
    assert metrics["counts"]["t2i_gallery_texts"] == 95
    recalls = [metrics["metrics"][f"{d}_R@{k}"] for d in ("t2i", "i2t") for k in (1, 5, 10)]
    assert all(0.0 <= r <= 100.0 for r in recalls)
    assert metrics["metrics"]["mR"] == pytest.approx(sum(recalls) / 6)
    # 19 images: chance R@10 is 53%; real descriptions must do better.
    assert metrics["metrics"]["t2i_R@10"] > 60.0
    ranks = pd.read_csv(folder / "ranks.csv")
    assert (ranks["direction"] == "t2i").sum() == 95
    assert (ranks["direction"] == "i2t").sum() == 19
    assert (folder / "rsrt.jsonl").read_text().count("\n") == 19
    for name in ("recalls", "rank_cdf"):
        assert (folder / "figures" / f"{name}.pdf").stat().st_size > 0
        assert (folder / "figures" / f"{name}.png").stat().st_size > 0
    executed = sorted(p.stem for p in (folder / "notebooks").glob("*.ipynb"))
    assert executed == list(batch.NOTEBOOKS)


@pytest.mark.slow
def test_oracle_series_has_five_folds(tmp_path):
    _, folder = run_series(tmp_path, run_name="demo_oracle_test", captioner="human-holdout")
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["oracle"] is True
    assert "upper bound" in metrics["label"]
    assert [f["fold"] for f in metrics["per_fold"]] == ["fold1", "fold2", "fold3", "fold4", "fold5"]
    assert metrics["counts"]["t2i_queries"] == 95
    assert not (folder / "rsrt.jsonl").exists()
