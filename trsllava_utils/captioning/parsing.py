"""Parse and repair a model's reply into RSRT variants or a query text, and check its quality.

Small models damage JSON in a few usual ways: a code fence around it, prose
before or after it, trailing commas, single quotes, curly quotes, raw line
breaks inside strings. :func:`parse_reply` repairs those, then checks the
variants the way :func:`~trsllava_utils.rsrt.validate_record` does. A reply
that still fails raises :class:`ReplyError`, which carries the raw reply so
that the run can write it to the failures file.
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any

from ..params import RSRT_FIELDS
from ..rsrt import normalise_text


class ReplyError(ValueError):
    """A reply that could not be turned into valid output; ``reply`` is the raw text."""

    def __init__(self, message: str, reply: str) -> None:
        super().__init__(message)
        self.reply = reply


# Field names that models write in place of the RSRT names.
_FIELD_ALIASES = {
    "one_sentence": "one_sentence", "onesentence": "one_sentence", "sentence": "one_sentence",
    "summary": "one_sentence", "one_sentence_summary": "one_sentence",
    "feature": "feature", "features": "feature", "visible_features": "feature",
    "caption": "caption", "detailed_caption": "caption", "description": "caption",
    "detailed_description": "caption", "paragraph": "caption",
}

_FENCE = re.compile(r"```[A-Za-z0-9_-]*\s*\n?(.*?)(?:```|$)", re.DOTALL)
_MAX_OPENERS = 64
_TRAILING_COMMA = re.compile(r",(\s*[}\]])")
_CURLY_QUOTES = str.maketrans({"\u201c": '"', "\u201d": '"', "\u2018": "'", "\u2019": "'"})

_PERCENT = re.compile(r"\d\s*%|\bper\s?cent\b", re.IGNORECASE)
_PROMPT_ECHO = re.compile(
    r"\b(the prompt|as requested|json|one_sentence|variants?\s*\d|as an ai|i cannot|i can't|"
    r"here is|here are|top of the image as north)\b",
    re.IGNORECASE,
)


def _strip_fence(text: str) -> str:
    match = _FENCE.search(text)
    return match.group(1) if match else text


def _balanced_span(text: str, start: int) -> str | None:
    """Return the bracketed span that starts at ``text[start]``, skipping brackets inside strings."""
    depth = 0
    quote: str | None = None
    escaped = False
    for pos in range(start, len(text)):
        char = text[pos]
        if quote:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == quote:
                quote = None
            continue
        if char == '"':
            quote = char
        elif char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
            if depth == 0:
                return text[start:pos + 1]
    return None


def _candidates(text: str) -> list[str]:
    """Return the spans of ``text`` that may contain the JSON value, in order of their start.

    Every balanced span from each of the first ``_MAX_OPENERS`` brackets comes
    first, then the span from the first opening to the last closing bracket
    (for a string with an unescaped quote), then the whole text.
    """
    body = _strip_fence(text.translate(_CURLY_QUOTES)).strip()
    spans = []
    starts = [match.start() for match in re.finditer(r"[{\[]", body)][:_MAX_OPENERS]
    for start in starts:
        span = _balanced_span(body, start)
        if span:
            spans.append(span)
    if starts:
        end = max(body.rfind("}"), body.rfind("]"))
        if end > starts[0]:
            spans.append(body[starts[0]:end + 1])
    return spans + [body]


def _load_lenient(span: str) -> Any:
    """Decode ``span`` as JSON, repairing trailing commas, single quotes and Python literals."""
    attempts = [span, _TRAILING_COMMA.sub(r"\1", span)]
    for attempt in attempts:
        try:
            return json.loads(attempt, strict=False)
        except json.JSONDecodeError:
            pass
    # Single-quoted keys and strings, or True/None, read as a Python literal.
    python_like = re.sub(r"\btrue\b", "True", re.sub(r"\bfalse\b", "False", re.sub(r"\bnull\b", "None", span)))
    for attempt in (span, python_like):
        try:
            return ast.literal_eval(attempt.replace("\n", " "))
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            pass
    raise ValueError("not valid JSON")


def extract_json(text: str) -> Any:
    """Return the JSON value in a reply, after repairing the usual damage.

    Raises:
        ReplyError: No repair gave a JSON object or list.
    """
    fallback = None
    for span in _candidates(text):
        try:
            value = _load_lenient(span)
        except ValueError:
            continue
        # An object, or a list of objects, is the reply; a list such as "[1]" in prose is a last resort.
        if isinstance(value, dict) or (isinstance(value, list) and value and
                                       all(isinstance(part, dict) for part in value)):
            return value
        if isinstance(value, list) and fallback is None:
            fallback = value
    if fallback is not None:
        return fallback
    raise ReplyError(f"no JSON object found in the reply ({len(text)} characters)", text)


def _field_name(key: Any) -> str | None:
    cleaned = re.sub(r"[^a-z0-9]+", "_", str(key).lower()).strip("_")
    return _FIELD_ALIASES.get(cleaned)


def _field_text(value: Any) -> str:
    if isinstance(value, list):
        value = "; ".join(str(part).strip() for part in value if str(part).strip())
    if not isinstance(value, str):
        return ""
    return re.sub(r"\s+", " ", value).strip()


def _variant_from(obj: Any) -> dict[str, str] | None:
    if not isinstance(obj, dict):
        return None
    variant: dict[str, str] = {}
    for key, value in obj.items():
        name = _field_name(key)
        if name and name not in variant:
            variant[name] = _field_text(value)
    return variant


def _variant_list(value: Any) -> list[Any]:
    """Find the list of variants: a ``variants`` key, any list of objects, a bare list, or one object."""
    if isinstance(value, list):
        return value
    for key, inner in value.items():
        if str(key).lower().strip() in ("variants", "descriptions", "variant"):
            return inner if isinstance(inner, list) else [inner]
    lists = [inner for inner in value.values() if isinstance(inner, list) and inner and
             all(isinstance(part, dict) for part in inner)]
    if len(lists) == 1:
        return lists[0]
    return [value]


def parse_reply(text: str, n_variants: int | None) -> list[dict[str, str]]:
    """Turn a reply to the RSRT prompt into validated variants.

    Repairs code fences, prose around the object, trailing commas, single and
    curly quotes, and accepts a ``variants`` list, a bare list or a single
    variant object. Field names are matched case-insensitively with common
    aliases (``features``, ``summary``, ``description``), and a list value is
    joined with semicolons. Duplicate variants after normalising case and
    white space are dropped before counting.

    Args:
        text: The raw reply.
        n_variants: Variants expected; more are cut to this many, fewer raise.
            ``None`` accepts any non-zero count.

    Returns:
        Variants with exactly the three RSRT fields, non-empty.

    Raises:
        ReplyError: The reply has no JSON, a field is missing or empty, or too
            few distinct variants remain. The message names the problem.
    """
    value = extract_json(text)
    raw_variants = _variant_list(value)
    variants: list[dict[str, str]] = []
    seen: set[tuple[str, ...]] = set()
    duplicates = 0
    for number, obj in enumerate(raw_variants, start=1):
        variant = _variant_from(obj)
        if variant is None:
            raise ReplyError(f"variant {number} is a {type(obj).__name__}, not an object", text)
        for name in RSRT_FIELDS:
            if not variant.get(name):
                raise ReplyError(f"variant {number}: field '{name}' is missing or empty", text)
        key = tuple(normalise_text(variant[name]) for name in RSRT_FIELDS)
        if key in seen:
            duplicates += 1
            continue
        seen.add(key)
        variants.append({name: variant[name] for name in RSRT_FIELDS})
    if not variants:
        raise ReplyError("no variant found in the reply", text)
    if n_variants is not None and len(variants) < n_variants:
        dropped = f" after dropping {duplicates} duplicates" if duplicates else ""
        raise ReplyError(f"{len(variants)} distinct variants{dropped}, expected {n_variants}", text)
    return variants if n_variants is None else variants[:n_variants]


def parse_query_reply(text: str) -> str:
    """Turn a reply to the image-query prompt into one query sentence.

    Accepts the plain sentence, or the sentence inside a code fence, quotes,
    a ``Caption:`` label, or a JSON object or list of strings. The first
    non-empty line is kept.

    Raises:
        ReplyError: Nothing but white space or labels remains.
    """
    body = _strip_fence(text.translate(_CURLY_QUOTES)).strip()
    if body[:1] in "{[":
        try:
            value = extract_json(body)
        except ReplyError:
            value = None
        if isinstance(value, dict):
            value = next((v for v in value.values() if isinstance(v, (str, list))), None)
        if isinstance(value, list):
            value = next((v for v in value if isinstance(v, str) and v.strip()), None)
        if isinstance(value, str):
            body = value
    lines = [line.strip() for line in body.splitlines() if line.strip()]
    for line in lines:
        line = re.sub(r"^(caption|query|sentence|answer)\s*\d*\s*:\s*", "", line, flags=re.IGNORECASE)
        line = line.strip().strip('"\'').strip()
        if line:
            return re.sub(r"\s+", " ", line)
    raise ReplyError("no sentence found in the reply", text)


def reply_warnings(texts: list[str]) -> list[str]:
    """Return quality warnings for accepted texts: percentages, or words that echo the prompt."""
    warnings = []
    joined = " ".join(texts)
    if _PERCENT.search(joined):
        warnings.append("contains a percentage")
    echo = _PROMPT_ECHO.search(joined)
    if echo:
        warnings.append(f"mentions the prompt ({echo.group(0)!r})")
    return warnings
