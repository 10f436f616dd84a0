"""The openai backend against a stub chat server on 127.0.0.1: replies, repairs, retries and failures."""

from __future__ import annotations

import base64
import dataclasses
import io
import json

import pytest
from captioning_stub import StubChatServer, variants_json
from PIL import Image

from trsllava_utils.captioning import (IMAGE_QUERY_PROMPT, make_captioner, read_failures, read_image_queries,
                                       rsrt_prompt, run_captioning, run_image_queries)
from trsllava_utils.captioning.backend_openai import OpenAICaptioner
from trsllava_utils.data import Dataset, ImageItem, LoadReport, load_dataset
from trsllava_utils.params import validate_params
from trsllava_utils.rsrt import read_records


@pytest.fixture
def server():
    with StubChatServer() as stub:
        yield stub


@pytest.fixture
def demo(data_root):
    dataset = load_dataset("demo", data_root=data_root)
    return dataclasses.replace(dataset, items=dataset.items[:2])


def _captioner(server, **kwargs):
    options = {"n_variants": 2, "max_concurrency": 1, "timeout_s": 5.0, "max_retries": 3, "backoff_s": 0.01,
               "max_new_tokens": 300, "temperature": 0.5}
    options.update(kwargs)
    return OpenAICaptioner(server.base_url, "stub-vlm", **options)


def _run(dataset, captioner, tmp_path, **kwargs):
    return run_captioning(dataset, captioner, tmp_path / "rsrt.jsonl", tmp_path / "failures.jsonl",
                          n_variants=captioner.n_variants, show_progress=False, **kwargs)


def test_openai_good_reply_written(server, demo, tmp_path):
    server.actions.extend([("reply", variants_json("a", 2)), ("reply", variants_json("b", 2))])
    report = _run(demo, _captioner(server), tmp_path)
    records = read_records(tmp_path / "rsrt.jsonl", n_variants=2)
    assert report.n_written == 2
    assert [r.image for r in records] == demo.image_ids
    assert records[1].variants == json.loads(variants_json("b", 2))["variants"]
    assert records[0].model == "stub-vlm"


def test_openai_request_payload(server, demo, tmp_path):
    _run(dataset=dataclasses.replace(demo, items=demo.items[:1]), captioner=_captioner(server), tmp_path=tmp_path)
    body = server.requests[0]
    text_part, image_part = body["messages"][0]["content"]
    assert server.paths == ["/v1/chat/completions"]
    assert body["model"] == "stub-vlm"
    assert body["max_tokens"] == 300
    assert body["temperature"] == 0.5
    assert text_part == {"type": "text", "text": rsrt_prompt(2)}
    url = image_part["image_url"]["url"]
    assert url.startswith("data:image/jpeg;base64,")
    decoded = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert decoded.size == (224, 224)


def test_openai_damaged_json_repaired(server, demo, tmp_path):
    good = json.loads(variants_json("a", 2))
    damaged = "Here is the JSON:\n```json\n" + json.dumps(good).replace("}]}", "},]}") + "\n```\nDone."
    server.actions.extend([("reply", damaged), ("reply", variants_json("b", 2))])
    report = _run(demo, _captioner(server), tmp_path)
    assert report.n_written == 2
    assert report.n_reasked == 0
    assert read_records(tmp_path / "rsrt.jsonl")[0].variants == good["variants"]


def test_openai_bad_reply_reasked(server, demo, tmp_path):
    server.actions.extend([("reply", "I cannot see the image."), ("reply", variants_json("a", 2)),
                           ("reply", variants_json("b", 2))])
    report = _run(demo, _captioner(server), tmp_path)
    assert report.n_written == 2
    assert report.n_reasked == 1
    assert len(server.requests) == 3


def test_openai_bad_reply_fails_and_run_goes_on(server, demo, tmp_path):
    bad = ['{"variants": [{"one_sentence": "x"}]}', "no json here", '{"variants": ']
    server.actions.extend([("reply", text) for text in bad] + [("reply", variants_json("b", 2))])
    report = _run(demo, _captioner(server), tmp_path, max_attempts=3)
    failures = read_failures(tmp_path / "failures.jsonl")
    assert report.n_failed == 1
    assert report.n_written == 1
    assert failures[0]["image"] == demo.image_ids[0]
    assert failures[0]["stage"] == "reply"
    assert failures[0]["replies"] == bad
    assert "field 'feature' is missing" in failures[0]["errors"][0]
    assert [r.image for r in read_records(tmp_path / "rsrt.jsonl")] == [demo.image_ids[1]]


