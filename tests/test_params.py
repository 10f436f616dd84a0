"""The run parameters schema."""

from pathlib import Path

import pytest

from trsllava_utils.batch import collect_params
from trsllava_utils.params import (ParamsError, RunParams, load_params, params_from_namespace,
                                   validate_params)

PROJECT = Path(__file__).resolve().parent.parent


def test_defaults_are_the_demo_run():
    params = RunParams()
    assert params.run_name == "demo_minilm"
    assert params.dataset == "demo"
    assert params.ks == [1, 5, 10]


def test_unknown_key_named_with_suggestion():
    with pytest.raises(ParamsError) as info:
        validate_params({"agregation": "max"}, "run.yaml")
    message = str(info.value)
    assert "run.yaml" in message
    assert "unknown key 'agregation'" in message
    assert "did you mean 'aggregation'?" in message


def test_bad_literal_lists_allowed_values():
    with pytest.raises(ParamsError) as info:
        validate_params({"aggregation": "median"})
    message = str(info.value)
    assert "'aggregation'" in message
    assert "'median'" in message
    assert "allowed: 'max', 'mean'" in message


def test_bad_list_item_names_field():
    with pytest.raises(ParamsError, match=r"db_fields.0.*allowed: 'one_sentence', 'feature', 'caption'"):
        validate_params({"db_fields": ["title"]})


def test_ks_sorted_and_positive():
    assert validate_params({"ks": [10, 1, 5, 5]}).ks == [1, 5, 10]
    with pytest.raises(ParamsError, match="positive integer"):
        validate_params({"ks": [0, 5]})


def test_db_fields_in_record_order():
    params = validate_params({"db_fields": ["caption", "one_sentence"]})
    assert params.db_fields == ["one_sentence", "caption"]


def test_repeated_db_field_rejected():
    with pytest.raises(ParamsError, match="repeated field"):
        validate_params({"db_fields": ["caption", "caption"]})


@pytest.mark.parametrize("values, expected", [
    ({"dataset": "custom"}, "needs captions_file"),
    ({"captioner": "transformers"}, "needs captioner_model"),
    ({"captioner": "openai", "captioner_model": "llava"}, "needs openai_base_url"),
    ({"captioner": "human-holdout", "image_query_source": "image_queries"}, "leave image_query_source"),
])
def test_combinations_rejected(values, expected):
    with pytest.raises(ParamsError, match=expected):
        validate_params(values)


def test_run_name_must_be_a_folder_name():
    with pytest.raises(ParamsError, match="run_name"):
        validate_params({"run_name": "../escape"})


def test_load_params_missing_file(tmp_path):
    with pytest.raises(ParamsError, match="parameters file not found"):
        load_params(tmp_path / "absent.yaml")


def test_load_params_invalid_yaml(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("run_name: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(path)


def test_namespace_ignores_other_variables():
    params = params_from_namespace({"run_name": "x1", "aggregation": "mean", "dataset_summary": 3})
    assert params.run_name == "x1"
    assert params.aggregation == "mean"


@pytest.mark.parametrize("path", sorted((PROJECT / "params").rglob("*.yaml")),
                         ids=lambda p: str(p.relative_to(PROJECT / "params")))
def test_shipped_params_files_valid(path):
    runs = collect_params([path])
    assert runs
    if len(runs) == 1:
        assert runs[0].run_name == path.stem


def test_shipped_run_names_unique():
    runs = collect_params(sorted((PROJECT / "params").rglob("*.yaml")))
    names = [run.run_name for run in runs]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("values, expected", [
    ({"n_variants": 12}, "allowed: an integer >= 1, <= 10"),
    ({"data_root": 3}, "allowed: null or a string"),
    ({"ks": "five"}, "allowed: a list of integers"),
    ({"temperature": "hot"}, "allowed: a number >= 0.0, <= 2.0"),
])
def test_bad_value_describes_allowed(values, expected):
    with pytest.raises(ParamsError) as info:
        validate_params(values)
    assert expected in str(info.value)
