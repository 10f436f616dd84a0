"""The captioner interface shared by the four backends, and the factory that builds one from run parameters.

A captioner turns images into raw replies to a prompt. The run loop in
:mod:`.runner` owns everything around that call (batching, parsing, retries
on damaged replies, resume and the failures file), so a backend only
implements :meth:`Captioner.generate`. The two backends without a VLM,
``precomputed`` and ``human-holdout``, sit on the same interface but
generate nothing. The run loop calls their own methods for records or
folds instead.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from PIL import Image

from ..data import Dataset
from ..rsrt import RSRTRecord
from .precomputed import precomputed_records
from .prompts import IMAGE_QUERY_PROMPT, prompt_identity, rsrt_prompt, single_variant_prompt

if TYPE_CHECKING:
    from ..params import RunParams

logger = logging.getLogger(__name__)

GENERATION_MODES = ("single", "per_variant")

TOKENS_PER_VARIANT_ESTIMATE = 230
"""Estimated tokens of one variant's JSON: the demo RSRT variants average about 920 characters,
at about 4 characters per Llama token."""


class CaptionerError(RuntimeError):
    """A request to a model failed for good (after the backend's own retries)."""


class Captioner:
    """Base class of every backend.

    Attributes:
        name: Backend name, as in the ``captioner`` parameter.
        model: Identity of the model; records carry it and resume matches on it.
        needs_images: Whether the backend reads images.
        batch_size: Images the run loop hands to :meth:`generate` at once.
        n_variants: Variants per RSRT record.
        generation_mode: ``"single"``, one request returns all variants as one JSON
            object; ``"per_variant"``, N sampled requests return one variant each.
    """

    name: ClassVar[str] = "base"
    needs_images: ClassVar[bool] = True

    def __init__(self, model: str, *, n_variants: int = 5, generation_mode: str = "single",
                 batch_size: int = 1, temperature: float = 0.7) -> None:
        if generation_mode not in GENERATION_MODES:
            raise ValueError(f"unknown generation_mode {generation_mode!r}; allowed: {', '.join(GENERATION_MODES)}")
        if n_variants < 1:
            raise ValueError(f"n_variants must be at least 1, got {n_variants}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if generation_mode == "per_variant" and n_variants > 1 and temperature <= 0:
            raise ValueError("generation_mode 'per_variant' samples each variant independently and needs "
                             "temperature > 0; with temperature 0 every variant would be the same")
        self.model = model
        self.n_variants = n_variants
        self.generation_mode = generation_mode
        self.batch_size = batch_size
        self.temperature = temperature

    # Prompts and their ids.
    @property
    def rsrt_prompt(self) -> str:
        """The prompt one RSRT request sends, by generation mode."""
        if self.generation_mode == "single":
            return rsrt_prompt(self.n_variants)
        return single_variant_prompt()

    @property
    def prompt_id(self) -> str:
        """Id of the RSRT prompt, mode and variant count; resume matches on it."""
        return prompt_identity(self.rsrt_prompt, self.generation_mode, self.n_variants)

    @property
    def query_prompt_id(self) -> str:
        """Id of the image-query prompt."""
        return prompt_identity(IMAGE_QUERY_PROMPT, "query", 1)

    # Generation.
    def generate(self, images: list[Image.Image], prompt: str) -> list[str | Exception]:
        """Return one raw reply per image, or the exception that ended that image's request.

        Backends implement this; an error for one image must not stop the others.
        """
        raise NotImplementedError(f"backend {self.name!r} does not generate text")

    def check_token_budget(self, max_new_tokens: int) -> None:
        """Log a warning when ``max_new_tokens`` is likely to cut a single-mode reply short."""
        needed = TOKENS_PER_VARIANT_ESTIMATE * (self.n_variants if self.generation_mode == "single" else 1)
        if max_new_tokens < needed:
            logger.warning("max_new_tokens=%d is below the estimated %d tokens of a reply with %d variant(s); "
                           "a reply cut short is invalid JSON, so raise max_new_tokens or use generation_mode "
                           "'per_variant'", max_new_tokens, needed,
                           self.n_variants if self.generation_mode == "single" else 1)

    def _raise_first_error(self, replies: list[str | Exception]) -> list[str]:
        for reply in replies:
            if isinstance(reply, Exception):
                raise CaptionerError(f"{self.name} captioner, model {self.model!r}: {reply}") from reply
        return [str(reply) for reply in replies]

    def describe(self, images: list[Image.Image]) -> list[str]:
        """Return the raw replies to the RSRT prompt (:attr:`rsrt_prompt`), one per image.

        In ``per_variant`` mode each reply is one sampled variant; call again for more.

        Raises:
            CaptionerError: A request failed.
        """
        return self._raise_first_error(self.generate(images, self.rsrt_prompt))

    def query(self, images: list[Image.Image]) -> list[str]:
        """Return the raw replies to the image-query prompt, one per image.

        Raises:
            CaptionerError: A request failed.
        """
        return self._raise_first_error(self.generate(images, IMAGE_QUERY_PROMPT))

    def close(self) -> None:
        """Release the model or the connections. The base class has none to release."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r}, mode={self.generation_mode!r}, n={self.n_variants})"


class PrecomputedCaptioner(Captioner):
    """Records read from an existing RSRT file; no model runs."""

    name = "precomputed"
    needs_images = False

    def __init__(self, rsrt_file: str | os.PathLike | None = None, *, n_variants: int = 5) -> None:
        self.rsrt_file = Path(rsrt_file) if rsrt_file is not None else None
        super().__init__(f"file:{self.rsrt_file.name}" if self.rsrt_file else "file:registered",
                         n_variants=n_variants)

    def records(self, dataset: Dataset, n_variants: int | None = None) -> list[RSRTRecord]:
        """Return one record per dataset image from the file (the dataset's registered one when unset)."""
        return precomputed_records(dataset, self.rsrt_file, n_variants or self.n_variants)


class HoldoutCaptioner(Captioner):
    """The human-holdout oracle: held-out human captions are the database texts, with no model and no images.

    It writes no RSRT records. The retrieval side builds its folds with
    :func:`trsllava_utils.episodes.holdout_episodes`. :meth:`write_folds`
    writes a summary of those folds, so the run folder records what was compared.
    """

    name = "human-holdout"
    needs_images = False

    def __init__(self) -> None:
        super().__init__("human-captions", n_variants=1)

    def write_folds(self, dataset: Dataset, path: str | os.PathLike) -> Path:
        """Write a JSON summary of the oracle's folds (query and database counts per fold)."""
        from ..episodes import holdout_episodes

        folds = [{"fold": episode.name, "n_queries": len(episode.t2i_queries),
                  "n_database_texts": len(episode.t2i_gallery)} for episode in holdout_episodes(dataset)]
        summary = {
            "captioner": self.name, "dataset": dataset.name, "split": dataset.split,
            "n_images": dataset.n_images, "n_folds": len(folds), "folds": folds,
            "description": "fold f: caption f of every image is the query and the image's other captions "
                           "are its database texts; an upper bound with human-quality text, not the method",
        }
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        return path


def make_captioner(params: "RunParams") -> Captioner:
    """Build the captioner that the run parameters name.

    ``transformers`` loads the model folder now, which takes a while for a 7B
    model. ``openai`` only checks the parameters, and the first request goes
    out when captioning starts.
    """
    if params.captioner == "precomputed":
        return PrecomputedCaptioner(params.rsrt_file, n_variants=params.n_variants)
    if params.captioner == "human-holdout":
        return HoldoutCaptioner()
    if params.captioner == "transformers":
        from .backend_transformers import TransformersCaptioner

        return TransformersCaptioner(
            params.captioner_model, n_variants=params.n_variants, generation_mode=params.generation_mode,
            batch_size=params.caption_batch_size, max_new_tokens=params.max_new_tokens,
            temperature=params.temperature, seed=params.seed)
    if params.captioner == "openai":
        from .backend_openai import OpenAICaptioner

        return OpenAICaptioner(
            params.openai_base_url, params.captioner_model, api_key_env=params.openai_api_key_env,
            n_variants=params.n_variants, generation_mode=params.generation_mode,
            max_concurrency=params.max_concurrency, timeout_s=params.request_timeout_s,
            max_retries=params.max_retries, max_new_tokens=params.max_new_tokens,
            temperature=params.temperature, seed=params.seed)
    raise ValueError(f"unknown captioner {params.captioner!r}; allowed: precomputed, human-holdout, "
                     f"transformers, openai")
