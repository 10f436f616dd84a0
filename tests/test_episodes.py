"""Episodes: query and gallery text sets of method and oracle runs."""

import pytest

from trsllava_utils.data import Dataset, ImageItem, LoadReport
from trsllava_utils.episodes import holdout_episodes, method_episode, rsrt_text_set
from trsllava_utils.rsrt import RSRTRecord


def tiny_dataset() -> Dataset:
    items = [ImageItem("a.jpg", ("a0", "a1", "a2")), ImageItem("b.jpg", ("b0", "b1"))]
    return Dataset("tiny", "test", items, LoadReport("memory", "json"))


def record(image: str, n: int) -> RSRTRecord:
    return RSRTRecord(image, [{"one_sentence": f"{image} s{k}", "feature": f"{image} f{k}",
                               "caption": f"{image} c{k}"} for k in range(n)])


def test_holdout_folds_hold_out_one_caption():
    folds = holdout_episodes(tiny_dataset())
    assert [f.name for f in folds] == ["fold1", "fold2", "fold3"]
    first = folds[0]
    assert first.t2i_queries.texts == ["a0", "b0"]
    assert first.t2i_gallery.texts == ["a1", "a2", "b1"]
    assert first.t2i_gallery.image_index.tolist() == [0, 0, 1]


def test_holdout_i2t_uses_the_held_out_caption():
    fold = holdout_episodes(tiny_dataset())[1]
    assert fold.i2t_queries.texts == ["a1", "b1"]
    assert fold.i2t_gallery.texts == ["a0", "a2", "b0"]


def test_holdout_fold_skips_images_without_that_caption():
    third = holdout_episodes(tiny_dataset())[2]
    assert third.t2i_queries.texts == ["a2"]
    assert third.t2i_gallery.texts == ["a0", "a1", "b0", "b1"]


def test_rsrt_texts_match_by_file_name():
    database = rsrt_text_set(tiny_dataset(), [record("images/b.jpg", 2), record("test/a.jpg", 3)],
                             ["one_sentence"], n_variants=2)
    assert database.texts == ["test/a.jpg s0", "test/a.jpg s1", "images/b.jpg s0", "images/b.jpg s1"]
    assert database.image_index.tolist() == [0, 0, 1, 1]


def test_rsrt_missing_image_named():
    with pytest.raises(ValueError, match=r"1 of 2 images have no RSRT record.*'b.jpg'"):
        rsrt_text_set(tiny_dataset(), [record("a.jpg", 1)], ["caption"])


def test_method_episode_queries_are_captions():
    dataset = tiny_dataset()
    database = rsrt_text_set(dataset, [record("a.jpg", 1), record("b.jpg", 1)], ["caption"])
    episode = method_episode(dataset, database, database)
    assert episode.t2i_queries.texts == ["a0", "a1", "a2", "b0", "b1"]
    assert episode.i2t_gallery.ids == ["a.jpg#0", "a.jpg#1", "a.jpg#2", "b.jpg#0", "b.jpg#1"]
    assert episode.all_texts()[:2] == ["a0", "a1"]


def test_image_query_set_ids_and_owners():
    from trsllava_utils.episodes import image_query_set

    queries = image_query_set(tiny_dataset(), {"b.jpg": ["qb"], "a.jpg": ["qa0", "qa1"]})
    assert queries.texts == ["qa0", "qa1", "qb"]
    assert queries.image_index.tolist() == [0, 0, 1]
    assert queries.ids == ["a.jpg?0", "a.jpg?1", "b.jpg?0"]


def test_image_query_set_missing_image_named():
    from trsllava_utils.episodes import image_query_set

    with pytest.raises(ValueError, match=r"1 of 2 images have no image-query text.*'b.jpg'"):
        image_query_set(tiny_dataset(), {"a.jpg": ["qa"], "b.jpg": []})
