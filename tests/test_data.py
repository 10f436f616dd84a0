"""Tests of the dataset loaders, their checks, the summary and the download command.

Real files come from the shared data folder; every other format and every
bad input is a small file written by the test.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import subprocess
import sys
import threading
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from trsllava_utils import data_download
from trsllava_utils.data import (
    REGISTRY,
    Dataset,
    DatasetError,
    ImageItem,
    LoadReport,
    load_dataset,
    load_dataset_from_params,
    main,
    show_examples,
    summarize_dataset,
    summary_table,
)
from trsllava_utils.data_download import PINS, DownloadError, download_dataset
from trsllava_utils.data_formats import detect_format, label_from_name
from trsllava_utils.params import RunParams
from trsllava_utils.paths import PROJECT_ROOT


def _json(path: Path, value: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value), encoding="utf-8")
    return path


def _lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _five(stem: str) -> list[str]:
    return [f"{stem} caption {k}" for k in range(5)]


def _custom(path: Path, **kwargs) -> Dataset:
    return load_dataset("custom", captions_file=path, **kwargs)


def _by_id(ds: Dataset) -> dict[str, tuple[str, ...]]:
    return {item.image_id: item.captions for item in ds.items}


# ----------------------------------------------------------------------------- real files


def test_rsitmd_json_counts(data_root):
    ds = load_dataset("rsitmd", "test", data_root)
    assert ds.n_images == 452
    assert ds.n_captions == 2260
    assert ds.report.format == "json"
    assert ds.report.skipped == {}
    assert ds.report.caption_counts == {5: 452}


def test_rsitmd_precomp_counts(data_root):
    ds = load_dataset("rsitmd", "test", data_root, caption_format="precomp")
    assert ds.n_images == 452
    assert ds.n_captions == 2260
    assert ds.report.format == "precomp"
    assert ds.report.layout == "one filename line per caption (test-split layout)"
    assert ds.report.records_read == 2260


def test_rsitmd_formats_agree(data_root):
    from_json = load_dataset("rsitmd", "test", data_root)
    from_precomp = load_dataset("rsitmd", "test", data_root,
                                captions_file=data_root / "rsitmd/precomp/test_filename.txt")
    assert _by_id(from_json) == _by_id(from_precomp)
    assert from_json.image_ids[0] == "parking_229.tif"
    assert from_precomp.image_ids[0] == "boat_0.tif"


def test_rsitmd_labels_from_names(data_root):
    ds = load_dataset("rsitmd", "test", data_root)
    labels = {item.image_id: item.label for item in ds.items}
    assert labels["boat_0.tif"] == "boat"
    assert labels["parking_229.tif"] == "parking"
    assert sum(label is None for label in labels.values()) == 0


def test_rsitmd_val_label_name(data_root):
    ds = load_dataset("rsitmd", "val", data_root)
    assert ds.n_images == 856
    assert ds.items[0].image_id == "farmland_1767.tif"
    assert ds.items[0].label == "farmland"


def test_rsicd_counts_and_numbered_names(data_root):
    ds = load_dataset("rsicd", "test", data_root)
    assert ds.n_images == 1093
    assert ds.n_captions == 5465
    summary = summarize_dataset(ds)
    assert summary["distinct_captions"] == 3331
    assert summary["unlabelled_images"] == 66


def test_rsitmd_distinct_captions(data_root):
    summary = summarize_dataset(load_dataset("rsitmd", "test", data_root))
    assert summary["distinct_captions"] == 2119
    assert summary["class_counts"]["boat"] == 1


def test_demo_dataset(data_root):
    ds = load_dataset("demo", data_root=data_root, check_images=True)
    assert ds.n_images == 19
    assert ds.n_captions == 95
    assert ds.rsrt_file == data_root / "demo" / "rsrt.jsonl"
    assert ds.items[0].path == data_root / "demo" / "images" / "00001.jpg"
    assert ds.items[0].label == "playfields"
    assert ds.report.missing_images == []
    assert ds.report.images_checked


def test_registered_dataset_without_rsrt(data_root):
    assert load_dataset("rsicd", "val", data_root).rsrt_file is None


def test_captions_flat_indices(data_root):
    texts, owners, positions = load_dataset("demo", data_root=data_root).captions_flat()
    assert len(texts) == 95
    assert owners.dtype == np.int64
    assert positions.dtype == np.int64
    assert owners[:6].tolist() == [0, 0, 0, 0, 0, 1]
    assert positions[:6].tolist() == [0, 1, 2, 3, 4, 0]


def test_rsitmd_missing_images_warning(data_root):
    ds = load_dataset("rsitmd", "test", data_root, check_images=True)
    assert len(ds.report.missing_images) == 452
    assert ds.report.warnings[-1].startswith(
        f"452 of 452 images are missing or unreadable under {data_root / 'rsitmd' / 'images'}: "
        "parking_229.tif (not found), park_217.tif (not found)")


def test_params_load(data_root):
    params = RunParams(dataset="rsitmd", split="test", data_root=str(data_root), caption_format="precomp")
    ds = load_dataset_from_params(params)
    assert ds.n_images == 452
    assert ds.report.format == "precomp"


# ----------------------------------------------------------------------------- labels and paths


@pytest.mark.parametrize(("name", "label"), [
    ("boat_0.tif", "boat"),
    ("storagetanks_12.tif", "storagetanks"),
    ("test/airport_348.jpg", "airport"),
    ("00001.jpg", None),
    ("12.tif", None),
])
def test_label_from_name(name, label):
    assert label_from_name(name) == label


def test_record_label_beats_name(tmp_path):
    path = _json(tmp_path / "c.json", [{"image": "boat_0.tif", "caption": _five("a"), "label": "harbour"}])
    assert _custom(path).items[0].label == "harbour"


def test_integer_label_ignored(tmp_path):
    path = _json(tmp_path / "c.json", [{"image": "x/boat_3.tif", "caption": _five("a"), "label": 4}])
    assert _custom(path).items[0].label is None


def test_custom_names_give_no_label(tmp_path):
    path = _json(tmp_path / "c.json", [{"image": "ucm_1.tif", "caption": _five("a")}])
    assert _custom(path).items[0].label is None


def test_registered_names_give_label(data_root):
    first = load_dataset("rsitmd").items[0]
    assert first.image_id == "parking_229.tif"
    assert first.label == "parking"


def test_image_path_prefix_stripped(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (8, 8)).save(images / "a_1.png")
    path = _json(tmp_path / "c.json", [{"image": "test/a_1.png", "caption": _five("a")}])
    ds = _custom(path, image_dir=images, check_images=True)
    assert ds.items[0].path == images / "a_1.png"
    assert ds.report.missing_images == []


def test_image_path_as_written(tmp_path):
    (tmp_path / "test").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "test" / "a_1.png")
    path = _json(tmp_path / "c.json", [{"image": "test/a_1.png", "caption": _five("a")}])
    assert _custom(path, image_dir=tmp_path).items[0].path == tmp_path / "test" / "a_1.png"


def test_no_image_dir_no_path(tmp_path):
    path = _json(tmp_path / "c.json", [{"image": "a.png", "caption": _five("a")}])
    assert _custom(path).items[0].path is None


# ----------------------------------------------------------------------------- other formats


def _karpathy(path: Path) -> Path:
    def entry(name: str, split: str, captions: list[str]) -> dict:
        return {"filename": name, "split": split, "imgid": 0,
                "sentences": [{"raw": c, "tokens": c.split()} for c in captions]}

    return _json(path, {"dataset": "ucm", "images": [
        entry("1.tif", "train", _five("one")),
        entry("2.tif", "test", _five("two")),
        entry("3.tif", "val", _five("three")),
        entry("4.tif", "test", _five("four")),
    ]})


def test_karpathy_split_selected(tmp_path):
    ds = _custom(_karpathy(tmp_path / "dataset.json"))
    assert ds.report.format == "karpathy"
    assert ds.image_ids == ["2.tif", "4.tif"]
    assert ds.items[1].captions == tuple(_five("four"))
    assert ds.report.records_read == 4
    assert ds.report.skipped == {"images of other splits than 'test'": 2}


def test_karpathy_registered_ucm(tmp_path):
    _karpathy(tmp_path / "ucm" / "dataset.json")
    ds = load_dataset("ucm", "train", tmp_path)
    assert ds.image_ids == ["1.tif"]
    assert ds.items[0].path == tmp_path / "ucm" / "images" / "1.tif"
    assert ds.items[0].label is None


def test_karpathy_imgs_folder(tmp_path):
    _karpathy(tmp_path / "ucm" / "dataset.json")
    (tmp_path / "ucm" / "imgs").mkdir()
    ds = load_dataset("ucm", "test", tmp_path)
    assert ds.image_dir == tmp_path / "ucm" / "imgs"
    assert ds.items[0].path == tmp_path / "ucm" / "imgs" / "2.tif"


def test_karpathy_registered_sydney(tmp_path):
    _karpathy(tmp_path / "sydney" / "dataset.json")
    assert load_dataset("sydney", "val", tmp_path).image_ids == ["3.tif"]


def test_karpathy_unknown_split(tmp_path):
    path = _karpathy(tmp_path / "dataset.json")
    with pytest.raises(DatasetError) as info:
        _custom(path, split="dev")
    assert str(info.value) == (f"{path}: no images of split 'dev'; the file has 'test' (2), 'train' (1), "
                               "'val' (1). Set split to one of these")


def test_csv_one_caption_per_row(tmp_path):
    path = tmp_path / "caps.csv"
    rows = ["image,caption,label"] + [f"test/boat_{i // 5}.tif,caption {i},ship" for i in range(10)]
    _lines(path, rows)
    ds = _custom(path)
    assert ds.report.format == "csv"
    assert ds.image_ids == ["boat_0.tif", "boat_1.tif"]
    assert ds.items[1].captions == ("caption 5", "caption 6", "caption 7", "caption 8", "caption 9")
    assert ds.items[0].label == "ship"
    assert ds.report.records_read == 10


def test_csv_list_cells_and_split(tmp_path):
    path = tmp_path / "meta.csv"
    _lines(path, [
        ",filename,split,label,sentence",
        f'0,00001.jpg,train,playfields,"{_five("a")}"',
        f'1,00002.jpg,test,bridge,"{_five("b")}"',
    ])
    ds = _custom(path)
    assert ds.image_ids == ["00002.jpg"]
    assert ds.items[0].captions == tuple(_five("b"))
    assert ds.items[0].label == "bridge"
    assert ds.report.skipped == {"rows of other splits than 'test'": 1}


def test_csv_tab_separated(tmp_path):
    path = _lines(tmp_path / "caps.tsv", ["image\ttext"] + [f"a.png\tcaption, {k}" for k in range(5)])
    assert _custom(path).items[0].captions[1] == "caption, 1"


def test_json_one_caption_per_record(tmp_path):
    records = [{"caption": c, "image": "train/pond_1.tif", "label_name": "pond"} for c in _five("p")]
    records += [{"caption": c, "image": "train/bridge_2.tif"} for c in _five("b")]
    ds = _custom(_json(tmp_path / "train.json", records))
    assert ds.image_ids == ["pond_1.tif", "bridge_2.tif"]
    assert ds.items[0].captions == tuple(_five("p"))
    assert ds.items[0].label == "pond"
    assert ds.report.records_read == 10


def test_precomp_train_layout(tmp_path):
    _lines(tmp_path / "train_caps.txt", _five("a") + _five("b"))
    _lines(tmp_path / "train_filename.txt", ["a_1.tif", "b_2.tif"])
    ds = _custom(tmp_path, split="train")
    assert ds.report.layout == "one filename line per image, 5 captions each (train-split layout)"
    assert ds.image_ids == ["a_1.tif", "b_2.tif"]
    assert ds.items[1].captions == tuple(_five("b"))


def test_precomp_test_layout_interleaved(tmp_path):
    _lines(tmp_path / "test_caps.txt", ["x1", "y1", "x2", "y2"])
    _lines(tmp_path / "test_filename.txt", ["x.tif", "y.tif", "x.tif", "y.tif"])
    ds = _custom(tmp_path / "test_caps.txt", caption_format="precomp")
    assert _by_id(ds) == {"x.tif": ("x1", "x2"), "y.tif": ("y1", "y2")}


def test_detect_formats(tmp_path):
    assert detect_format(_json(tmp_path / "a.json", [])) == "json"
    assert detect_format(_karpathy(tmp_path / "b.json")) == "karpathy"
    assert detect_format(_lines(tmp_path / "val_caps.txt", ["x"])) == "precomp"
    assert detect_format(_lines(tmp_path / "c.txt", ["filename,caption", "a,b"])) == "csv"
    assert detect_format(tmp_path) == "precomp"


def test_forced_format_mismatch(tmp_path):
    path = _json(tmp_path / "c.json", [{"image": "a.png", "caption": _five("a")}])
    with pytest.raises(DatasetError) as info:
        _custom(path, caption_format="karpathy")
    assert str(info.value) == (f"{path}: expected Karpathy-style JSON, an object with an 'images' list, found "
                               "list; set caption_format='auto' to detect the format")


# ----------------------------------------------------------------------------- bad inputs


def test_registered_file_missing(tmp_path):
    with pytest.raises(DatasetError) as info:
        load_dataset("rsitmd", "test", tmp_path)
    assert str(info.value) == (
        f"captions file not found: {tmp_path / 'rsitmd/test.json'} (dataset 'rsitmd', split 'test'). Run "
        "`python -m trsllava_utils.data download rsitmd`, or point data_root or TRSLLAVA_DATA at the folder "
        "that contains rsitmd/test.json")


def test_custom_file_missing(tmp_path):
    with pytest.raises(DatasetError, match=r"^captions file not found: nope\.json \(tried "):
        load_dataset("custom", data_root=tmp_path, captions_file="nope.json")


def test_custom_needs_captions_file():
    with pytest.raises(DatasetError, match="^dataset 'custom' needs captions_file"):
        load_dataset("custom")


def test_unknown_dataset():
    with pytest.raises(DatasetError) as info:
        load_dataset("coco")
    assert str(info.value) == ("unknown dataset 'coco'; registered datasets: demo, rsicd, rsitmd, sydney, ucm, "
                               "custom. Use 'custom' with captions_file for other data")


def test_unknown_split(data_root):
    with pytest.raises(DatasetError) as info:
        load_dataset("rsitmd", "train", data_root)
    assert str(info.value) == "dataset 'rsitmd' has no split 'train'; registered splits: test, val"


def test_unknown_format(tmp_path):
    path = _lines(tmp_path / "notes.txt", ["some notes about images"])
    with pytest.raises(DatasetError) as info:
        _custom(path)
    assert str(info.value) == (
        f"{path}: unknown caption format (first line 'some notes about images'). Expected a JSON list of "
        '{"image", "caption"} records, Karpathy-style JSON with an "images" list, precomp <split>_caps.txt '
        "with <split>_filename.txt, or CSV with image and caption columns; set caption_format to force a format")


def test_unknown_json_object(tmp_path):
    path = _json(tmp_path / "c.json", {"annotations": []})
    with pytest.raises(DatasetError, match=r"unknown caption format: a JSON object with keys \['annotations'\]"):
        _custom(path)


def test_invalid_json(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('[{"image": "a.png",\n "caption": ["x"],}]', encoding="utf-8")
    with pytest.raises(DatasetError) as info:
        _custom(path)
    assert str(info.value) == (f"{path}: invalid JSON at line 2 column 19: Expecting property name enclosed "
                               "in double quotes; fix the file or download it again")


def test_record_without_image(tmp_path):
    path = _json(tmp_path / "c.json", [{"image": "a.png", "caption": _five("a")}, {"caption": _five("b")}])
    with pytest.raises(DatasetError) as info:
        _custom(path)
    assert str(info.value) == (f"{path}: record [1] has no 'image' file name (keys: ['caption']); add the "
                               "image's file name or remove the record")


def test_empty_caption_skipped(tmp_path):
    captions = _five("a")
    captions[2] = "   "
    path = _json(tmp_path / "c.json", [{"image": "a.png", "caption": captions}])
    ds = _custom(path)
    assert ds.n_captions == 4
    assert ds.report.skipped == {"empty caption": 1}
    assert ds.report.warnings[0] == (f"{path}: record [0] (image 'a.png'), caption 3: empty caption, skipped; "
                                     "write the caption or remove it")


def test_non_text_caption_skipped(tmp_path):
    captions: list[object] = _five("a")
    captions[4] = 7
    path = _json(tmp_path / "c.json", [{"image": "a.png", "caption": captions}])
    ds = _custom(path)
    assert ds.report.skipped == {"non-text caption": 1}
    assert ds.report.warnings[0] == (f"{path}: record [0] (image 'a.png'), caption 5: int value 7 is not text, "
                                     "skipped; write the caption as a string or remove it")


def test_image_without_captions_skipped(tmp_path):
    path = _json(tmp_path / "c.json", [{"image": "a.png", "caption": ["", None]},
                                       {"image": "b.png", "caption": _five("b")}])
    ds = _custom(path)
    assert ds.image_ids == ["b.png"]
    assert ds.report.skipped == {"empty caption": 1, "non-text caption": 1, "image without captions": 1}


def test_skip_warnings_capped(tmp_path):
    records = [{"image": f"{k}.png", "caption": ["", "ok"]} for k in range(13)]
    ds = _custom(_json(tmp_path / "c.json", records))
    assert ds.report.skipped == {"empty caption": 13}
    assert len(ds.report.warnings) == 11
    assert ds.report.warnings[10] == "... and 3 more 'empty caption' warnings (all 13 are counted)"


def test_conflicting_duplicate(tmp_path):
    path = _json(tmp_path / "c.json", [{"image": "test/a.png", "caption": _five("a")},
                                       {"image": "b.png", "caption": _five("b")},
                                       {"image": "a.png", "caption": _five("c")}])
    with pytest.raises(DatasetError) as info:
        _custom(path)
    assert str(info.value) == (f"{path}: image 'a.png' is listed twice with conflicting captions (record [0] "
                               "and record [2]); remove one of the two records or merge their captions into one")


def test_identical_duplicate_skipped(tmp_path):
    path = _json(tmp_path / "c.json", [{"image": "a.png", "caption": _five("a")},
                                       {"image": "a.png", "caption": _five("a")}])
    ds = _custom(path)
    assert ds.n_images == 1
    assert ds.report.skipped == {"duplicate record": 1}
    assert ds.report.warnings[0] == (f"{path}: record [1] repeats image 'a.png' of record [0] with the same "
                                     "captions, skipped; remove the repeat")


def test_precomp_length_mismatch(tmp_path):
    caps = _lines(tmp_path / "test_caps.txt", _five("a") + ["extra"])
    names = _lines(tmp_path / "test_filename.txt", ["a.tif"] * 5)
    with pytest.raises(DatasetError) as info:
        _custom(caps)
    assert str(info.value) == (
        f"{caps} has 6 captions but {names} has 5 lines (1 distinct names); expected equal counts (one file "
        "name per caption) or a multiple of distinct names (one file name per image). Check that both files "
        "come from the same split and neither is cut short")


def test_precomp_partner_missing(tmp_path):
    _lines(tmp_path / "test_caps.txt", ["a"])
    with pytest.raises(DatasetError) as info:
        _custom(tmp_path / "test_caps.txt")
    assert str(info.value) == (f"precomp file not found: {tmp_path / 'test_filename.txt'}; a precomp split "
                               "needs both <split>_caps.txt and <split>_filename.txt in one folder")


def test_csv_short_row(tmp_path):
    path = _lines(tmp_path / "c.csv", ["image,caption,label", "a.png,one,x", "b.png,two"])
    with pytest.raises(DatasetError) as info:
        _custom(path)
    assert str(info.value) == (f"{path}: line 3 has 2 fields, the header has 3; quote captions that contain "
                               "the delimiter")


def _images_case(tmp_path: Path) -> tuple[Path, Path]:
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (8, 8), "red").save(images / "good.png")
    (images / "broken.png").write_bytes(b"not a png")
    path = _json(tmp_path / "c.json", [{"image": n, "caption": _five(n)}
                                       for n in ("good.png", "broken.png", "gone.png")])
    return path, images


def test_missing_images_warning(tmp_path):
    path, images = _images_case(tmp_path)
    ds = _custom(path, image_dir=images, check_images=True)
    assert ds.n_images == 3
    assert ds.report.missing_images == ["broken.png", "gone.png"]
    warning = ds.report.warnings[-1]
    assert warning.startswith(f"2 of 3 images are missing or unreadable under {images}: broken.png (unreadable: ")
    assert warning.endswith("gone.png (not found). Set image_dir to the folder with the images, or "
                            "require_images=True to fail instead")


def test_missing_images_required(tmp_path):
    path, images = _images_case(tmp_path)
    with pytest.raises(DatasetError, match=r"^2 of 3 images are missing or unreadable under "):
        _custom(path, image_dir=images, require_images=True)


def test_images_unchecked_by_default(tmp_path):
    path, images = _images_case(tmp_path)
    ds = _custom(path, image_dir=images)
    assert ds.report.images_checked is False
    assert ds.report.warnings == []


def test_caption_count_warning(tmp_path):
    path = _json(tmp_path / "rsitmd" / "test.json", [{"image": "a_1.tif", "caption": _five("a")},
                                                     {"image": "b_2.tif", "caption": _five("b")[:4]},
                                                     {"image": "c_3.tif", "caption": _five("c") + ["6th"]}])
    ds = load_dataset("rsitmd", "test", tmp_path)
    assert ds.report.caption_counts == {4: 1, 5: 1, 6: 1}
    assert ds.report.warnings == [
        f"{path}: 2 of 3 images have a caption count other than 5 (the usual count for 'rsitmd'): b_2.tif has "
        "4, c_3.tif has 6. Retrieval still uses every caption; fix the file if captions were lost"]


def test_custom_usual_count_is_mode(tmp_path):
    path = _json(tmp_path / "c.json", [{"image": f"{k}.png", "caption": ["x", "y"]} for k in range(3)]
                 + [{"image": "odd.png", "caption": ["z"]}])
    ds = _custom(path)
    assert ds.usual_caption_count == 2
    assert "1 of 4 images have a caption count other than 2" in ds.report.warnings[0]


# ----------------------------------------------------------------------------- summary and examples


def _toy() -> Dataset:
    items = [
        ImageItem("a.png", ("a red roof", "a red roof", "two ships"), None, "port"),
        ImageItem("b.png", ("two ships", "a green field here now"), None, "port"),
        ImageItem("c.png", ("lone",), None, None),
    ]
    return Dataset("toy", "test", items, LoadReport("toy", "json"))


def test_summary_counts():
    summary = summarize_dataset(_toy())
    assert summary["images"] == 3
    assert summary["captions"] == 6
    assert summary["distinct_captions"] == 4
    assert summary["captions_per_image"] == {1: 1, 2: 1, 3: 1}
    assert summary["duplicates_within_image"] == 1
    assert summary["images_with_duplicates"] == 1
    assert summary["captions_shared_across_images"] == 1
    assert summary["captions_in_shared_strings"] == 2
    assert summary["class_counts"] == {"port": 2}
    assert summary["unlabelled_images"] == 1


def test_summary_word_lengths():
    # Words per caption: 3, 3, 2, 2, 5, 1.
    lengths = summarize_dataset(_toy())["words_per_caption"]
    assert lengths == {"min": 1, "mean": 2.67, "median": 2.5, "p95": 4.5, "max": 5}


def test_summary_table_rows():
    table = summary_table(summarize_dataset(_toy()))
    assert list(table.columns) == ["statistic", "value"]
    assert table.set_index("statistic").loc["class counts", "value"] == "1 classes: port 2"


def test_examples_missing_tiles():
    figure = show_examples(_toy(), n=2, seed=0)
    assert isinstance(figure, Figure)
    assert len(figure.axes) == 4
    texts = [t.get_text() for ax in figure.axes for t in ax.texts]
    plt.close(figure)
    assert sum(t.startswith("no image folder\n") for t in texts) == 2


def test_examples_bad_files(tmp_path):
    path, images = _images_case(tmp_path)
    figure = show_examples(_custom(path, image_dir=images), n=3, seed=0)
    texts = sorted(t.get_text() for ax in figure.axes for t in ax.texts if t.get_text().startswith("image"))
    plt.close(figure)
    assert texts == ["image not found\ngone.png", "image unreadable\nbroken.png"]


def test_examples_real_images(data_root):
    figure = show_examples(load_dataset("demo", data_root=data_root), n=4, seed=0)
    image_axes = figure.axes[0::2]
    plt.close(figure)
    assert len(image_axes) == 4
    assert all(len(ax.images) == 1 for ax in image_axes)
    assert all(ax.images[0].get_array().shape[:2] in ((224, 224), (256, 256)) for ax in image_axes)


# ----------------------------------------------------------------------------- download


@pytest.fixture()
def mirror(tmp_path, data_root) -> Path:
    """A folder laid out like the raw-content host, its files linked to the shared copies."""
    root = tmp_path / "mirror"
    for pinned in [p for pins in PINS.values() for p in pins]:
        link = root / pinned.remote_path
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(data_root / pinned.target)
    return root


@pytest.fixture()
def http_base(mirror):
    """A base URL served by an HTTP server on 127.0.0.1 from the mirror folder."""
    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler,
                                                                                 directory=str(mirror)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_pins_match_shared_files(data_root):
    for pinned in [p for pins in PINS.values() for p in pins]:
        digest = hashlib.sha256((data_root / pinned.target).read_bytes()).hexdigest()
        assert digest == pinned.sha256, pinned.target


def test_download_over_http(tmp_path, http_base):
    dest = tmp_path / "data"
    targets = download_dataset("rsitmd", dest, base_url=http_base)
    assert [t.relative_to(dest).as_posix() for t in targets] == [
        "rsitmd/test.json", "rsitmd/val.json", "rsitmd/precomp/test_caps.txt", "rsitmd/precomp/test_filename.txt"]
    assert load_dataset("rsitmd", "test", dest).n_captions == 2260
    assert load_dataset("rsitmd", "test", dest, caption_format="precomp").n_images == 452


def test_download_file_url(tmp_path, mirror):
    targets = download_dataset("rsicd", tmp_path / "data", base_url=mirror.as_uri())
    assert len(targets) == 2
    assert load_dataset("rsicd", "test", tmp_path / "data").n_images == 1093


def test_download_env_base_url(tmp_path, mirror, monkeypatch):
    monkeypatch.setenv(data_download.BASE_URL_ENV_VAR, mirror.as_uri())
    assert download_dataset("rsicd", tmp_path / "data")[0].is_file()


def test_download_checksum_mismatch(tmp_path, mirror):
    tampered = mirror / PINS["rsicd"][0].remote_path
    tampered.unlink()
    tampered.write_text("[]", encoding="utf-8")
    dest = tmp_path / "data"
    with pytest.raises(DownloadError) as info:
        download_dataset("rsicd", dest, base_url=mirror.as_uri())
    expected = hashlib.sha256(b"[]").hexdigest()
    assert str(info.value) == (
        f"checksum mismatch for {mirror.as_uri()}/{PINS['rsicd'][0].remote_path}: expected SHA-256 "
        f"{PINS['rsicd'][0].sha256}, got {expected}; {dest / 'rsicd/test.json'} was not written. The source "
        "changed or the download was corrupted: retry, or check the base URL")
    assert list((dest / "rsicd").iterdir()) == []


def test_download_keeps_differing_file(tmp_path, mirror):
    own = _json(tmp_path / "data" / "rsicd" / "test.json", [])
    with pytest.raises(DownloadError, match="exists with SHA-256 .* pass --force to replace it"):
        download_dataset("rsicd", tmp_path / "data", base_url=mirror.as_uri())
    assert own.read_text(encoding="utf-8") == "[]"


def test_download_force_replaces(tmp_path, mirror):
    own = _json(tmp_path / "data" / "rsicd" / "test.json", [])
    download_dataset("rsicd", tmp_path / "data", base_url=mirror.as_uri(), force=True)
    assert hashlib.sha256(own.read_bytes()).hexdigest() == PINS["rsicd"][0].sha256


def test_download_server_missing_file(tmp_path, http_base, mirror):
    (mirror / PINS["rsicd"][1].remote_path).unlink()
    with pytest.raises(DownloadError, match=r"^download failed for http://127\.0\.0\.1:\d+/.*rsicd_val\.json: "
                                            r"HTTP Error 404"):
        download_dataset("rsicd", tmp_path / "data", base_url=http_base)
    assert sorted(p.name for p in (tmp_path / "data" / "rsicd").iterdir()) == ["test.json"]


def test_download_unpinned_dataset(tmp_path):
    with pytest.raises(DownloadError, match="^cannot download 'ucm': UCM-captions has no pinned public copy"):
        download_dataset("ucm", tmp_path)


def test_download_cli(tmp_path, mirror, capsys):
    status = main(["download", "rsicd", "--dest", str(tmp_path), "--base-url", mirror.as_uri()])
    assert status == 0
    assert capsys.readouterr().out.splitlines() == [f"ok  {tmp_path / 'rsicd/test.json'}",
                                                    f"ok  {tmp_path / 'rsicd/val.json'}"]


def test_download_module_entry_point(tmp_path, mirror):
    result = subprocess.run([sys.executable, "-m", "trsllava_utils.data", "download", "demo", "--dest",
                             str(tmp_path), "--base-url", mirror.as_uri()], capture_output=True, text=True,
                            cwd=PROJECT_ROOT, timeout=120)
    assert result.returncode == 1
    assert result.stderr.startswith("error: cannot download 'demo': the demo images and captions are not a "
                                    "public download")


def test_list_cli(data_root, capsys):
    assert main(["list", "--data-root", str(data_root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"rsitmd/test (precomp)       452 images    2260 captions  [precomp] " \
           f"{data_root / 'rsitmd/precomp/test_caps.txt'}" in lines
    assert any(line.startswith("ucm/test                 not loaded: captions file not found") for line in lines)


def test_image_dir_missing(tmp_path):
    path = _json(tmp_path / "c.json", [{"image": "a.png", "caption": _five("a")}])
    with pytest.raises(DatasetError) as info:
        _custom(path, image_dir=tmp_path / "nowhere")
    assert str(info.value) == f"image folder not found: {tmp_path / 'nowhere'}; check the path"


def test_registry_names():
    assert sorted(REGISTRY) == ["demo", "rsicd", "rsitmd", "sydney", "ucm"]


def test_csv_missing_caption_column_named(tmp_path):
    path = _lines(tmp_path / "c.csv", ["image,description", "a.png,a field"])
    with pytest.raises(DatasetError) as info:
        _custom(path, caption_format="csv")
    message = str(info.value)
    assert "lacks a caption column (caption," in message
    assert "image column" not in message


def test_csv_missing_both_columns_named(tmp_path):
    path = _lines(tmp_path / "c.csv", ["picture,description", "a.png,a field"])
    with pytest.raises(DatasetError, match="lacks an image column .* and a caption column"):
        _custom(path, caption_format="csv")
