"""The transformers backend end to end on a tiny random LLaVA saved to disk, with the real demo images."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from trsllava_utils.captioning import make_captioner, read_failures, run_captioning
from trsllava_utils.captioning.backend_transformers import TransformersCaptioner, pick_dtype
from trsllava_utils.captioning.images import load_image_rgb
from trsllava_utils.captioning.random_models import save_random_llava
from trsllava_utils.data import load_dataset
from trsllava_utils.params import validate_params
from trsllava_utils.rsrt import read_records


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory):
    """Folder of a tiny random LLaVA (CLIP vision tower, Llama text model, byte-level BPE tokenizer)."""
    return save_random_llava(tmp_path_factory.mktemp("models") / "tiny-llava", "tiny", seed=0)


@pytest.fixture
def demo(data_root):
    dataset = load_dataset("demo", data_root=data_root)
    return dataclasses.replace(dataset, items=dataset.items[:3])


@pytest.fixture
def captioner(tiny_llava):
    return TransformersCaptioner(tiny_llava, n_variants=2, batch_size=2, max_new_tokens=6, temperature=0.0)


def _variants(k: int, n: int) -> list[dict[str, str]]:
    return [{"one_sentence": f"Scene {k}.{v} has a pond.", "feature": f"A pond lies in the north {k}.{v}.",
             "caption": f"A calm pond {k}.{v} surrounded by trees."} for v in range(n)]


def _force_replies(captioner, monkeypatch, texts):
    """Make the model's generate append the tokens of ``texts`` (one per call, cycling) to its input."""
    calls = {"n": 0, "input_lengths": []}

    def fake_generate(input_ids, **kwargs):
        batch = []
        for row in range(input_ids.shape[0]):
            text = texts[calls["n"] % len(texts)]
            calls["n"] += 1
            new = captioner.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
            batch.append(torch.cat([input_ids[row], new]))
        calls["input_lengths"].append(input_ids.shape[1])
        width = max(len(row) for row in batch)
        pad = captioner.tokenizer.pad_token_id
        return torch.stack([torch.cat([row, torch.full((width - len(row),), pad)]) for row in batch])

    monkeypatch.setattr(captioner.net, "generate", fake_generate)
    return calls


def test_transformers_chat_template(captioner):
    assert captioner.chat_text("Describe it.") == "USER: <image>\nDescribe it. ASSISTANT:"


def test_transformers_left_padding(captioner):
    assert captioner.tokenizer.padding_side == "left"


def test_transformers_cpu_float32(captioner):
    assert captioner.device.type == "cpu"
    assert captioner.dtype == torch.float32


def test_pick_dtype_gpu_bfloat16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert pick_dtype(torch.device("cuda")) == torch.bfloat16


def test_transformers_decodes_only_new_tokens(captioner, demo, monkeypatch):
    captured = {}
    real_generate = captioner.net.generate

    def spy(**kwargs):
        output = real_generate(**kwargs)
        captured["input_ids"], captured["output"] = kwargs["input_ids"], output
        return output

    monkeypatch.setattr(captioner.net, "generate", spy)
    captioner.min_new_tokens = 6
    images = [load_image_rgb(item.path) for item in demo.items[:2]]
    replies = captioner.describe(images)
    prompt_length = captured["input_ids"].shape[1]
    assert captured["output"].shape[1] == prompt_length + 6
    expected = captioner.tokenizer.batch_decode(captured["output"][:, prompt_length:], skip_special_tokens=True)
    assert replies == expected
    assert all("ASSISTANT" not in reply for reply in replies)
    assert all("remote-sensing" not in reply for reply in replies)


def test_transformers_random_replies_fail(captioner, demo, tmp_path):
    report = run_captioning(demo, captioner, tmp_path / "rsrt.jsonl", tmp_path / "failures.jsonl",
                            n_variants=2, max_attempts=2, show_progress=False)
    failures = read_failures(tmp_path / "failures.jsonl")
    assert report.n_failed == 3
    assert report.n_written == 0
    assert [f["image"] for f in failures] == demo.image_ids
    assert all(f["stage"] == "reply" for f in failures)
    assert all(len(f["replies"]) == 2 for f in failures)
    assert all("USER:" not in reply for f in failures for reply in f["replies"])
    assert (tmp_path / "rsrt.jsonl").read_text(encoding="utf-8") == ""


def test_transformers_forced_json_written(captioner, demo, tmp_path, monkeypatch):
    replies = [json.dumps({"variants": _variants(k, 2)}) for k in range(3)]
    calls = _force_replies(captioner, monkeypatch, replies)
    report = run_captioning(demo, captioner, tmp_path / "rsrt.jsonl", tmp_path / "failures.jsonl",
                            n_variants=2, show_progress=False)
    records = read_records(tmp_path / "rsrt.jsonl", n_variants=2)
    assert report.n_written == 3
    assert report.n_failed == 0
    assert calls["n"] == 3
    assert [r.image for r in records] == demo.image_ids
    assert [r.variants for r in records] == [_variants(k, 2) for k in range(3)]
    assert records[0].model == "tiny-llava"
    assert records[0].extra["prompt_id"] == captioner.prompt_id


