"""A clip-retrieval service as a backend: kNN by locally computed embeddings, then safe downloads."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence
from urllib.error import HTTPError, URLError
from urllib.parse import urlsplit, urlunsplit
from urllib.request import HTTPRedirectHandler, Request, build_opener

import numpy as np
from PIL import Image

from yollava.errors import YollavaError
from yollava.images import check_image
from yollava.retrieval.index import Hit

log = logging.getLogger(__name__)

LAION_EXTRA_HINT = "pip install 'yollava[laion]'"
DOWNLOAD_LOG = "downloads.jsonl"
USER_AGENT = "yollava/0.1 (+hard-negative retrieval; img2dataset-like)"
DEFAULT_MAX_BYTES = 20_000_000
# Failures worth retrying: the server or the network may recover; 4xx answers will not.
RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
# Extension of a stored download from the decoded format, not the URL (URLs often have none).
FORMAT_SUFFIX = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tif"}


def require_clip_client():
    """Import clip-retrieval's ``ClipClient`` and ``Modality`` (the optional ``laion`` extra).

    Raises:
        YollavaError: clip-retrieval is not installed or fails to import.
    """
    try:
        from clip_retrieval.clip_client import ClipClient, Modality
    except ImportError as exc:
        raise YollavaError(f"--service needs clip-retrieval ({exc.__class__.__name__}: {exc}); install it with {LAION_EXTRA_HINT}") from exc
    return ClipClient, Modality


@dataclass
class DownloadReport:
    """Where each URL ended up: a local file, or a short failure reason."""

    files: dict[str, Path] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        """One line of counts, e.g. ``"8 of 10 downloaded; 2 failed: HTTP 404 x1, not an image x1"``."""
        total = len(self.files) + len(self.failures)
        text = f"{len(self.files)} of {total} downloaded"
        if self.failures:
            reasons = Counter(reason.split(" (")[0] for reason in self.failures.values())
            text += f"; {len(self.failures)} failed: " + ", ".join(f"{r} x{c}" for r, c in reasons.most_common())
        return text


class _HttpOnlyRedirects(HTTPRedirectHandler):
    """Follow redirects to http(s) only: a service must not steer us to file:// or ftp:// URLs."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urlsplit(newurl).scheme not in ("http", "https"):
            raise HTTPError(newurl, code, "redirect to a non-http URL refused", headers, fp)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = build_opener(_HttpOnlyRedirects)


class _Failure(Exception):
    """A failed download; ``permanent`` ones are remembered so re-runs do not retry them."""

    def __init__(self, reason: str, permanent: bool):
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent


