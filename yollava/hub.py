"""The Hugging Face hub as the real models reach it: offline switch, one quick reachability probe, short reasons."""

from __future__ import annotations

import logging
import socket
from contextlib import contextmanager
from typing import Iterator
from urllib.parse import urlparse

log = logging.getLogger(__name__)

# One TCP connect decides whether the hub is reachable: huggingface_hub otherwise retries each
# request 5 times with back-off (about a minute) before failing, and logs every retry.
PROBE_TIMEOUT_S = 5.0


def is_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def endpoint_host() -> tuple[str, int]:
    """Host and port of the hub endpoint (``HF_ENDPOINT`` or huggingface.co)."""
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    return url.hostname or "huggingface.co", url.port or (443 if url.scheme != "http" else 80)


def reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """One TCP connection to the hub endpoint: True when it opens within ``timeout`` seconds."""
    host, port = endpoint_host()
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def unavailable_reason() -> str | None:
    """Why the hub cannot be used now (offline switch, or no connection), or None when it can."""
    if is_offline():
        return "HF_HUB_OFFLINE is set"
    if not reachable():
        host, _ = endpoint_host()
        return f"{host} cannot be reached"
    return None


@contextmanager
def offline() -> Iterator[None]:
    """Treat the hub as offline inside the block (files already in the local cache load without a request)."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def cached_file(repo_id: str, filename: str, revision: str | None = None) -> str | None:
    """Path of ``filename`` of ``repo_id`` in the local hub cache, or None."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename, revision=revision)
    return found if isinstance(found, str) else None


def short_reason(exc: BaseException, limit: int = 160) -> str:
    """An exception's message on one line, cut at a word boundary (never mid-word)."""
    text = " ".join(str(exc).split()) or exc.__class__.__name__
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0].rstrip(",;:")
    return cut + " ..."
