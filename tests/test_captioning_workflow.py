"""The run step that notebook 01 and the command line call, for each backend."""

from __future__ import annotations

import json

import pytest
from captioning_stub import StubChatServer, variants_json

from trsllava_utils.captioning import (HoldoutCaptioner, PrecomputedCaptioner, caption_dataset, make_captioner,
                                       read_image_queries, run_image_queries, show_record)
from trsllava_utils.captioning.__main__ import main
from trsllava_utils.data import load_dataset
from trsllava_utils.params import validate_params
from trsllava_utils.rsrt import read_records


@pytest.fixture
def demo(data_root):
    return load_dataset("demo", data_root=data_root)


def test_make_captioner_precomputed():
    captioner = make_captioner(validate_params({"captioner": "precomputed", "n_variants": 3}))
    assert isinstance(captioner, PrecomputedCaptioner)
    assert captioner.n_variants == 3
    assert captioner.needs_images is False


def test_make_captioner_holdout():
    assert isinstance(make_captioner(validate_params({"captioner": "human-holdout"})), HoldoutCaptioner)


def test_step_precomputed_demo(demo, tmp_path):
    params = validate_params({"captioner": "precomputed", "n_variants": 3})
    report = caption_dataset(params, demo, tmp_path, show_progress=False)
    records = read_records(tmp_path / "rsrt.jsonl")
    assert report.rsrt.n_written == 19
    assert report.image_queries is None
    assert len(records) == 19
    assert all(len(r.variants) == 3 for r in records)
    assert records[0].extra["captioner"] == "precomputed"


def test_step_precomputed_limit(demo, tmp_path):
    params = validate_params({"captioner": "precomputed"})
    report = caption_dataset(params, demo, tmp_path, limit=4, show_progress=False)
    assert report.rsrt.n_written == 4


def test_show_record_table(demo, tmp_path):
    params = validate_params({"captioner": "precomputed", "n_variants": 2})
    caption_dataset(params, demo, tmp_path, show_progress=False)
    table = show_record(params, demo, tmp_path, index=1)
    assert list(table.columns) == ["one_sentence", "feature", "caption"]
    assert list(table.index) == ["variant 1", "variant 2"]
    assert table.index.name == "00002.jpg (claude)"


def test_step_holdout_writes_folds(demo, tmp_path):
    params = validate_params({"captioner": "human-holdout"})
    report = caption_dataset(params, demo, tmp_path, show_progress=False)
    folds = json.loads((tmp_path / "holdout_folds.json").read_text(encoding="utf-8"))
    assert not (tmp_path / "rsrt.jsonl").exists()
    assert report.rsrt.n_written == 0
    assert "needs no captioning" in str(report)
    assert folds["n_folds"] == 5
    assert [f["n_queries"] for f in folds["folds"]] == [19] * 5
    assert [f["n_database_texts"] for f in folds["folds"]] == [76] * 5


def test_show_record_holdout(demo, tmp_path):
    params = validate_params({"captioner": "human-holdout"})
    table = show_record(params, demo, tmp_path, index=0)
    assert table["caption"].tolist() == list(demo.items[0].captions)


def test_image_queries_need_a_model(demo, tmp_path):
    with pytest.raises(ValueError, match="no model to write image queries"):
        run_image_queries(demo, HoldoutCaptioner(), tmp_path / "q.jsonl", tmp_path / "f.jsonl")


def _body_text(body):
    return body["messages"][0]["content"][0]["text"]


def test_step_openai_with_image_queries(demo, tmp_path):
    def reply(number, body):
        text = _body_text(body)
        return ("reply", "A park with a pond." if "caption dataset" in text else variants_json(f"r{number}", 2))

    with StubChatServer() as server:
        server.default = lambda number: reply(number, server.requests[number])
        params = validate_params({"captioner": "openai", "openai_base_url": server.base_url,
                                  "captioner_model": "stub-vlm", "n_variants": 2, "max_concurrency": 2,
                                  "image_query_source": "image_queries"})
        report = caption_dataset(params, demo, tmp_path, limit=3, show_progress=False)
    assert report.rsrt.n_written == 3
    assert report.image_queries.n_written == 3
    assert len(read_records(tmp_path / "rsrt.jsonl", n_variants=2)) == 3
    assert read_image_queries(tmp_path / "image_queries.jsonl") == {
        image_id: ["A park with a pond."] for image_id in demo.image_ids[:3]}


def test_cli_bad_params_file(tmp_path, capsys):
    path = tmp_path / "p.yaml"
    path.write_text("captioner: gpt\n", encoding="utf-8")
    assert main(["--params", str(path)]) == 2
    assert "invalid value 'gpt' for 'captioner'" in capsys.readouterr().err


def test_token_budget_warning(caplog):
    from trsllava_utils.captioning.backend_openai import OpenAICaptioner

    with caplog.at_level("WARNING"):
        OpenAICaptioner("http://127.0.0.1:9/v1", "m", n_variants=5, max_new_tokens=768)
    assert "max_new_tokens=768 is below the estimated 1150 tokens of a reply with 5 variant(s)" in caplog.text


def test_token_budget_enough(caplog):
    from trsllava_utils.captioning.backend_openai import OpenAICaptioner

    with caplog.at_level("WARNING"):
        OpenAICaptioner("http://127.0.0.1:9/v1", "m", n_variants=5, generation_mode="per_variant",
                        max_new_tokens=768)
    assert "max_new_tokens" not in caplog.text
