"""Download a file from a list of mirrors, verified by its SHA-256 (standard library only).

Each mirror is tried in order. The data streams through :func:`scratchpilot.util.files.atomic_write`,
hashed as it arrives; only a complete file with the expected checksum replaces the destination, so an
interrupted, truncated or corrupted download never leaves a file behind.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from ..util.files import atomic_write
from ..util.progress import progress as progress_bar

log = logging.getLogger(__name__)

_BLOCK = 1 << 16


class DownloadError(OSError):
    """No mirror gave the file; the message lists what went wrong with each one."""


class ChecksumError(DownloadError):
    """The downloaded data did not have the expected SHA-256."""


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def download(url_or_urls: str | Sequence[str], dest: str | os.PathLike, sha256: str, progress: bool = True,
             timeout: float = 30.0) -> Path:
    """Fetch ``dest`` from the first mirror that serves it with the expected checksum.

    Parameters
    ----------
    url_or_urls : one URL or several mirrors of the same file, tried in order.
    dest : where the file goes; its folder is created. An existing file with the right checksum is
        kept and nothing is downloaded.
    sha256 : expected hex SHA-256 of the file.
    progress : show a progress bar on stderr (tqdm if installed, else a plain counter).
    timeout : seconds to wait for a connection or for data, per mirror.

    Returns
    -------
    Path of the verified file.

    Raises
    ------
    DownloadError
        When every mirror failed; the message names each URL and its failure (HTTP error, network
        error, truncated transfer or checksum mismatch). No partial file is left behind.
    """
    urls = [url_or_urls] if isinstance(url_or_urls, str) else list(url_or_urls)
    if not urls:
        raise ValueError("download needs at least one URL")
    dest = Path(dest)
    sha256 = sha256.lower()
    if dest.is_file() and sha256_file(dest) == sha256:
        return dest
    # imported here, not at the top, to keep `import scratchpilot.data` quick (urllib pulls in ssl, email...)
    import http.client
    import urllib.error

    dest.parent.mkdir(parents=True, exist_ok=True)
    failures = []
    for url in urls:
        try:
            _fetch(url, dest, sha256, progress, timeout)
            return dest
        except (OSError, http.client.HTTPException, ValueError) as exc:
            # OSError covers URLError, HTTPError, timeouts, refused connections and our own errors
            if isinstance(exc, urllib.error.HTTPError):
                reason = f"HTTP {exc.code} {exc.reason}"
            elif isinstance(exc, urllib.error.URLError):
                reason = exc.reason
            else:
                reason = exc
            failures.append(f"{url}: {reason}")
            log.warning("download of %s from %s failed: %s", dest.name, url, reason)
    raise DownloadError(f"could not download {dest.name} from any of {len(urls)} mirror(s):\n  "
                        + "\n  ".join(failures))


def _fetch(url: str, dest: Path, sha256: str, progress: bool, timeout: float) -> None:
    import urllib.request

    request = urllib.request.Request(url, headers={"User-Agent": "scratchpilot"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        total = response.length  # None when the server sends no Content-Length
        digest, received = hashlib.sha256(), 0
        # raising inside the block removes the temp file and leaves ``dest`` as it was
        with atomic_write(dest, compress=False) as out, \
                progress_bar(total=total, desc=dest.name, enabled=progress, byte_units=True, leave=True) as bar:
            while block := response.read(_BLOCK):
                out.write(block)
                digest.update(block)
                received += len(block)
                bar.update(len(block))
            if total is not None and received != total:
                raise DownloadError(f"truncated: received {received} of {total} bytes")
            if digest.hexdigest() != sha256:
                raise ChecksumError(f"checksum mismatch: sha256 of the {received} bytes received is "
                                    f"{digest.hexdigest()}, expected {sha256}")
