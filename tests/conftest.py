"""Shared test set-up: offline model loading and the shared data folder."""

import os
from pathlib import Path

import pytest

# Nothing in the tests may reach the Hugging Face hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from trsllava_utils.paths import resolve_data_root  # noqa: E402


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real data folder; tests that need it skip when it is absent."""
    root = resolve_data_root()
    if not (root / "demo" / "captions.json").is_file():
        pytest.skip(f"shared data not found at {root}")
    return root
