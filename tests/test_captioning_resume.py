"""Resumable captioning: a real run killed with SIGKILL and resumed, and the resume rules in process."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import yaml
from captioning_stub import StubChatServer, variants_json

from trsllava_utils.captioning import read_failures, run_captioning
from trsllava_utils.captioning.backend_openai import OpenAICaptioner
from trsllava_utils.data import load_dataset
from trsllava_utils.paths import PROJECT_ROOT


def _lines(path):
    if not path.exists():
        return []
    return path.read_text(encoding="utf-8").splitlines()


def _start_cli(params_file):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "trsllava_utils.captioning", "--params", str(params_file),
                             "--no-progress", "--log-level", "WARNING"],
                            cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_kill_and_resume_every_image_once(tmp_path, data_root):
    with StubChatServer(default=lambda n: ("slow", 0.15, variants_json(f"r{n}", 2))) as server:
        params_file = tmp_path / "run.yaml"
        params_file.write_text(yaml.safe_dump({
            "run_name": "resume_test", "dataset": "demo", "data_root": str(data_root),
            "output_root": str(tmp_path / "out"), "captioner": "openai", "openai_base_url": server.base_url,
            "captioner_model": "stub-vlm", "max_concurrency": 1, "n_variants": 2}), encoding="utf-8")
        out = tmp_path / "out" / "resume_test" / "rsrt.jsonl"

        first = _start_cli(params_file)
        deadline = time.monotonic() + 60
        while len(_lines(out)) < 5 and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=30)
        written_before_kill = len(_lines(out))
        # A torn line, as a crash in the middle of a write would leave.
        with out.open("a", encoding="utf-8") as handle:
            handle.write('{"image": "00019.jpg", "variants": [{"one_sen')
        requests_before_resume = len(server.requests)

        second = _start_cli(params_file)
        stdout, stderr = second.communicate(timeout=120)

    print(f"killed after {written_before_kill} of 19 records; resume asked "
          f"{len(server.requests) - requests_before_resume} more requests; resume stdout: {stdout.strip()}")
    assert first.returncode == -signal.SIGKILL
    assert 5 <= written_before_kill < 19
    assert second.returncode == 0, stderr
    assert "dropped a torn last line" in stderr
    assert f"{written_before_kill} done before, {19 - written_before_kill} written, 0 failed" in stdout
    lines = _lines(out)
    objects = [json.loads(line) for line in lines]
    images = [obj["image"] for obj in objects]
    expected = load_dataset("demo", data_root=data_root).image_ids
    assert len(lines) == 19
    assert sorted(images) == sorted(expected)
    assert len(set(images)) == 19
    # Only the images not yet written were asked for again.
    assert len(server.requests) - requests_before_resume == 19 - written_before_kill


@pytest.fixture
def demo(data_root):
    dataset = load_dataset("demo", data_root=data_root)
    return dataclasses.replace(dataset, items=dataset.items[:3])


def _captioner(server, model="stub-vlm", n_variants=2):
    return OpenAICaptioner(server.base_url, model, n_variants=n_variants, max_concurrency=1, backoff_s=0.01)


def _run(dataset, captioner, tmp_path, **kwargs):
    return run_captioning(dataset, captioner, tmp_path / "rsrt.jsonl", tmp_path / "failures.jsonl",
                          n_variants=captioner.n_variants, show_progress=False, **kwargs)


def test_resume_skips_done_images(tmp_path, demo):
    with StubChatServer(default=lambda n: ("reply", variants_json(f"r{n}", 2))) as server:
        _run(demo, _captioner(server), tmp_path, limit=2)
        report = _run(demo, _captioner(server), tmp_path)
    assert report.n_done_before == 2
    assert report.n_written == 1
    assert len(server.requests) == 3


def test_resume_other_model_redone(tmp_path, demo, caplog):
    with StubChatServer(default=lambda n: ("reply", variants_json(f"r{n}", 2))) as server:
        _run(demo, _captioner(server, model="model-a"), tmp_path)
        with caplog.at_level(logging.WARNING):
            report = _run(demo, _captioner(server, model="model-b"), tmp_path)
    assert report.n_done_before == 0
    assert report.n_written == 3
    assert "3 lines come from another model or prompt" in caplog.text


def test_resume_other_variant_count_redone(tmp_path, demo):
    with StubChatServer(default=lambda n: ("reply", variants_json(f"r{n}", 3))) as server:
        _run(demo, _captioner(server, n_variants=2), tmp_path)
        report = _run(demo, _captioner(server, n_variants=3), tmp_path)
    assert report.n_done_before == 0
    assert report.n_written == 3


def test_resume_retries_failed_images(tmp_path, demo):
    with StubChatServer(default=lambda n: ("reply", variants_json(f"r{n}", 2))) as server:
        server.actions.append(("status", 400))
        first = _run(demo, _captioner(server), tmp_path)
        second = _run(demo, _captioner(server), tmp_path)
    assert first.n_failed == 1
    assert second.n_done_before == 2
    assert second.n_written == 1
    assert len(read_failures(tmp_path / "failures.jsonl")) == 1


def test_no_resume_starts_over(tmp_path, demo):
    with StubChatServer(default=lambda n: ("reply", variants_json(f"r{n}", 2))) as server:
        _run(demo, _captioner(server), tmp_path)
        report = _run(demo, _captioner(server), tmp_path, resume=False)
    assert report.n_done_before == 0
    assert report.n_written == 3
    assert len(_lines(tmp_path / "rsrt.jsonl")) == 3


def test_report_counts_add_up(tmp_path, demo):
    with StubChatServer(default=lambda n: ("reply", variants_json(f"r{n}", 2))) as server:
        server.actions.append(("reply", "not json"))
        _run(demo, _captioner(server), tmp_path, limit=1, max_attempts=1)
        report = _run(demo, _captioner(server), tmp_path, max_attempts=1)
    assert report.n_images == 3
    assert report.n_done_before + report.n_written + report.n_failed == 3
    assert re.search(r"\d+\.\d\d images/s", str(report))