def test_transformers_describe_returns_forced_text(captioner, demo, monkeypatch):
    text = '```json\n{"variants": []}\n```'
    _force_replies(captioner, monkeypatch, [text])
    assert captioner.describe([load_image_rgb(demo.items[0].path)]) == [text]


def test_transformers_per_variant_mode(tiny_llava, demo, tmp_path, monkeypatch):
    captioner = TransformersCaptioner(tiny_llava, n_variants=3, generation_mode="per_variant", batch_size=4,
                                      max_new_tokens=6, temperature=0.7)
    singles = [json.dumps(v) for v in _variants(0, 3)]
    # Round 1 sends 3 requests and gets variant 0 twice, so round 2 requests the missing variant once more.
    calls = _force_replies(captioner, monkeypatch, [singles[0], singles[0], singles[1], singles[2]])
    one_image = dataclasses.replace(demo, items=demo.items[:1])
    report = run_captioning(one_image, captioner, tmp_path / "rsrt.jsonl", tmp_path / "failures.jsonl",
                            n_variants=3, show_progress=False)
    records = read_records(tmp_path / "rsrt.jsonl")
    assert report.n_written == 1
    assert calls["n"] == 4
    assert report.n_reasked == 1
    assert records[0].variants == [_variants(0, 3)[0], _variants(0, 3)[1], _variants(0, 3)[2]]
    assert "per_variant" in records[0].extra["prompt_id"]


def test_transformers_out_of_memory_splits(captioner, demo, monkeypatch):
    sizes = []

    def fake_batch(images, prompt):
        sizes.append(len(images))
        if len(images) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return ["ok"]

    monkeypatch.setattr(captioner, "_generate_batch", fake_batch)
    captioner.batch_size = 4
    images = [load_image_rgb(item.path) for item in demo.items[:3]]
    assert captioner.generate(images, "p") == ["ok", "ok", "ok"]
    assert sizes == [3, 1, 2, 1, 1]


def test_transformers_out_of_memory_single_fails(captioner, demo, tmp_path, monkeypatch):
    def fake_batch(images, prompt):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(captioner, "_generate_batch", fake_batch)
    report = run_captioning(demo, captioner, tmp_path / "rsrt.jsonl", tmp_path / "failures.jsonl",
                            n_variants=2, show_progress=False)
    failures = read_failures(tmp_path / "failures.jsonl")
    assert report.n_failed == 3
    assert [f["stage"] for f in failures] == ["request"] * 3
    assert "out of memory" in failures[0]["error"]


def test_make_captioner_transformers(tiny_llava):
    params = validate_params({"captioner": "transformers", "captioner_model": str(tiny_llava),
                              "caption_batch_size": 3, "n_variants": 2, "max_new_tokens": 5, "temperature": 0.0})
    captioner = make_captioner(params)
    assert isinstance(captioner, TransformersCaptioner)
    assert captioner.batch_size == 3
    assert captioner.n_variants == 2
    assert captioner.max_new_tokens == 5


def test_transformers_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="captioner_model"):
        TransformersCaptioner(tmp_path / "nope")


@pytest.fixture(scope="session")
def tiny_llava_next(tmp_path_factory):
    """Folder of a tiny random LLaVA-NeXT, whose image token count depends on the image's shape."""
    return save_random_llava(tmp_path_factory.mktemp("models") / "tiny-llava-next", "tiny",
                             architecture="llava-next", seed=0)


def test_llava_next_pads_on_the_left(tiny_llava_next, data_root, monkeypatch):
    captioner = TransformersCaptioner(tiny_llava_next, batch_size=2, max_new_tokens=8, temperature=0.0)
    square = load_image_rgb(data_root / "demo" / "images" / "00001.jpg")
    wide = square.crop((0, 0, 224, 100))
    alone = captioner.describe([square]) + captioner.describe([wide])
    captured = {}
    real_generate = captioner.net.generate

    def spy(**kwargs):
        captured.update(kwargs)
        return real_generate(**kwargs)

    monkeypatch.setattr(captioner.net, "generate", spy)
    batched = captioner.describe([square, wide])
    input_ids, mask = captured["input_ids"], captured["attention_mask"]
    pad = captioner.tokenizer.pad_token_id
    assert int(mask[0].sum()) > int(mask[1].sum())
    assert int(input_ids[1, 0]) == pad
    assert int(input_ids[0, -1]) == int(input_ids[1, -1]) != pad
    assert batched == alone