def test_openai_duplicate_variants_fail(server, demo, tmp_path):
    variant = json.loads(variants_json("a", 1))["variants"][0]
    shouted = {key: value.upper() for key, value in variant.items()}
    server.actions.append(("reply", json.dumps({"variants": [variant, shouted]})))
    _run(dataclasses.replace(demo, items=demo.items[:1]), _captioner(server), tmp_path, max_attempts=1)
    failures = read_failures(tmp_path / "failures.jsonl")
    assert "1 distinct variants after dropping 1 duplicates, expected 2" in failures[0]["error"]


def test_openai_429_retried(server, demo, tmp_path):
    server.actions.extend([("status", 429, {"Retry-After": "0"}), ("reply", variants_json("a", 2))])
    captioner = _captioner(server)
    report = _run(dataclasses.replace(demo, items=demo.items[:1]), captioner, tmp_path)
    assert report.n_written == 1
    assert captioner.retries == 1
    assert len(server.requests) == 2


def test_openai_5xx_retried(server, demo, tmp_path):
    server.actions.extend([("status", 500), ("status", 503), ("reply", variants_json("a", 2))])
    captioner = _captioner(server)
    report = _run(dataclasses.replace(demo, items=demo.items[:1]), captioner, tmp_path)
    assert report.n_written == 1
    assert captioner.retries == 2


def test_openai_5xx_gives_up(server, demo, tmp_path):
    server.actions.extend([("status", 500)] * 3 + [("reply", variants_json("b", 2))])
    captioner = _captioner(server, max_retries=2)
    report = _run(demo, captioner, tmp_path)
    failures = read_failures(tmp_path / "failures.jsonl")
    assert report.n_failed == 1
    assert report.n_written == 1
    assert failures[0]["stage"] == "request"
    assert "HTTP 500" in failures[0]["error"]
    assert "gave up after 3 tries" in failures[0]["error"]
    assert len(server.requests) == 4


def test_openai_4xx_not_retried(server, demo, tmp_path):
    server.actions.append(("status", 400))
    captioner = _captioner(server)
    report = _run(dataclasses.replace(demo, items=demo.items[:1]), captioner, tmp_path)
    failures = read_failures(tmp_path / "failures.jsonl")
    assert report.n_failed == 1
    assert len(server.requests) == 1
    assert captioner.retries == 0
    assert "HTTP 400, not retried" in failures[0]["error"]


def test_openai_timeout_retried(server, demo, tmp_path):
    server.actions.extend([("slow", 1.5, variants_json("late", 2)), ("reply", variants_json("a", 2))])
    captioner = _captioner(server, timeout_s=0.3)
    report = _run(dataclasses.replace(demo, items=demo.items[:1]), captioner, tmp_path)
    records = read_records(tmp_path / "rsrt.jsonl")
    assert report.n_written == 1
    assert captioner.retries == 1
    assert records[0].variants == json.loads(variants_json("a", 2))["variants"]


def test_openai_key_from_environment(server, monkeypatch):
    monkeypatch.setenv("STUB_KEY", "sk-test")
    captioner = _captioner(server, api_key_env="STUB_KEY")
    captioner.describe([Image.new("RGB", (8, 8))])
    assert server.headers[0]["Authorization"] == "Bearer sk-test"


def test_openai_no_key_no_header(server, monkeypatch):
    monkeypatch.delenv("STUB_KEY", raising=False)
    _captioner(server, api_key_env="STUB_KEY").describe([Image.new("RGB", (8, 8))])
    assert "Authorization" not in server.headers[0]


def test_openai_concurrency_bounded(server):
    server.default = lambda number: ("slow", 0.3, variants_json(f"r{number}", 2))
    replies = _captioner(server, max_concurrency=2).generate([Image.new("RGB", (8, 8))] * 6, "p")
    assert len(replies) == 6
    assert server.max_in_flight == 2


