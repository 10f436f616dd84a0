"""Captioning runs: every image of a dataset through a captioner, resumable and robust.

A run appends one line per finished image to its output file and flushes it
to disk, so killing the process loses at most the images in flight. A re-run
with ``resume=True`` reads the file, skips images already done under the same
model and prompt id, and drops a torn last line with a warning. A damaged
reply is parsed with repairs. When that fails, the image is requested again,
up to ``max_attempts`` times. After that, the image goes to the failures file
with its raw replies, and the run moves on. An unreadable image is a failure
line too.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm.auto import tqdm

from ..data import Dataset, ImageItem
from ..rsrt import JsonlAppender, RecordError, RSRTRecord, image_key, iter_jsonl, normalise_text, validate_record
from .base import Captioner, HoldoutCaptioner, PrecomputedCaptioner
from .images import ImageLoadError, load_image_rgb
from .parsing import ReplyError, parse_query_reply, parse_reply, reply_warnings
from .precomputed import write_run_records
from .prompts import IMAGE_QUERY_PROMPT, RSRT_PROMPT_VERSION

logger = logging.getLogger(__name__)

FAILURES_FILENAME = "caption_failures.jsonl"
IMAGE_QUERIES_FILENAME = "image_queries.jsonl"
QUERY_FAILURES_FILENAME = "image_query_failures.jsonl"
HOLDOUT_FOLDS_FILENAME = "holdout_folds.json"

_LOGGED_WARNINGS_MAX = 20


@dataclass
class CaptionReport:
    """Counts of one captioning run, in which every image is counted once.

    ``n_images = n_done_before + n_written + n_failed`` (images past ``limit`` are not part of the run).
    """

    n_images: int
    n_done_before: int = 0
    n_written: int = 0
    n_failed: int = 0
    seconds: float = 0.0
    n_warnings: int = 0
    n_reasked: int = 0
    out_path: str | None = None
    failures_path: str | None = None
    note: str | None = None

    @property
    def images_per_second(self) -> float:
        """Images finished (written or failed) per second of this run."""
        finished = self.n_written + self.n_failed
        return finished / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        """Return the counts as a plain mapping, ``images_per_second`` included."""
        return {**dataclasses.asdict(self), "images_per_second": self.images_per_second}

    def __str__(self) -> str:
        if self.note:
            return f"{self.n_images} images, {self.n_written} records written: {self.note}"
        return (f"{self.n_images} images: {self.n_done_before} done before, {self.n_written} written, "
                f"{self.n_failed} failed, {self.n_warnings} with warnings, {self.n_reasked} re-asked; "
                f"{self.seconds:.1f} s, {self.images_per_second:.2f} images/s")


@dataclass
class _Job:
    """One kind of output: what to ask, how to read a reply, and what line to write."""

    kind: str
    prompt: str
    prompt_id: str
    n_units: int
    all_in_one: bool
    parse: Callable[[str], list[Any]]
    key: Callable[[Any], Hashable]
    texts: Callable[[list[Any]], list[str]]
    make_line: Callable[[ImageItem, list[Any], list[str]], dict[str, Any]]


@dataclass
class _ImageState:
    units: list[Any] = dataclasses.field(default_factory=list)
    keys: set[Hashable] = dataclasses.field(default_factory=set)
    replies: list[str] = dataclasses.field(default_factory=list)
    errors: list[str] = dataclasses.field(default_factory=list)
    request_error: str | None = None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _done_images(path: Path, model: str, prompt_id: str) -> set[str]:
    """Return the images that a file already contains under ``model`` and ``prompt_id``."""
    if not path.exists():
        return set()
    done: set[str] = set()
    other = 0
    for _, obj in iter_jsonl(path):
        if not isinstance(obj, dict) or "image" not in obj:
            continue
        if obj.get("model") == model and obj.get("prompt_id") == prompt_id:
            done.add(image_key(obj["image"]))
        else:
            other += 1
    if other:
        logger.warning("%s: %d lines come from another model or prompt than %s / %s; those images are "
                       "captioned again and the new lines appended (readers keep the later line)",
                       path, other, model, prompt_id)
    return done


def _limited(dataset: Dataset, limit: int | None) -> list[ImageItem]:
    if limit is None:
        return list(dataset.items)
    if limit < 0:
        raise ValueError(f"limit must be at least 0, got {limit}")
    return list(dataset.items[:limit])


def _start_files(out_path: Path, failures_path: Path, resume: bool) -> None:
    if resume:
        return
    for path in (out_path, failures_path):
        if path.exists() and path.stat().st_size:
            logger.warning("resume=False: replacing %s", path)
            path.unlink()


def _ask(captioner: Captioner, job: _Job, images: dict[str, Image.Image], max_attempts: int) -> dict[str, _ImageState]:
    """Collect ``job.n_units`` distinct units per image, asking again for what is still missing."""
    states = {image_id: _ImageState() for image_id in images}
    for _ in range(max_attempts):
        request_ids: list[str] = []
        for image_id, state in states.items():
            missing = job.n_units - len(state.units)
            if missing > 0 and state.request_error is None:
                request_ids.extend([image_id] * (1 if job.all_in_one else missing))
        if not request_ids:
            break
        replies = captioner.generate([images[image_id] for image_id in request_ids], job.prompt)
        if len(replies) != len(request_ids):
            raise RuntimeError(f"{captioner.name} captioner returned {len(replies)} replies for "
                               f"{len(request_ids)} requests; its generate() must return one reply or "
                               "exception per image")
        for image_id, reply in zip(request_ids, replies):
            state = states[image_id]
            if isinstance(reply, Exception):
                state.request_error = f"{type(reply).__name__}: {reply}"
                continue
            state.replies.append(reply)
            if len(state.units) >= job.n_units:
                continue
            try:
                units = job.parse(reply)
            except ReplyError as exc:
                state.errors.append(str(exc))
                continue
            for unit in units:
                key = job.key(unit)
                if key in state.keys:
                    state.errors.append("repeats an earlier variant after normalising case and white space")
                    continue
                if len(state.units) < job.n_units:
                    state.units.append(unit)
                    state.keys.add(key)
    return states


def _failure_line(job: _Job, captioner: Captioner, item: ImageItem, stage: str, error: str,
                  state: _ImageState | None = None) -> dict[str, Any]:
    return {"image": item.image_id, "kind": job.kind, "stage": stage, "error": error,
            "errors": state.errors if state else [], "replies": state.replies if state else [],
            "model": captioner.model, "prompt_id": job.prompt_id, "path": str(item.path) if item.path else None,
            "time": _now()}


def _run(dataset: Dataset, captioner: Captioner, job: _Job, out_path: str | os.PathLike,
         failures_path: str | os.PathLike, *, resume: bool, max_attempts: int, show_progress: bool,
         limit: int | None) -> CaptionReport:
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
    out_path, failures_path = Path(out_path), Path(failures_path)
    items = _limited(dataset, limit)
    _start_files(out_path, failures_path, resume)
    done = _done_images(out_path, captioner.model, job.prompt_id)
    todo = [item for item in items if item.image_id not in done]
    report = CaptionReport(n_images=len(items), n_done_before=len(items) - len(todo),
                           out_path=str(out_path), failures_path=str(failures_path))
    logger.info("%s with %s (%s): %d images, %d done before, %d to do", job.kind, captioner.model,
                job.prompt_id, len(items), report.n_done_before, len(todo))
    started = time.perf_counter()
    with JsonlAppender(out_path) as output, JsonlAppender(failures_path) as failures, \
            tqdm(total=len(todo), unit="img", desc=f"{job.kind} {captioner.model}", disable=not show_progress) as bar:

        def fail(line: dict[str, Any]) -> None:
            failures.write(line)
            report.n_failed += 1
            logger.warning("%s failed for image %s at the %s stage: %s (details in %s)", job.kind, line["image"],
                           line["stage"], line["error"], failures_path)

        # NOTE: each chunk waits for its slowest image, so with the openai backend one slow request
        # leaves the other max_concurrency - 1 slots idle until it returns or times out.
        for start in range(0, len(todo), captioner.batch_size):
            chunk = todo[start:start + captioner.batch_size]
            images: dict[str, Image.Image] = {}
            for item in chunk:
                try:
                    images[item.image_id] = load_image_rgb(item.path)
                except ImageLoadError as exc:
                    fail(_failure_line(job, captioner, item, "image", str(exc)))
            states = _ask(captioner, job, images, max_attempts) if images else {}
            for item in chunk:
                state = states.get(item.image_id)
                if state is None:
                    continue
                report.n_reasked += max(0, len(state.replies) - (1 if job.all_in_one else job.n_units))
                if len(state.units) < job.n_units:
                    if state.request_error:
                        fail(_failure_line(job, captioner, item, "request", state.request_error, state))
                    else:
                        last = state.errors[-1] if state.errors else "no reply"
                        error = f"{len(state.units)} of {job.n_units} valid after {max_attempts} attempts; last: {last}"
                        fail(_failure_line(job, captioner, item, "reply", error, state))
                    continue
                warnings = reply_warnings(job.texts(state.units))
                if warnings:
                    report.n_warnings += 1
                    if report.n_warnings <= _LOGGED_WARNINGS_MAX:
                        logger.warning("%s for image %s %s", job.kind, item.image_id, "; ".join(warnings))
                    if report.n_warnings == _LOGGED_WARNINGS_MAX:
                        logger.warning("further quality warnings are only counted in the report")
                output.write(job.make_line(item, state.units, warnings))
                report.n_written += 1
            bar.update(len(chunk))
    report.seconds = time.perf_counter() - started
    logger.info("%s finished: %s", job.kind, report)
    return report


def _tags(captioner: Captioner, prompt_id: str, warnings: list[str]) -> dict[str, Any]:
    tags: dict[str, Any] = {"prompt_id": prompt_id, "captioner": captioner.name, "prompt_version": RSRT_PROMPT_VERSION}
    if warnings:
        tags["warnings"] = warnings
    return tags


def run_captioning(dataset: Dataset, captioner: Captioner, out_path: str | os.PathLike,
                   failures_path: str | os.PathLike, *, n_variants: int = 5, resume: bool = True,
                   max_attempts: int = 3, show_progress: bool = True, limit: int | None = None) -> CaptionReport:
    """Write the RSRT record of every image of ``dataset`` to ``out_path``.

    For a VLM backend (``transformers``, ``openai``) the captioner requests
    ``n_variants`` variants of each image: in ``single`` mode with one request
    per attempt that must return them all, in ``per_variant`` mode with one sampled
    request per missing variant. The ``precomputed`` backend writes the
    records of its file, a fast copy that is redone in full every time. The
    ``human-holdout`` backend writes no records, only ``holdout_folds.json``
    beside ``out_path``.

    Args:
        dataset: The images; each needs a readable ``path`` for VLM backends.
        captioner: A backend from :func:`~trsllava_utils.captioning.make_captioner`.
        out_path: The run's RSRT file, usually ``outputs/<run>/rsrt.jsonl``.
        failures_path: Where failed images go with their raw replies, usually
            ``outputs/<run>/caption_failures.jsonl``.
        n_variants: Variants per record; must match ``captioner.n_variants`` for VLM backends.
        resume: Skip images already in ``out_path`` under the same model and prompt id;
            ``False`` deletes both files first.
        max_attempts: Requests per image (per missing variant round in ``per_variant``
            mode) before a damaged reply becomes a failure.
        show_progress: Show a progress bar with images per second.
        limit: Caption only the first ``limit`` images of the dataset.

    Returns:
        The counts of the run.
    """
    if isinstance(captioner, PrecomputedCaptioner):
        started = time.perf_counter()
        subset = dataclasses.replace(dataset, items=_limited(dataset, limit))
        records = captioner.records(subset, n_variants)
        write_run_records(records, out_path, n_variants=n_variants, captioner=captioner.name)
        return CaptionReport(n_images=subset.n_images, n_written=len(records), seconds=time.perf_counter() - started,
                             out_path=str(out_path), failures_path=None,
                             note=f"copied from {records[0].extra['source'] if records else 'the RSRT file'}")
    if isinstance(captioner, HoldoutCaptioner):
        started = time.perf_counter()
        folds_path = captioner.write_folds(dataset, Path(out_path).parent / HOLDOUT_FOLDS_FILENAME)
        logger.info("human-holdout needs no captioning; wrote the fold summary to %s and no RSRT records",
                    folds_path)
        return CaptionReport(n_images=dataset.n_images, seconds=time.perf_counter() - started,
                             out_path=None, failures_path=None,
                             note=f"the human-holdout oracle needs no captioning; fold summary in {folds_path}")
    if n_variants != captioner.n_variants:
        raise ValueError(f"n_variants={n_variants} but the captioner was built for {captioner.n_variants}; "
                         f"build it with the same n_variants (make_captioner reads the 'n_variants' parameter)")

    single = captioner.generation_mode == "single"

    def parse(reply: str) -> list[dict[str, str]]:
        return parse_reply(reply, n_variants if single else 1)

    def make_line(item: ImageItem, variants: list[dict[str, str]], warnings: list[str]) -> dict[str, Any]:
        record = RSRTRecord(image=item.image_id, variants=variants, model=captioner.model,
                            extra={**_tags(captioner, captioner.prompt_id, warnings),
                                   "generation_mode": captioner.generation_mode})
        validate_record(record, n_variants)
        return record.to_json()

    job = _Job(kind="rsrt", prompt=captioner.rsrt_prompt, prompt_id=captioner.prompt_id, n_units=n_variants,
               all_in_one=single, parse=parse,
               key=lambda variant: tuple(normalise_text(variant[name]) for name in sorted(variant)),
               texts=lambda variants: [text for variant in variants for text in variant.values()],
               make_line=make_line)
    return _run(dataset, captioner, job, out_path, failures_path, resume=resume, max_attempts=max_attempts,
                show_progress=show_progress, limit=limit)


def run_image_queries(dataset: Dataset, captioner: Captioner, out_path: str | os.PathLike,
                      failures_path: str | os.PathLike, *, n_queries: int = 1, resume: bool = True,
                      max_attempts: int = 3, show_progress: bool = True,
                      limit: int | None = None) -> CaptionReport:
    """Write image-query texts (the queries of image-to-text retrieval) for every image.

    Each line is ``{"image", "queries": [str x n_queries], "model", "prompt_id", ...}``;
    resume, retries and failures work as in :func:`run_captioning`. More than
    one query per image needs sampling (temperature above 0) to differ.

    Raises:
        ValueError: The backend has no model (``precomputed``, ``human-holdout``).
    """
    if not captioner.needs_images:
        raise ValueError(f"captioner {captioner.name!r} has no model to write image queries; use "
                         f"image_query_source 'rsrt', or a 'transformers' or 'openai' captioner")
    if n_queries < 1:
        raise ValueError(f"n_queries must be at least 1, got {n_queries}")

    def make_line(item: ImageItem, queries: list[str], warnings: list[str]) -> dict[str, Any]:
        return {"image": item.image_id, "queries": queries, "model": captioner.model,
                **_tags(captioner, captioner.query_prompt_id, warnings)}

    job = _Job(kind="image query", prompt=IMAGE_QUERY_PROMPT, prompt_id=captioner.query_prompt_id,
               n_units=n_queries, all_in_one=False, parse=lambda reply: [parse_query_reply(reply)],
               key=normalise_text, texts=list, make_line=make_line)
    return _run(dataset, captioner, job, out_path, failures_path, resume=resume, max_attempts=max_attempts,
                show_progress=show_progress, limit=limit)


def read_image_queries(path: str | os.PathLike) -> dict[str, list[str]]:
    """Read an ``image_queries.jsonl`` file into ``{image_id: [query, ...]}``.

    Image ids are file names (:func:`~trsllava_utils.rsrt.image_key`). When an
    image appears twice, the later line wins, as a resumed run may rewrite it.

    Raises:
        RecordError: A line lacks ``image`` or has no non-empty query; the message
            names the file and the line.
    """
    queries: dict[str, list[str]] = {}
    for number, obj in iter_jsonl(path):
        where = f"{path}, line {number}"
        if not isinstance(obj, dict) or "image" not in obj:
            raise RecordError(f"{where}: expected an object with 'image' and 'queries'")
        texts = obj.get("queries")
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t.strip() for t in texts):
            raise RecordError(f"{where}: 'queries' must be a non-empty list of non-empty strings")
        key = image_key(obj["image"])
        if key in queries:
            logger.warning("%s: image %r appears again; keeping the later line", where, key)
        queries[key] = [t.strip() for t in texts]
    return queries


def read_failures(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Return the lines of a failures file (an empty list when it does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    return [obj for _, obj in iter_jsonl(path)]
