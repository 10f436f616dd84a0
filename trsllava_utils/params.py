"""The typed schema of a run's parameters.

A run is one flat YAML mapping, the papermill convention: each key is a
variable of the tagged ``parameters`` cell of every notebook. ``RunParams``
validates it, and :func:`load_params` turns any problem into a
:class:`ParamsError` that names the file, the key and the allowed values.
"""

from __future__ import annotations

import difflib
import os
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

RSRT_FIELDS: tuple[str, ...] = ("one_sentence", "feature", "caption")
"""Fields of one RSRT variant, in record order."""

DatasetName = Literal["demo", "rsitmd", "rsicd", "ucm", "sydney", "custom"]
CaptionFormat = Literal["auto", "json", "precomp", "karpathy", "csv"]
CaptionerName = Literal["precomputed", "human-holdout", "transformers", "openai"]
GenerationMode = Literal["single", "per_variant"]
Aggregation = Literal["max", "mean"]
TextMode = Literal["joined", "per_field"]
ImageQuerySource = Literal["rsrt", "image_queries"]


class ParamsError(ValueError):
    """Invalid run parameters; the message names the key and the allowed values."""


class RunParams(BaseModel):
    """Parameters of one run, shared by the four notebooks."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Run and data.
    run_name: str = Field("demo_minilm", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    dataset: DatasetName = "demo"
    split: str = "test"
    data_root: str | None = None
    captions_file: str | None = None
    image_dir: str | None = None
    caption_format: CaptionFormat = "auto"
    require_images: bool = False
    output_root: str = "outputs"

    # Captioning.
    captioner: CaptionerName = "precomputed"
    rsrt_file: str | None = None
    captioner_model: str | None = None
    openai_base_url: str | None = None
    openai_api_key_env: str = "OPENAI_API_KEY"
    max_concurrency: int = Field(4, ge=1, le=256)
    request_timeout_s: float = Field(120.0, gt=0)
    max_retries: int = Field(3, ge=0, le=20)
    generation_mode: GenerationMode = "single"
    caption_batch_size: int = Field(4, ge=1)
    # Five RSRT variants of about 80-word paragraphs run to roughly 1,200 tokens.
    max_new_tokens: int = Field(1536, ge=1)
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    n_variants: int = Field(5, ge=1, le=10)
    image_query_source: ImageQuerySource = "rsrt"

    # Embedding.
    db_fields: list[Literal["one_sentence", "feature", "caption"]] = Field(
        default_factory=lambda: list(RSRT_FIELDS), min_length=1
    )
    db_text_mode: TextMode = "joined"
    embedding_model: str = "all-MiniLM-L6-v2"
    embedding_model_path: str | None = None
    embedding_base_url: str | None = None
    embedding_batch_size: int = Field(64, ge=1)
    use_cache: bool = True

    # Retrieval.
    aggregation: Aggregation = "max"
    ks: list[int] = Field(default_factory=lambda: [1, 5, 10], min_length=1)
    bootstrap_samples: int = Field(1000, ge=0)
    block_size: int = Field(2048, ge=1)
    seed: int = 0

    @field_validator("db_fields")
    @classmethod
    def _unique_fields(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"repeated field in {value}; allowed fields: {', '.join(RSRT_FIELDS)}")
        # Record order keeps joined texts the same whatever order the YAML lists.
        return [name for name in RSRT_FIELDS if name in value]

    @field_validator("ks")
    @classmethod
    def _positive_sorted_ks(cls, value: list[int]) -> list[int]:
        if any(k < 1 for k in value):
            raise ValueError(f"every K must be a positive integer, got {value}")
        return sorted(set(value))

    @model_validator(mode="after")
    def _check_combinations(self) -> "RunParams":
        if self.dataset == "custom" and not self.captions_file:
            raise ValueError("dataset 'custom' needs captions_file (and image_dir when images are used)")
        if self.captioner == "transformers" and not self.captioner_model:
            raise ValueError("captioner 'transformers' needs captioner_model, a local model folder")
        if self.captioner == "openai" and not (self.openai_base_url and self.captioner_model):
            raise ValueError("captioner 'openai' needs openai_base_url and captioner_model")
        if self.captioner == "human-holdout" and self.image_query_source != "rsrt":
            raise ValueError("captioner 'human-holdout' uses held-out captions as image queries; "
                             "leave image_query_source at 'rsrt'")
        return self

    @property
    def is_oracle(self) -> bool:
        """Whether the run uses held-out human captions: an upper bound, not the method."""
        return self.captioner == "human-holdout"


_TYPE_WORDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def allowed_values(key: str) -> str:
    """Describe the allowed values of ``key`` from its type annotation and bounds."""
    field = RunParams.model_fields[key]
    literals: list[Any] = []
    kinds: list[str] = []
    stack = [field.annotation]
    while stack:
        current = stack.pop()
        if typing.get_origin(current) is Literal:
            literals.extend(typing.get_args(current))
        elif typing.get_origin(current) is list and typing.get_args(current)[0] in _TYPE_WORDS:
            kinds.append(f"a list of {_TYPE_WORDS[typing.get_args(current)[0]].split(' ', 1)[1]}s")
        elif typing.get_origin(current) is list:
            stack.extend(typing.get_args(current))
        elif current is type(None):
            kinds.append("null")
        elif current in _TYPE_WORDS:
            kinds.append(_TYPE_WORDS[current])
        else:
            stack.extend(typing.get_args(current))
    if literals:
        return ", ".join(repr(v) for v in literals)
    bounds = []
    for rule in field.metadata:
        for name, word in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"), ("pattern", "matching")):
            if getattr(rule, name, None) is not None:
                bounds.append(f"{word} {getattr(rule, name)}")
    return " or ".join(dict.fromkeys(kinds)) + (f" {', '.join(bounds)}" if bounds else "")


def _describe_error(error: dict[str, Any]) -> str:
    location = [str(part) for part in error["loc"]]
    key = location[0] if location else ""
    if error["type"] == "extra_forbidden":
        close = difflib.get_close_matches(key, RunParams.model_fields, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        return f"unknown key '{key}'{hint} Known keys: {', '.join(RunParams.model_fields)}"
    if not key:
        return error["msg"].removeprefix("Value error, ")
    shown = ".".join(location)
    allowed = allowed_values(key) if key in RunParams.model_fields else ""
    return (f"invalid value {error.get('input')!r} for '{shown}': "
            f"{error['msg'].removeprefix('Value error, ')} (allowed: {allowed})")


def validate_params(values: dict[str, Any], source: str = "parameters") -> RunParams:
    """Validate a mapping of parameters; raise :class:`ParamsError` naming each bad key."""
    if not isinstance(values, dict):
        raise ParamsError(f"{source}: expected a mapping of parameter names to values, got {type(values).__name__}")
    try:
        return RunParams(**values)
    except ValidationError as exc:
        problems = "\n  - ".join(_describe_error(e) for e in exc.errors())
        raise ParamsError(f"{source}: invalid parameters:\n  - {problems}") from None


def read_params_file(path: str | os.PathLike) -> Any:
    """Read a YAML parameters file without validating it; an empty file gives ``{}``."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"parameters file not found: {path}; check the path (run files are in params/)")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None


def load_params(path: str | os.PathLike) -> RunParams:
    """Read and validate one YAML parameters file (one run, not a grid)."""
    return validate_params(read_params_file(path), source=str(path))


def notebook_params(params: RunParams) -> dict[str, Any]:
    """Return the parameters as plain values for papermill's ``parameters`` cell."""
    return params.model_dump(mode="json")


def params_from_namespace(namespace: dict[str, Any], source: str = "notebook parameters") -> RunParams:
    """Validate the parameter variables found in a notebook's namespace (``globals()``).

    Only names of :class:`RunParams` fields are read, so the notebook's other
    variables never clash with the schema.
    """
    values = {name: namespace[name] for name in RunParams.model_fields if name in namespace}
    return validate_params(values, source=source)
