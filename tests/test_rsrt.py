"""RSRT records: validation, texts and JSON Lines files."""

import json

import pytest

from trsllava_utils.rsrt import (JsonlAppender, RecordError, RSRTRecord, read_records, record_texts,
                                 validate_record)


def variant(tag: str) -> dict[str, str]:
    return {"one_sentence": f"S {tag}.", "feature": f"F {tag}.", "caption": f"C {tag}."}


def test_valid_record_passes():
    validate_record(RSRTRecord("a.jpg", [variant("1"), variant("2")]), n_variants=2)


def test_too_few_variants_rejected():
    with pytest.raises(RecordError, match="1 variants, expected 2"):
        validate_record(RSRTRecord("a.jpg", [variant("1")]), n_variants=2)


def test_empty_field_named():
    bad = variant("1") | {"feature": "  "}
    with pytest.raises(RecordError, match=r"image 'a.jpg', variant 1: field 'feature'"):
        validate_record(RSRTRecord("a.jpg", [bad]))


def test_duplicate_after_normalising_rejected():
    twin = {k: "  " + v.upper() for k, v in variant("1").items()}
    with pytest.raises(RecordError, match="variant 2 repeats variant 1"):
        validate_record(RSRTRecord("a.jpg", [variant("1"), twin]))


def test_joined_and_per_field_texts():
    record = RSRTRecord("a.jpg", [variant("1"), variant("2")])
    assert record_texts(record, ["caption", "one_sentence"]) == ["S 1. C 1.", "S 2. C 2."]
    assert record_texts(record, ["feature", "caption"], "per_field", n_variants=1) == ["F 1.", "C 1."]


def test_torn_last_line_dropped(tmp_path, caplog):
    path = tmp_path / "rsrt.jsonl"
    good = json.dumps({"image": "a.jpg", "variants": [variant("1")], "model": "m"})
    path.write_text(good + "\n" + good[:30])
    records = read_records(path)
    assert [r.image for r in records] == ["a.jpg"]
    assert "torn last line 2" in caplog.text


def test_bad_middle_line_names_line(tmp_path):
    path = tmp_path / "rsrt.jsonl"
    good = json.dumps({"image": "a.jpg", "variants": [variant("1")]})
    path.write_text(good + "\n{broken\n" + good + "\n")
    with pytest.raises(RecordError, match=r"rsrt.jsonl, line 2: not valid JSON"):
        read_records(path)


def test_appender_resumes_after_torn_tail(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text('{"image": "a.jpg"}\n{"ima')
    with JsonlAppender(path) as out:
        out.write({"image": "b.jpg"})
    lines = path.read_text().splitlines()
    assert lines == ['{"image": "a.jpg"}', '{"image": "b.jpg"}']


def test_shared_demo_records_valid(data_root):
    records = read_records(data_root / "demo" / "rsrt.jsonl", n_variants=5)
    assert len(records) == 19
    assert all(len(r.variants) == 5 for r in records)