def test_openai_per_variant_seeds_differ(server, demo, tmp_path):
    server.default = lambda number: ("reply", json.dumps(json.loads(variants_json(f"v{number}", 1))["variants"][0]))
    captioner = _captioner(server, n_variants=3, generation_mode="per_variant", seed=7)
    report = _run(dataclasses.replace(demo, items=demo.items[:1]), captioner, tmp_path)
    assert report.n_written == 1
    assert [body["seed"] for body in server.requests] == [7, 8, 9]
    assert len(read_records(tmp_path / "rsrt.jsonl", n_variants=3)[0].variants) == 3


def test_openai_percentage_warning(server, demo, tmp_path):
    reply = json.loads(variants_json("a", 2))
    reply["variants"][0]["caption"] = "Water covers 40% of the image."
    server.actions.append(("reply", json.dumps(reply)))
    report = _run(dataclasses.replace(demo, items=demo.items[:1]), _captioner(server), tmp_path)
    assert report.n_warnings == 1
    assert read_records(tmp_path / "rsrt.jsonl")[0].extra["warnings"] == ["contains a percentage"]


def test_openai_bad_images_become_failures(server, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    good = tmp_path / "good.png"
    Image.new("RGB", (16, 16), "green").save(good)
    items = [ImageItem("broken.jpg", ("c",), broken), ImageItem("gone.tif", ("c",), tmp_path / "gone.tif"),
             ImageItem("good.png", ("c",), good)]
    dataset = Dataset("toy", "test", items, LoadReport(source="toy", format="json"))
    report = _run(dataset, _captioner(server, max_concurrency=3), tmp_path)
    failures = read_failures(tmp_path / "failures.jsonl")
    assert report.n_failed == 2
    assert report.n_written == 1
    assert [f["image"] for f in failures] == ["broken.jpg", "gone.tif"]
    assert [f["stage"] for f in failures] == ["image", "image"]
    assert "broken.jpg" in failures[0]["error"]
    assert "image file not found" in failures[1]["error"]
    assert len(server.requests) == 1


def test_openai_image_queries(server, demo, tmp_path):
    server.actions.extend([("reply", 'Caption: "Many buildings surround a playground."'),
                           ("reply", "```\nA river runs past green fields.\n```")])
    captioner = _captioner(server)
    report = run_image_queries(demo, captioner, tmp_path / "image_queries.jsonl", tmp_path / "qfail.jsonl",
                               show_progress=False)
    queries = read_image_queries(tmp_path / "image_queries.jsonl")
    line = json.loads((tmp_path / "image_queries.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert report.n_written == 2
    assert queries == {demo.image_ids[0]: ["Many buildings surround a playground."],
                       demo.image_ids[1]: ["A river runs past green fields."]}
    assert line["prompt_id"] == captioner.query_prompt_id
    assert server.requests[0]["messages"][0]["content"][0]["text"] == IMAGE_QUERY_PROMPT


def test_openai_image_queries_resume(server, demo, tmp_path):
    captioner = _captioner(server)
    server.default = lambda number: ("reply", f"Query number {number}.")
    run_image_queries(demo, captioner, tmp_path / "q.jsonl", tmp_path / "f.jsonl", show_progress=False, limit=1)
    report = run_image_queries(demo, captioner, tmp_path / "q.jsonl", tmp_path / "f.jsonl", show_progress=False)
    assert report.n_done_before == 1
    assert report.n_written == 1
    assert read_image_queries(tmp_path / "q.jsonl") == {demo.image_ids[0]: ["Query number 0."],
                                                        demo.image_ids[1]: ["Query number 1."]}


def test_make_captioner_openai(server):
    params = validate_params({"captioner": "openai", "openai_base_url": server.base_url,
                              "captioner_model": "stub-vlm", "max_concurrency": 6, "request_timeout_s": 9.0,
                              "max_retries": 1})
    captioner = make_captioner(params)
    assert isinstance(captioner, OpenAICaptioner)
    assert captioner.batch_size == 6
    assert captioner.timeout_s == 9.0
    assert captioner.max_retries == 1