def _fetch_bytes(url: str, timeout: float, max_bytes: int) -> bytes:
    """One GET with a per-read timeout, an overall deadline and a size cap."""
    deadline = time.monotonic() + 4 * timeout
    try:
        with _OPENER.open(Request(url, headers={"User-Agent": USER_AGENT}), timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > max_bytes:
                raise _Failure(f"too large ({int(length)} bytes > {max_bytes})", True)
            chunks, size = [], 0
            while block := response.read(1 << 16):
                size += len(block)
                if size > max_bytes:
                    raise _Failure(f"too large (> {max_bytes} bytes)", True)
                if time.monotonic() > deadline:
                    raise _Failure("timeout (slow transfer)", False)
                chunks.append(block)
            return b"".join(chunks)
    except HTTPError as exc:
        raise _Failure(f"HTTP {exc.code}", exc.code not in RETRY_STATUS) from exc
    except (socket.timeout, TimeoutError) as exc:
        raise _Failure("timeout", False) from exc
    except URLError as exc:
        reason = exc.reason
        permanent = isinstance(reason, socket.gaierror)
        raise _Failure("unresolvable host" if permanent else f"unreachable ({str(reason)[:60]})", permanent) from exc
    except (ConnectionError, OSError, ValueError) as exc:
        raise _Failure(f"unreachable ({exc.__class__.__name__})", False) from exc


def _store_image(data: bytes, dest: Path) -> Path:
    """Validate downloaded bytes as an image and store them content-addressed; return the file."""
    tmp = dest / f".{uuid.uuid4().hex}.part"
    tmp.write_bytes(data)
    try:
        reason = check_image(tmp)
        if reason is not None:
            raise _Failure(reason, True)
        with Image.open(tmp) as image:
            suffix = FORMAT_SUFFIX.get(image.format or "", ".img")
        final = dest / f"{hashlib.sha256(data).hexdigest()}{suffix}"
        if not final.exists():
            os.replace(tmp, final)
        return final
    finally:
        tmp.unlink(missing_ok=True)


def download_images(
    urls: Sequence[str],
    dest: str | Path,
    *,
    timeout: float = 10.0,
    retries: int = 2,
    max_bytes: int = DEFAULT_MAX_BYTES,
    workers: int = 8,
    inline: dict[str, str] | None = None,
) -> DownloadReport:
    """Download image URLs into ``dest`` (content-addressed), resumably.

    Each URL is fetched with a timeout, retried with backoff on transient failures, capped at
    ``max_bytes`` and fully decoded (:func:`~yollava.images.check_image`). Byte-identical images
    share one file. Outcomes are appended to ``dest/downloads.jsonl``; a re-run reuses the files and
    skips permanent failures (HTTP 4xx, not an image, too large) without refetching.

    Args:
        urls: http(s) URLs (others fail as "not an http URL").
        dest: download folder (created).
        timeout: seconds per connect/read; a whole transfer gets at most 4x this.
        retries: extra attempts after a transient failure.
        max_bytes: size limit per image.
        workers: parallel downloads.
        inline: base64 image payloads by source, used instead of downloading (clip_back returns
            one for indices of local files).

    Returns:
        A :class:`DownloadReport`.
    """
    from yollava.storage import append_jsonl

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    log_file = dest / DOWNLOAD_LOG
    report = DownloadReport()
    known: dict[str, dict[str, Any]] = {}
    if log_file.is_file():
        for line in log_file.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
                known[record["url"]] = record
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a torn last line from a crash; the URL is simply fetched again
    todo = []
    for url in dict.fromkeys(urls):
        record = known.get(url)
        if record and record.get("file") and (dest / record["file"]).is_file():
            report.files[url] = dest / record["file"]
        elif record and record.get("permanent"):
            report.failures[url] = record["error"]
        else:
            todo.append(url)
    inline = inline or {}
    lock = threading.Lock()

    def one(url: str) -> None:
        try:
            if url in inline:
                try:
                    data = base64.b64decode(inline[url], validate=True)
                except (binascii.Error, ValueError) as exc:
                    raise _Failure("bad inline image", True) from exc
            elif urlsplit(url).scheme not in ("http", "https"):
                raise _Failure("not an http URL", True)
            else:
                for attempt in range(retries + 1):
                    try:
                        data = _fetch_bytes(url, timeout, max_bytes)
                        break
                    except _Failure as failure:
                        if failure.permanent or attempt == retries:
                            raise
                        time.sleep(0.5 * 2**attempt)
            path = _store_image(data, dest)
            record = {"url": url, "file": path.name}
            with lock:
                report.files[url] = path
        except _Failure as failure:
            record = {"url": url, "error": failure.reason, "permanent": failure.permanent}
            with lock:
                report.failures[url] = failure.reason
        with lock:
            append_jsonl(log_file, record)

    if todo:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            list(pool.map(one, todo))
    return report


def _call_with_timeout(fn: Callable[[], Any], timeout: float, what: str) -> Any:
    """Run ``fn`` in a daemon thread: ClipClient hard-codes a one-hour request timeout."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise YollavaError(f"{what}: no answer within {timeout:.0f} s; check the service or raise the query timeout")
    if "error" in box:
        raise box["error"]
    return box["value"]


def _base_url(url: str) -> str:
    """The service root of a knn endpoint URL (``http://host:1234/knn-service`` -> ``http://host:1234``)."""
    parts = urlsplit(url)
    path = parts.path.rstrip("/")
    if path.endswith("/knn-service"):
        path = path[: -len("/knn-service")]
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def knn_url(url: str) -> str:
    """The knn endpoint for a service given by its root or its endpoint URL."""
    return _base_url(url) + "/knn-service"


class ServiceBackend:
    """kNN over a clip-retrieval back-end (``clip_back``), queried with local embeddings.

    The user's photos never leave the machine: only their embeddings are sent. Returned URLs
    are downloaded into ``download_dir`` (see :func:`download_images`).

    Args:
        url: the back-end's root or its ``/knn-service`` endpoint.
        index_name: an index the back-end serves (``--index-name``).
        embedder_name: the local embedder (named in error messages).
        dim: its embedding dimension (random directions for :meth:`sample`).
        download_dir: where downloads are stored and remembered.
        timeout: seconds per download connect/read and for the index-name check.
        query_timeout: seconds per kNN request.
        retries: extra download attempts after transient failures.
        max_bytes: size limit per downloaded image.
        workers: parallel downloads.
        safety: ask the back-end to drop NSFW and violent results (when it has the models).

    Raises:
        YollavaError: bad URL, missing index name, clip-retrieval not installed, service
            unreachable, or the index name is not served.
    """

    def __init__(
        self,
        url: str,
        index_name: str,
        *,
        embedder_name: str,
        dim: int,
        download_dir: str | Path,
        timeout: float = 10.0,
        query_timeout: float = 120.0,
        retries: int = 2,
        max_bytes: int = DEFAULT_MAX_BYTES,
        workers: int = 8,
        safety: bool = True,
    ):
        if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).netloc:
            raise YollavaError(f"--service {url}: not an http(s) URL (e.g. http://127.0.0.1:1234/knn-service)")
        if not index_name:
            raise YollavaError("--service needs --index-name (the name of an index the back-end serves)")
        self.url = knn_url(url)
        self.index_name = index_name
        self.description = f"service:{self.url}#{index_name}"
        # A service does not say which model made its index: only the query's dimension is ours.
        self.embedder_name = None
        self.embedder_fingerprint = None
        self.dim = dim
        self.query_embedder = embedder_name
        self.download_dir = Path(download_dir)
        self.timeout = timeout
        self.query_timeout = query_timeout
        self.retries = retries
        self.max_bytes = max_bytes
        self.workers = workers
        self.safety = safety
        self._inline: dict[str, str] = {}
        self.last_download: DownloadReport | None = None
        require_clip_client()
        self._check_index_name()

    def _check_index_name(self) -> None:
        """Ask ``/indices-list`` (a clip_back endpoint) so a wrong URL or name fails early and clearly."""
        listing = _base_url(self.url) + "/indices-list"
        try:
            with _OPENER.open(Request(listing, headers={"User-Agent": USER_AGENT}), timeout=self.timeout) as response:
                names = json.loads(response.read(1 << 20).decode("utf-8"))
        except HTTPError as exc:
            if exc.code == 404:
                log.info("%s has no /indices-list; the index name is checked at the first query", _base_url(self.url))
                return
            raise YollavaError(f"--service {self.url}: HTTP {exc.code} from {listing}; check the URL") from exc
        except (URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise YollavaError(f"--service {self.url}: unreachable ({str(reason)[:80]}); check the URL and that the back-end runs") from exc
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise YollavaError(f"--service {self.url}: {listing} did not answer JSON; is this a clip-retrieval back-end?") from exc
        if isinstance(names, list) and self.index_name not in names:
            raise YollavaError(f"--index-name {self.index_name}: not served by {_base_url(self.url)}; it serves: {', '.join(sorted(map(str, names))) or 'nothing'}")

    def _query_one(self, vector: np.ndarray, k: int) -> list[dict[str, Any]]:
        import requests

        ClipClient, Modality = require_clip_client()
        client = ClipClient(
            url=self.url, indice_name=self.index_name, modality=Modality.IMAGE, num_images=k,
            # Aesthetic re-weighting would pull neighbours toward "pretty", not toward the subject.
            aesthetic_weight=0.0, deduplicate=True, use_safety_model=self.safety, use_violence_detector=self.safety,
        )
        try:
            results = _call_with_timeout(lambda: client.query(embedding_input=vector.tolist()), self.query_timeout,
                                         f"--service {self.url}")
        except YollavaError:
            raise
        except Exception as exc:
            if isinstance(exc, requests.exceptions.ConnectionError):
                raise YollavaError(f"--service {self.url}: unreachable ({exc.__class__.__name__}); check the URL and that the back-end runs") from exc
            if isinstance(exc, ValueError):  # requests' JSONDecodeError: an HTML error page
                raise YollavaError(f"--service {self.url}: answered with an error page, not JSON; check the URL") from exc
            raise YollavaError(f"--service {self.url}: query failed ({exc.__class__.__name__}: {str(exc)[:100]})") from exc
        if isinstance(results, dict):
            message = results.get("message") or results.get("error") or json.dumps(results)[:100]
            raise YollavaError(
                f"--service {self.url}: error from the back-end ({message}); check --index-name and that --embedder "
                f"'{self.query_embedder}' ({len(vector)}-d) matches the model of index '{self.index_name}'"
            )
        if not isinstance(results, list):
            raise YollavaError(f"--service {self.url}: unexpected answer ({type(results).__name__}); is this a clip-retrieval back-end?")
        return results

    def _hits(self, results: list[dict[str, Any]], q: int) -> list[Hit]:
        hits = []
        for item in results:
            if not isinstance(item, dict):
                continue
            source = item.get("url") or item.get("image_path")
            if not source and item.get("image"):
                source = f"{self.description}#id={item.get('id')}"
            if not source:
                continue
            if item.get("image"):
                self._inline[source] = item["image"]
            caption = item.get("caption")
            hits.append(Hit(source=str(source), score=float(item.get("similarity", 0.0)), rank=len(hits) + 1, query=q,
                            caption=str(caption) if caption is not None else None))
        return hits

    def query(self, embeddings: np.ndarray, k: int) -> list[list[Hit]]:
        """The ``k`` nearest images of each row, as URLs (deduplicated and safety-filtered by the back-end).

        Raises:
            YollavaError: unreachable service, timeout, HTTP/back-end error, wrong index name.
        """
        embeddings = np.atleast_2d(np.asarray(embeddings, dtype=np.float32))
        out = [self._hits(self._query_one(vector, k), q) for q, vector in enumerate(embeddings)]
        empty = sum(1 for hits in out if not hits)
        if empty:
            log.warning("%s returned no result for %d of %d queries", self.description, empty, len(out))
        return out

    def sample(self, n: int, seed: int) -> list[Hit]:
        """About ``n`` images around random directions of the embedding space (seeded).

        A kNN service cannot draw uniformly; neighbours of random unit vectors are unrelated to
        the subject, which is what easy negatives need.
        """
        rng = np.random.default_rng(seed)
        n_queries = max(1, math.ceil(n / 10))
        directions = rng.standard_normal((n_queries, self.dim)).astype(np.float32)
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        # Twice what is needed: the back-end drops near-duplicate results, mining drops more.
        per_query = 2 * math.ceil(n / n_queries)
        hits = [h for q, vector in enumerate(directions) for h in self._hits(self._query_one(vector, per_query), q)]
        seen: dict[str, Hit] = {}
        for hit in hits:
            seen.setdefault(hit.source, Hit(hit.source, hit.score, 0, -1, None, hit.caption))
        return list(seen.values())[:n]

    def fetch(self, hits: Sequence[Hit]) -> dict[str, Path | str]:
        """Download the hits' URLs (or decode inline images); failures map to a reason."""
        sources = list(dict.fromkeys(h.source for h in hits))
        report = download_images(sources, self.download_dir, timeout=self.timeout, retries=self.retries,
                                 max_bytes=self.max_bytes, workers=self.workers,
                                 inline={s: self._inline[s] for s in sources if s in self._inline})
        self.last_download = report
        if report.failures:
            log.warning("%s: %s", self.description, report.summary())
        return {**report.failures, **report.files}
