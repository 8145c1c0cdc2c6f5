"""End to end against clip-retrieval's own back-end (clip_back) on 127.0.0.1, through ClipClient.

Run in the laion venv: ``.venv-laion/bin/python -m pytest tests/test_retrieval_laion.py -m laion``.
The back-end runs in a subprocess (its own Flask server, only forced onto the loopback address),
serving two indices built here: "web" (URLs on a loopback web server, like LAION) and "local" (a
yollava index folder, served as is). Nothing of the protocol is mocked.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.error import URLError
from urllib.request import urlopen

import numpy as np
import pytest
from PIL import Image, ImageDraw

from yollava.errors import YollavaError

pytestmark = [
    pytest.mark.laion,
    pytest.mark.skipif(importlib.util.find_spec("clip_retrieval") is None,
                       reason="clip-retrieval is not installed (pip install 'yollava[laion]')"),
]

BOOT_TIMEOUT = 240  # clip_back imports torch, open_clip, transformers, pandas... ~30-90 s on 2 loaded cores
# clip_back binds 0.0.0.0 in app.run(); the wrapper only rebinds it to loopback and registers our
# tiny architecture with open_clip, then runs clip_back itself.
SERVER = """
import sys, flask
from yollava.retrieval.embed import register_tiny_config
register_tiny_config()
_run = flask.Flask.run
flask.Flask.run = lambda self, host=None, port=None, **kw: _run(self, host="127.0.0.1", port=port, **kw)
from clip_retrieval.clip_back import clip_back
clip_back(indices_paths=sys.argv[1], port=int(sys.argv[2]), clip_model=sys.argv[3], enable_mclip_option=False,
          use_jit=False, provide_aesthetic_embeddings=False, provide_safety_model=False,
          provide_violence_detector=False, columns_to_return=["url", "caption", "image_path"])
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def scene(path: Path, seed: int) -> Path:
    """A small RGB picture of a few coloured shapes (varied enough for distinct embeddings)."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (48, 48), tuple(int(c) for c in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x, y = rng.integers(0, 36, 2)
        box = (int(x), int(y), int(x + rng.integers(8, 24)), int(y + rng.integers(8, 24)))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


@pytest.fixture(scope="module")
def embedder():
    from yollava.retrieval.embed import load_embedder

    return load_embedder("tiny", device="cpu")


@pytest.fixture(scope="module")
def world(tmp_path_factory, embedder):
    """Positives, a loopback web site, the two index folders and a running clip_back."""
    import faiss
    import pyarrow as pa
    import pyarrow.parquet as pq
    from safetensors.torch import save_file

    from yollava.retrieval.index import build_index

    root = tmp_path_factory.mktemp("laion")
    positives = [scene(root / "pos" / f"p{i}.png", seed=i) for i in range(3)]
    web = root / "web"
    served = [scene(web / f"w{i:02d}.png", seed=100 + i) for i in range(40)]
    (web / "copy_of_p0.png").write_bytes(positives[0].read_bytes())
    (web / "page.jpg").write_text("<html>moved</html>")
    gone = [scene(root / "gone" / f"g{i}.png", seed=200 + i) for i in range(4)]  # indexed, then taken down

    site = ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(web)))
    site.daemon_threads = True
    threading.Thread(target=site.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{site.server_port}"

    rows = [(p, f"{base}/{p.name}") for p in [*served, web / "copy_of_p0.png"]]
    rows += [(g, f"{base}/{g.name}") for g in gone]  # 404 now
    rows.append((scene(root / "x.png", seed=300), f"{base}/page.jpg"))  # the URL serves HTML
    vectors = embedder.embed([p for p, _ in rows], use_cache=False, progress=False).vectors
    assert len(vectors) == len(rows)
    web_index = root / "indices" / "web"
    (web_index / "metadata").mkdir(parents=True)
    flat = faiss.IndexFlatIP(embedder.dim)
    flat.add(vectors)
    faiss.write_index(flat, str(web_index / "image.index"))
    pq.write_table(pa.table({"url": [u for _, u in rows], "caption": [f"picture {p.stem}" for p, _ in rows]}),
                   web_index / "metadata" / "0.parquet")

    local_pool = [scene(root / "local_pool" / f"l{i:02d}.png", seed=400 + i) for i in range(20)]
    build_index(root / "indices" / "local", embedder, images=root / "local_pool", cache_dir=root / "cache", progress=False)

    weights = root / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in embedder.model.state_dict().items()}, str(weights))
    indices = root / "indices.json"
    indices.write_text(json.dumps({"web": str(web_index), "local": str(root / "indices" / "local")}))
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled",
           "NO_ALBUMENTATIONS_UPDATE": "1", "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    log = open(root / "clip_back.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(indices), str(port), f"open_clip:yollava-tiny-clip/{weights}"],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + BOOT_TIMEOUT
        while True:
            if server.poll() is not None:
                pytest.fail(f"clip_back exited with {server.returncode}:\n{(root / 'clip_back.log').read_text()[-3000:]}")
            try:
                with urlopen(f"{url}/indices-list", timeout=2) as response:
                    assert sorted(json.loads(response.read())) == ["local", "web"]
                    break
            except (URLError, ConnectionError, socket.timeout):
                if time.monotonic() > deadline:
                    pytest.fail(f"clip_back did not start within {BOOT_TIMEOUT} s:\n{(root / 'clip_back.log').read_text()[-3000:]}")
                time.sleep(1)
        yield {"root": root, "url": url, "positives": positives, "rows": rows, "vectors": vectors, "local_pool": local_pool}
    finally:
        stop(server)
        log.close()
        site.shutdown()
        site.server_close()


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def stop(process: subprocess.Popen) -> None:
    """SIGTERM the server's process group, SIGKILL it if it lingers."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=15)


