"""Tests of the precomputed backend on the real demo RSRT file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trsllava_utils.captioning import precomputed_records, write_run_records
from trsllava_utils.data import Dataset, ImageItem, LoadReport, load_dataset
from trsllava_utils.rsrt import RecordError, RSRTRecord, read_records


def _variant(k: int) -> dict[str, str]:
    return {"one_sentence": f"summary {k}", "feature": f"feature {k}", "caption": f"caption {k}"}


def _dataset(ids: list[str]) -> Dataset:
    items = [ImageItem(image_id=i, captions=("a caption",)) for i in ids]
    return Dataset(name="toy", split="test", items=items, report=LoadReport(source="toy", format="json"))


def _write_file(path: Path, images: list[str], n: int) -> Path:
    with path.open("w", encoding="utf-8") as handle:
        for image in images:
            handle.write(json.dumps({"image": image, "variants": [_variant(k) for k in range(n)],
                                     "model": "m"}) + "\n")
    return path


def test_precomputed_demo_all_images():
    dataset = load_dataset("demo")
    records = precomputed_records(dataset, None, n_variants=5)
    assert [r.image for r in records] == dataset.image_ids
    assert all(len(r.variants) == 5 for r in records)
    assert records[0].model == "claude"
    assert records[0].extra["source"] == str(dataset.rsrt_file)


def test_precomputed_keeps_first_variants(tmp_path):
    path = _write_file(tmp_path / "r.jsonl", ["images/a.jpg", "images/b.jpg"], n=4)
    records = precomputed_records(_dataset(["b.jpg", "a.jpg"]), path, n_variants=2)
    assert [r.image for r in records] == ["b.jpg", "a.jpg"]
    assert records[0].variants == [_variant(0), _variant(1)]


def test_precomputed_missing_image_named(tmp_path):
    path = _write_file(tmp_path / "r.jsonl", ["images/a.jpg"], n=2)
    with pytest.raises(RecordError, match=r"1 of 2 images .*'zz\.jpg'"):
        precomputed_records(_dataset(["a.jpg", "zz.jpg"]), path, n_variants=2)


def test_precomputed_too_few_variants(tmp_path):
    path = _write_file(tmp_path / "r.jsonl", ["a.jpg"], n=2)
    with pytest.raises(RecordError, match="line 1.*2 variants, expected 3"):
        precomputed_records(_dataset(["a.jpg"]), path, n_variants=3)


def test_precomputed_no_registered_file():
    with pytest.raises(FileNotFoundError, match="rsrt_file"):
        precomputed_records(_dataset(["a.jpg"]), None, n_variants=1)


def test_precomputed_extra_records_ignored(tmp_path):
    path = _write_file(tmp_path / "r.jsonl", ["a.jpg", "other.jpg"], n=1)
    records = precomputed_records(_dataset(["a.jpg"]), path, n_variants=1)
    assert [r.image for r in records] == ["a.jpg"]


def test_write_run_records_roundtrip(tmp_path):
    records = [RSRTRecord("a.jpg", [_variant(0), _variant(1)], model="m")]
    out = write_run_records(records, tmp_path / "run" / "rsrt.jsonl", n_variants=2, captioner="precomputed")
    line = json.loads(out.read_text(encoding="utf-8"))
    assert line["captioner"] == "precomputed"
    assert read_records(out, 2)[0].variants == records[0].variants
    assert not (tmp_path / "run" / "rsrt.jsonl.tmp").exists()


def test_write_run_records_invalid_keeps_old(tmp_path):
    out = tmp_path / "rsrt.jsonl"
    out.write_text("old\n", encoding="utf-8")
    bad = [RSRTRecord("a.jpg", [_variant(0), _variant(0)])]
    with pytest.raises(RecordError, match="repeats variant 1"):
        write_run_records(bad, out)
    assert out.read_text(encoding="utf-8") == "old\n"
