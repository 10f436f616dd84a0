"""The two prompts of the method: the structured RSRT prompt and the image-query prompt.

The RSRT prompt requests N independent descriptions (variants) of one image,
each with three fields: a one-sentence summary, the visible features with
compass positions (top of the image = North), and a detailed paragraph.
Sizes stay qualitative because a VLM's percentages are guesses that put
numbers into the text which no human caption contains. The reply is JSON so
that it can be parsed and checked.

The image-query prompt turns an image into one short caption in the style
of the human captions of remote-sensing datasets. That text is the query of
image-to-text retrieval, matched against the human captions.
"""

from __future__ import annotations

import hashlib

RSRT_PROMPT_VERSION = "rsrt-v1"
"""Version of the prompt texts; part of every prompt id, so a new wording never resumes an old run."""

_TASK = (
    "You are looking at a remote-sensing image, taken from above. Describe it for image-text retrieval."
)

_FIELDS = (
    'Each description has three fields:\n'
    '- "one_sentence": one sentence that summarises the scene.\n'
    '- "feature": the visible features (objects, land cover, buildings, roads, water, vegetation) with '
    'their positions as compass directions, taking the top of the image as North '
    '(for example "a river runs from the north-west to the south-east; houses fill the southern half").\n'
    '- "caption": a detailed paragraph of about 60 to 100 words that describes the whole scene.'
)

_RULES = (
    "Describe sizes and amounts qualitatively (small, large, a few, many, most of the image). "
    "Never give percentages, counts you cannot see, or measurements. Mention only what is visible."
)


def rsrt_prompt(n_variants: int) -> str:
    """Build the structured RSRT prompt that requests ``n_variants`` variants in one JSON object.

    Raises:
        ValueError: ``n_variants`` is below 1.
    """
    if n_variants < 1:
        raise ValueError(f"n_variants must be at least 1, got {n_variants}")
    return (
        f"{_TASK}\n\n"
        f"Write {n_variants} independent descriptions (variants) of this image. {_FIELDS}\n\n"
        f"{_RULES} Make the variants differ in wording and emphasis while each stays faithful to the image.\n\n"
        f"Reply with JSON only, no other text, in exactly this form, with {n_variants} objects in the list:\n"
        '{"variants": [{"one_sentence": "...", "feature": "...", "caption": "..."}]}'
    )


def single_variant_prompt() -> str:
    """Build the prompt for one variant per request, sampled N times (the ``per_variant`` mode)."""
    return (
        f"{_TASK}\n\n"
        f"Write one description of this image. {_FIELDS}\n\n"
        f"{_RULES}\n\n"
        "Reply with JSON only, no other text, in exactly this form:\n"
        '{"one_sentence": "...", "feature": "...", "caption": "..."}'
    )


IMAGE_QUERY_PROMPT = (
    "You are looking at a remote-sensing image, taken from above. Write one caption of it in the style "
    "of a remote-sensing caption dataset: one plain sentence of 8 to 20 words that names the main "
    "objects and how they are arranged, for example \"many buildings and green trees are around a "
    "playground\". No percentages and no numbers you cannot see. Reply with the sentence only."
)
"""Prompt that turns an image into the query text of image-to-text retrieval."""


def prompt_identity(prompt: str, mode: str, n: int) -> str:
    """Return a short, stable id of a prompt, its generation mode and its count.

    Records store this id, and a resumed run skips only images done under the same id.
    """
    digest = hashlib.sha256(f"{RSRT_PROMPT_VERSION}\n{mode}\n{n}\n{prompt}".encode("utf-8")).hexdigest()
    return f"{RSRT_PROMPT_VERSION}-{mode}-{n}-{digest[:10]}"
