"""Download the public caption files of registered datasets, pinned to a commit and a SHA-256.

``python -m trsllava_utils.data download rsitmd`` writes ``data/rsitmd/test.json``
and the other files of :data:`PINS` under the project's ``data/`` folder, the
layout :func:`~trsllava_utils.paths.resolve_data_root` and the registry expect.
Each file is streamed to a temporary file beside its target, its checksum is
verified, and only then is it renamed into place, so a failed or tampered
download never leaves a file behind.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import logging
import os
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .paths import PROJECT_ROOT

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://raw.githubusercontent.com"
"""GitHub's raw-content host; it serves ``/<owner>/<repo>/<commit>/<path>``."""

BASE_URL_ENV_VAR = "TRSLLAVA_DOWNLOAD_BASE_URL"
"""Environment variable that replaces :data:`DEFAULT_BASE_URL` (a mirror, or a local server in tests)."""

HARMA = "seekerhuang/HarMA/d3f13f3387d718e4d07aa94c418e9e93f47d052e"
GALR = "xiaoyuan1996/GaLR/60d65760297fd3ea7d857bb0a8b69a887cd8ec0d"


class DownloadError(RuntimeError):
    """A download that failed or whose checksum differs from the pin. Nothing was written."""


@dataclass(frozen=True)
class PinnedFile:
    """One public file: where it lives at a pinned commit, where it goes, and its SHA-256."""

    remote_path: str
    target: str
    sha256: str


PINS: dict[str, list[PinnedFile]] = {
    "rsitmd": [
        PinnedFile(f"{HARMA}/data/finetune/rsitmd_test.json", "rsitmd/test.json",
                   "c154dbf0bbb23bf147c1c5e0f746bad59c22b44721b60198ed040cbeff410358"),
        PinnedFile(f"{HARMA}/data/finetune/rsitmd_val.json", "rsitmd/val.json",
                   "8261fd213c5dc38fb397204171bca12e1708c7748b785154bfc68237bf2f8f26"),
        PinnedFile(f"{GALR}/data/rsitmd_precomp/test_caps.txt", "rsitmd/precomp/test_caps.txt",
                   "c3e72a13ecafcbae0913edd2e9de87e8e77acad97b5635f3ba2f56a628b83c0f"),
        PinnedFile(f"{GALR}/data/rsitmd_precomp/test_filename.txt", "rsitmd/precomp/test_filename.txt",
                   "183cbcd9d9a49fb92cd7aca3fe6bd411705ea3f590ac1dd572ace29c52b045bd"),
    ],
    # NOTE: GaLR's data/rsicd_precomp/ files are not pinned, because no SHA-256 of
    # a verified copy is known, and an unchecked pin would protect nothing.
    "rsicd": [
        PinnedFile(f"{HARMA}/data/finetune/rsicd_test.json", "rsicd/test.json",
                   "10cc90900aff6f7ae2153bd7e8d752c3d09df54c7bf18b48a69abb8410a5d8e8"),
        PinnedFile(f"{HARMA}/data/finetune/rsicd_val.json", "rsicd/val.json",
                   "d58212fc92c67e5981292d3383a72cb802a1b84904f4ffd797f2a89166156106"),
    ],
}
"""Pinned caption files of each downloadable dataset."""

NOT_DOWNLOADABLE: dict[str, str] = {
    "demo": "the demo images and captions are not a public download; they come with the shared data folder",
    "ucm": "UCM-captions has no pinned public copy; place its dataset.json at <data root>/ucm/dataset.json "
           "and its images in <data root>/ucm/images/",
    "sydney": "Sydney-captions has no pinned public copy; place its dataset.json at "
              "<data root>/sydney/dataset.json and its images in <data root>/sydney/images/",
}


def sha256_of(path: Path) -> str:
    """Return the hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_file(url: str, target: Path, sha256: str, timeout_s: float = 60.0) -> None:
    """Download ``url`` to ``target`` if its SHA-256 equals ``sha256``.

    The bytes go to a temporary file in the target's folder and are renamed
    into place only after the checksum matched.

    Raises:
        DownloadError: if the request fails or the checksum differs.
    """
    from tqdm.auto import tqdm

    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    handle = tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", suffix=".part",
                                         delete=False)
    temporary = Path(handle.name)
    try:
        with handle, urllib.request.urlopen(url, timeout=timeout_s) as response:
            total = response.headers.get("Content-Length")
            with tqdm(total=int(total) if total else None, unit="B", unit_scale=True, desc=target.name,
                      leave=False) as progress:
                for block in iter(lambda: response.read(1 << 16), b""):
                    handle.write(block)
                    digest.update(block)
                    progress.update(len(block))
            handle.flush()
            os.fsync(handle.fileno())
        actual = digest.hexdigest()
        if actual != sha256:
            raise DownloadError(f"checksum mismatch for {url}: expected SHA-256 {sha256}, got {actual}; "
                                f"{target} was not written. The source changed or the download was "
                                "corrupted: retry, or check the base URL")
        os.replace(temporary, target)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        raise DownloadError(f"download failed for {url}: {exc}; check the network or the base URL") from None
    finally:
        temporary.unlink(missing_ok=True)


def download_dataset(name: str, dest: str | os.PathLike | None = None, base_url: str | None = None,
                     force: bool = False) -> list[Path]:
    """Download the pinned caption files of dataset ``name`` into ``dest`` (default: the project's data/).

    A file already present with the pinned checksum is kept. A present file
    with another checksum is replaced only with ``force``, so a user's own
    copy is never overwritten by accident.

    Returns:
        The target path of every pinned file of the dataset.

    Raises:
        DownloadError: for a dataset without pins, a failed download, a
            checksum mismatch, or a differing local file without ``force``.
    """
    if name not in PINS:
        reason = NOT_DOWNLOADABLE.get(name, f"unknown dataset {name!r}")
        raise DownloadError(f"cannot download {name!r}: {reason}. Downloadable: {', '.join(PINS)}")
    root = Path(dest).expanduser() if dest is not None else PROJECT_ROOT / "data"
    base = (base_url or os.environ.get(BASE_URL_ENV_VAR) or DEFAULT_BASE_URL).rstrip("/")
    targets = []
    for pinned in PINS[name]:
        target = root / pinned.target
        targets.append(target)
        if target.is_file():
            actual = sha256_of(target)
            if actual == pinned.sha256:
                logger.info("%s is present with the pinned checksum", target)
                continue
            if not force:
                raise DownloadError(f"{target} exists with SHA-256 {actual}, not the pinned {pinned.sha256}; "
                                    "move it away or pass --force to replace it")
        url = f"{base}/{pinned.remote_path}"
        logger.info("downloading %s to %s", url, target)
        fetch_file(url, target, pinned.sha256)
    return targets


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``download`` command's arguments to ``parser``."""
    parser.add_argument("name", help=f"dataset to download: {', '.join(PINS)}")
    parser.add_argument("--dest", default=None,
                        help="data root to write into (default: data/ in the project)")
    parser.add_argument("--base-url", default=None,
                        help=f"host serving /<owner>/<repo>/<commit>/<path> (default: ${BASE_URL_ENV_VAR} "
                             f"or {DEFAULT_BASE_URL})")
    parser.add_argument("--force", action="store_true",
                        help="replace local files whose checksum differs from the pin")


def run(args: argparse.Namespace) -> int:
    """Run the ``download`` command; print each file and return the exit status."""
    try:
        targets = download_dataset(args.name, args.dest, args.base_url, args.force)
    except DownloadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for target in targets:
        print(f"ok  {target}")
    return 0