def test_service_query_matches_local_ranking(world, embedder, tmp_path):
    from yollava.retrieval.client import ServiceBackend

    backend = ServiceBackend(world["url"], "web", embedder_name=embedder.name, dim=embedder.dim, download_dir=tmp_path)
    query = embedder.embed(world["positives"][1:2], use_cache=False, progress=False).vectors
    hits = backend.query(query, k=10)[0]
    assert 1 <= len(hits) <= 10
    scores = world["vectors"] @ query[0]
    expected = [world["rows"][i][1] for i in np.argsort(-scores)]
    returned = [h.source for h in hits]
    # clip_back drops near-duplicate results (cosine >= 0.94), so the hits are the local ranking with gaps.
    assert returned[0] == expected[0]
    positions = [expected.index(u) for u in returned]
    assert positions == sorted(positions)
    by_url = {u: float(scores[i]) for i, (_, u) in enumerate(world["rows"])}
    np.testing.assert_allclose([h.score for h in hits], [by_url[u] for u in returned], atol=1e-4)
    assert all(h.caption.startswith("picture ") for h in hits) and [h.rank for h in hits] == list(range(1, len(hits) + 1))


def test_retrieve_through_the_service_end_to_end(world, embedder, tmp_path):
    from yollava.retrieval.mine import read_negatives, retrieve_negatives

    result = retrieve_negatives("bo", world["root"] / "pos", service=world["url"], index_name="web", embedder="tiny",
                                per_image=12, n_easy=5, store=tmp_path / "store", cache_dir=tmp_path / "cache",
                                timeout=5, progress=False)
    hard = [r for r in result.records if r.kind == "hard"]
    assert hard and all(r.source.startswith("http://127.0.0.1:") for r in result.records)
    sources = {r.source.rsplit("/", 1)[-1] for r in result.records}
    assert "copy_of_p0.png" not in sources  # the subject's own photo is never a negative
    assert not sources & {"page.jpg", "g0.png", "g1.png", "g2.png", "g3.png"}
    assert len({r.sha256 for r in result.records}) == len(result.records)
    assert all(r.index == f"service:{world['url']}/knn-service#web" for r in result.records)
    stored = read_negatives("bo", tmp_path / "store")
    assert all(p.is_file() for p in stored.hard + stored.easy)
    # k = 3·12 + 10 covers the whole index, so the taken-down URLs and the HTML page were tried.
    log = (tmp_path / "cache" / "downloads" / "downloads.jsonl").read_text()
    assert "HTTP 404" in log and "not an image" in log


def test_a_yollava_index_is_served_by_clip_back_as_is(world, embedder, tmp_path):
    from yollava.retrieval.client import ServiceBackend

    backend = ServiceBackend(world["url"], "local", embedder_name=embedder.name, dim=embedder.dim, download_dir=tmp_path)
    target = world["local_pool"][7]
    hits = backend.query(embedder.embed([target], use_cache=False, progress=False).vectors, k=3)[0]
    assert Path(hits[0].source) == target.resolve() and hits[0].score > 0.999
    fetched = backend.fetch(hits[:1])
    assert isinstance(fetched[hits[0].source], Path)  # decoded from clip_back's inline base64 image


def test_service_errors_are_one_line(world, embedder, tmp_path):
    from yollava.retrieval.client import ServiceBackend

    with pytest.raises(YollavaError, match="--index-name laion5B: not served by .*it serves: local, web"):
        ServiceBackend(world["url"], "laion5B", embedder_name="tiny", dim=64, download_dir=tmp_path)
    with pytest.raises(YollavaError, match="unreachable") as info:
        ServiceBackend(f"http://127.0.0.1:{free_port()}", "web", embedder_name="tiny", dim=64, download_dir=tmp_path)
    assert "\n" not in str(info.value)
    wrong = ServiceBackend(world["url"], "web", embedder_name="colour", dim=12, download_dir=tmp_path)
    with pytest.raises(YollavaError, match="error from the back-end.*--embedder 'colour' \\(12-d\\)"):
        wrong.query(np.ones((1, 12), dtype=np.float32) / np.sqrt(12), k=3)
