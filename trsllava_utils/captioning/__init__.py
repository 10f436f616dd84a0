"""Captioning: turn images into RSRT records with any vision-language model.

- ``prompts``: the structured RSRT prompt and the image-query prompt;
- ``parsing``: reply repair, validation and quality warnings;
- ``images``: image files to RGB;
- ``base``: the :class:`Captioner` interface, the ``precomputed`` and
  ``human-holdout`` backends, and :func:`make_captioner`;
- ``backend_transformers`` and ``backend_openai``: the two VLM backends
  (imported when used, because transformers loads slowly);
- ``runner``: resumable runs that write records, image queries and failures;
- ``precomputed``: records read from an existing RSRT file;
- ``workflow``: the run step that notebook 01 and the command line call.

Command line: ``python -m trsllava_utils.captioning --params params/<run>.yaml``.
"""

from .base import Captioner, CaptionerError, HoldoutCaptioner, PrecomputedCaptioner, make_captioner
from .images import ImageLoadError, load_image_rgb
from .parsing import ReplyError, parse_query_reply, parse_reply, reply_warnings
from .precomputed import RSRT_FILENAME, precomputed_records, write_run_records
from .prompts import IMAGE_QUERY_PROMPT, RSRT_PROMPT_VERSION, prompt_identity, rsrt_prompt, single_variant_prompt
from .runner import (FAILURES_FILENAME, HOLDOUT_FOLDS_FILENAME, IMAGE_QUERIES_FILENAME, QUERY_FAILURES_FILENAME,
                     CaptionReport, read_failures, read_image_queries, run_captioning, run_image_queries)
from .workflow import StepReport, caption_dataset, show_record

__all__ = [
    "Captioner", "CaptionerError", "HoldoutCaptioner", "PrecomputedCaptioner", "make_captioner",
    "ImageLoadError", "load_image_rgb",
    "ReplyError", "parse_query_reply", "parse_reply", "reply_warnings",
    "RSRT_FILENAME", "precomputed_records", "write_run_records",
    "IMAGE_QUERY_PROMPT", "RSRT_PROMPT_VERSION", "prompt_identity", "rsrt_prompt", "single_variant_prompt",
    "FAILURES_FILENAME", "HOLDOUT_FOLDS_FILENAME", "IMAGE_QUERIES_FILENAME", "QUERY_FAILURES_FILENAME",
    "CaptionReport", "read_failures", "read_image_queries", "run_captioning", "run_image_queries",
    "StepReport", "caption_dataset", "show_record",
]
