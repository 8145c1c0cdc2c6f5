"""Downloading retrieved URLs from a loopback HTTP server: dead links, non-images, size limit, retries, resume."""

from __future__ import annotations

import io
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from yollava.retrieval.client import DOWNLOAD_LOG, download_images, knn_url


def png_bytes(colour: tuple[int, int, int], size: int = 16) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def noisy_png(size: int) -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise((size, size), 80).convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


class Site:
    """A loopback web server with scripted answers; counts requests per path."""

    def __init__(self):
        self.hits: Counter = Counter()
        self.routes = {
            "/red.png": lambda n: (200, png_bytes((255, 0, 0)), {}),
            "/red-again.png": lambda n: (200, png_bytes((255, 0, 0)), {}),
            "/blue": lambda n: (200, png_bytes((0, 0, 255)), {"Content-Type": "image/png"}),
            "/text.jpg": lambda n: (200, b"<html>not an image</html>", {}),
            "/huge.png": lambda n: (200, noisy_png(200), {}),
            "/to-file": lambda n: (302, b"", {"Location": "file:///etc/passwd"}),
            "/flaky.png": lambda n: (503, b"busy", {}) if n == 1 else (200, png_bytes((0, 255, 0)), {}),
            "/slow.png": lambda n: (time.sleep(1.5), (200, png_bytes((9, 9, 9)), {}))[1],
        }
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                site.hits[self.path] += 1
                route = site.routes.get(self.path)
                status, body, headers = route(site.hits[self.path]) if route else (404, b"no", {})
                try:
                    self.send_response(status)
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def site():
    with Site() as running:
        yield running


def test_downloads_validate_dedup_and_report_failures(site, tmp_path):
    urls = [f"{site.base}{p}" for p in ("/red.png", "/red-again.png", "/blue", "/text.jpg", "/huge.png", "/to-file",
                                        "/flaky.png", "/dead.png", "/slow.png")]
    urls += ["file:///etc/passwd", "http://nonexistent.invalid/x.png"]
    started = time.monotonic()
    report = download_images(urls, tmp_path / "dl", timeout=0.5, retries=1, max_bytes=20_000, workers=4)
    assert time.monotonic() - started < 20
    ok = {u.rsplit("/", 1)[-1] for u in report.files}
    assert ok == {"red.png", "red-again.png", "blue", "flaky.png"}
    assert report.files[f"{site.base}/red.png"] == report.files[f"{site.base}/red-again.png"]  # same bytes, one file
    assert report.files[f"{site.base}/blue"].suffix == ".png"
    failures = {u.rsplit("/", 1)[-1]: why for u, why in report.failures.items()}
    assert failures["text.jpg"] == "not an image"
    assert failures["huge.png"].startswith("too large")
    assert failures["to-file"] == "HTTP 302"
    assert failures["dead.png"] == "HTTP 404"
    assert failures["slow.png"].startswith("timeout")
    assert failures["passwd"] == "not an http URL"
    assert site.hits["/flaky.png"] == 2 and site.hits["/dead.png"] == 1  # 5xx retried, 404 not
    assert "4 of 11 downloaded; 7 failed" in report.summary()
    assert not list((tmp_path / "dl").glob(".*.part"))


def test_a_rerun_fetches_only_what_failed_transiently(site, tmp_path):
    urls = [f"{site.base}{p}" for p in ("/red.png", "/dead.png", "/text.jpg", "/slow.png")]
    download_images(urls, tmp_path / "dl", timeout=0.5, retries=0)
    before = Counter(site.hits)
    again = download_images(urls, tmp_path / "dl", timeout=0.5, retries=0)
    assert site.hits - before == Counter({"/slow.png": 1})
    assert set(again.files) == {urls[0]} and again.failures[urls[1]] == "HTTP 404"
    assert len((tmp_path / "dl" / DOWNLOAD_LOG).read_text().splitlines()) == 5


def test_inline_images_and_endpoint_urls(tmp_path):
    import base64

    payload = base64.b64encode(png_bytes((1, 2, 3))).decode()
    report = download_images(["svc#id=1", "svc#id=2"], tmp_path, inline={"svc#id=1": payload, "svc#id=2": "@@@"})
    assert set(report.files) == {"svc#id=1"} and report.failures == {"svc#id=2": "bad inline image"}
    assert knn_url("http://h:1234") == knn_url("http://h:1234/knn-service/") == "http://h:1234/knn-service"
