"""The batch runner: grids, parameters files, failures and skipping."""

import json

import nbformat
import pytest
import yaml

from trsllava_utils import batch
from trsllava_utils.params import ParamsError, notebook_params, validate_params


def test_grid_expands_scalar_axes():
    runs = batch.expand_grid({"run_name": "g_{dataset}_{n_variants}", "dataset": ["demo", "rsitmd"],
                              "n_variants": [1, 3]})
    assert [r.run_name for r in runs] == ["g_demo_1", "g_demo_3", "g_rsitmd_1", "g_rsitmd_3"]
    assert runs[3].n_variants == 3


def test_grid_list_field_needs_list_of_lists():
    single = batch.expand_grid({"run_name": "one", "db_fields": ["caption", "feature"], "ks": [1, 5]})
    assert len(single) == 1
    assert single[0].db_fields == ["feature", "caption"]
    swept = batch.expand_grid({"run_name": "f_{db_fields}", "db_fields": [["caption"], ["one_sentence", "caption"]]})
    assert [r.run_name for r in swept] == ["f_caption", "f_one_sentence-caption"]


def test_grid_name_without_template_gets_values():
    runs = batch.expand_grid({"run_name": "sweep", "aggregation": ["max", "mean"]})
    assert [r.run_name for r in runs] == ["sweep_max", "sweep_mean"]


def test_grid_repeated_names_rejected():
    with pytest.raises(ParamsError, match="share the name"):
        batch.expand_grid({"run_name": "g_{dataset}", "dataset": ["demo"], "n_variants": [1, 2]})


def test_grid_invalid_value_names_run():
    with pytest.raises(ParamsError, match=r"(?s)run g_median.*'aggregation'"):
        batch.expand_grid({"run_name": "g_{aggregation}", "aggregation": ["max", "median"]})


def test_collect_params_reads_folders(tmp_path):
    (tmp_path / "b.yaml").write_text("run_name: b\n")
    (tmp_path / "a.yaml").write_text("run_name: a\naggregation: mean\n")
    runs = batch.collect_params([tmp_path])
    assert [r.run_name for r in runs] == ["a", "b"]


def test_collect_params_rejects_repeated_run(tmp_path):
    (tmp_path / "one.yaml").write_text("run_name: same\n")
    (tmp_path / "two.yaml").write_text("run_name: same\n")
    with pytest.raises(ParamsError, match=r"define the run\(s\) \['same'\]"):
        batch.collect_params([tmp_path / "one.yaml", tmp_path / "two.yaml"])


def test_is_complete_compares_parameters(tmp_path):
    params = validate_params({"run_name": "r", "output_root": str(tmp_path)})
    assert not batch.is_complete(params)
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "metrics.json").write_text(json.dumps({"params": notebook_params(params)}))
    assert batch.is_complete(params)
    changed = validate_params({"run_name": "r", "output_root": str(tmp_path), "aggregation": "mean"})
    assert not batch.is_complete(changed)


def write_notebook(path, code: str) -> None:
    notebook = nbformat.v4.new_notebook()
    parameters = nbformat.v4.new_code_cell("run_name = 'x'")
    parameters.metadata["tags"] = ["parameters"]
    notebook.cells = [parameters, nbformat.v4.new_code_cell(code)]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, path)


@pytest.mark.slow
def test_failing_run_reported_and_batch_goes_on(tmp_path):
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    write_notebook(notebooks / "first.ipynb",
                   "if run_name == 'bad':\n    raise RuntimeError('broken on purpose')\n"
                   "open(f'{output_root}/{run_name}/done.txt', 'w').write(run_name)")
    runs = [validate_params({"run_name": name, "output_root": str(tmp_path / "out")}) for name in ("bad", "good")]
    outcomes = batch.run_batch(runs, notebooks=["first"], progress=False, notebook_dir=notebooks)
    assert [o.status for o in outcomes] == ["failed", "done"]
    assert "broken on purpose" in outcomes[0].error
    assert outcomes[0].notebook == tmp_path / "out" / "bad" / "notebooks" / "first.ipynb"
    assert outcomes[0].notebook.is_file()
    assert (tmp_path / "out" / "good" / "done.txt").read_text() == "good"


def test_cli_bad_params_exit_code(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"run_name": "bad", "aggregation": "median"}))
    assert batch.main([str(path)]) == 2
    assert "'aggregation'" in capsys.readouterr().err


def test_cli_dry_run_lists_runs(tmp_path, capsys):
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump({"run_name": "g_{aggregation}", "aggregation": ["max", "mean"],
                                    "output_root": str(tmp_path)}))
    assert batch.main([str(path), "--dry-run"]) == 0
    output = capsys.readouterr().out
    assert "g_max\trun" in output
    assert "2 run(s)" in output


def test_summary_keeps_earlier_runs(tmp_path):
    from analysis_fixtures import make_metrics, write_run

    write_run(tmp_path, make_metrics("earlier_run"))
    write_run(tmp_path, make_metrics("this_run"))
    runs = [validate_params({"run_name": "this_run", "output_root": str(tmp_path)})]
    paths, table = batch.write_batch_summary(runs)
    written = paths["csv"].read_text()
    assert "earlier_run" in written
    assert "this_run" in written
    assert "this_run" in table
    assert "earlier_run" not in table
