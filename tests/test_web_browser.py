"""`yollava serve` in a real browser: Debian's headless Chromium driven by selenium teaches a concept, watches it train, chats, compares.

Run with ``pytest -m browser`` (CI installs ``chromium`` and ``chromium-driver`` with apt). Screenshots of
every tab go to ``$YOLLAVA_SCREENSHOTS`` (default: the test's temporary folder); with
``YOLLAVA_BROWSER_MODEL=toy`` the page runs the pretrained toy LLaVA (the screenshots in ``docs/web/``
were made so: ``YOLLAVA_BROWSER_MODEL=toy YOLLAVA_SCREENSHOTS=docs/web pytest -m browser``).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

# scripts/install.sh installs the web extra (and fails without it), so only a venv made without it
# (the laion one, whose transformers 4.57 refuses gradio 6's huggingface-hub) skips these
pytest.importorskip("gradio", reason="the web extra (gradio) is not installed: pip install -e '.[web]'")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium (the dev extra) is not installed")

from selenium.common.exceptions import WebDriverException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402
from test_web import _free_port  # noqa: E402  (the same helper as the gradio-client tests)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
# The flags keep headless Chromium off the network (no sync, updates, field trials) on a closed machine.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--window-size=1360,1000"]
TRAIN_TIMEOUT_S = 600


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The page on 127.0.0.1 (tiny model, or $YOLLAVA_BROWSER_MODEL) over a small toy world's photos and pool."""
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail(f"the browser test needs Debian's chromium and chromium-driver ({CHROMIUM}, {CHROMEDRIVER}): apt-get install chromium chromium-driver")
    from yollava.config import load_config
    from yollava.data import NegativeSource
    from yollava.models import load_base
    from yollava.toyworld.benchmark import generate_benchmark
    from yollava.web.app import build_app, launch
    from yollava.web.server import WebServer, negative_choices

    root = tmp_path_factory.mktemp("browser")
    os.environ["GRADIO_TEMP_DIR"] = str(root / "gradio")
    model = os.environ.get("YOLLAVA_BROWSER_MODEL", "tiny")
    world = generate_benchmark(root / "world", n_concepts=3, pool_size=300 if model == "tiny" else 1000, n_train=5, progress=False)
    epochs = 1 if model == "tiny" else 4
    config = load_config(overrides=[f"model.name={model}", f"train.runs_dir={root / 'runs'}", f"train.epochs={epochs}",
                                    *(["data.recipe=recognition", "prompt.max_new_tokens=8"] if model == "tiny" else [])])
    # the tiny model learns nothing: a few negatives keep its epoch short
    sizes = {"per_image": 2, "easy": 10} if model == "tiny" else {}
    source = NegativeSource(pool=str(world / "pool"), embedder="toy", **sizes)
    server = WebServer(config, root / "store", load_base(config.model), negative_choices(source))
    app = build_app(server)
    port = _free_port()
    launch(app, "127.0.0.1", port, None, block=False, quiet=True)
    yield {"url": f"http://127.0.0.1:{port}/", "world": world, "model": model, "root": root}
    app.close()
    server.close()


@pytest.fixture(scope="module")
def browser(served):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={served['root'] / 'chromium-profile'}")
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def shots(served, tmp_path_factory) -> Path:
    folder = Path(os.environ.get("YOLLAVA_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _tab(driver, label: str) -> None:
    button = next(b for b in driver.find_elements(By.CSS_SELECTOR, "button[role='tab']") if b.text.strip() == label)
    button.click()
    time.sleep(0.5)


def _text(driver, css: str) -> str:
    return driver.find_element(By.CSS_SELECTOR, css).text


def _wait_text(driver, css: str, fragment: str, timeout: float = 60) -> str:
    WebDriverWait(driver, timeout, poll_frequency=0.5).until(lambda d: fragment in _text(d, css))
    return _text(driver, css)


def _shot(driver, folder: Path, name: str, focus: str | None = None) -> Path:
    """Save the window as ``name``.png, scrolled so that the element ``focus`` (a CSS selector) is in view."""
    if focus:
        driver.execute_script("document.querySelector(arguments[0]).scrollIntoView({block: 'center'})", focus)
        time.sleep(0.3)
    path = folder / f"{name}.png"
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 10_000
    return path


def test_teach_watch_chat_compare_in_chromium(served, browser, shots):
    driver = browser
    world = served["world"]
    driver.get(served["url"])
    WebDriverWait(driver, 60).until(EC.presence_of_element_located((By.ID, "yl-header")))
    assert "Teach the assistant your subject" in _text(driver, "#yl-header")

    # Teach: a name, five photos dropped on the upload, Train
    _tab(driver, "Teach")
    driver.find_element(By.CSS_SELECTOR, "#yl-name textarea, #yl-name input").send_keys("ozzy")
    photos = sorted((world / "train" / "ozzy").glob("*.png"))
    driver.find_element(By.CSS_SELECTOR, "#yl-photos input[type='file']").send_keys("\n".join(str(p) for p in photos))
    _wait_text(driver, "#yl-photos-msg", "5 photo(s) ready")
    driver.find_element(By.ID, "yl-train").click()
    clicked = time.monotonic()
    _wait_text(driver, "#yl-teach-msg", "queued <ozzy> as job 1")
    # the tiny model's single epoch can end between two page refreshes: accept the end as well
    WebDriverWait(driver, TRAIN_TIMEOUT_S, poll_frequency=0.2).until(
        lambda d: any(fragment in _text(d, "#yl-progress") for fragment in ("training epoch", "saved <ozzy>")))
    _shot(driver, shots, "teach-training", focus="#yl-progress")
    progress = _wait_text(driver, "#yl-progress", "saved <ozzy>", timeout=TRAIN_TIMEOUT_S)
    print(f"\nteaching <ozzy> on {served['model']} from 5 photos: {time.monotonic() - clicked:.0f} s from Train to saved")
    assert "100%" in progress and "training recognition" in progress
    assert driver.find_element(By.CSS_SELECTOR, "#yl-progress progress").get_attribute("value") == "1"
    time.sleep(1.5)  # the chart's last points
    _shot(driver, shots, "teach", focus="#yl-progress")

    # Concepts: the new concept in the gallery and the table
    _tab(driver, "Concepts")
    _wait_text(driver, "#yl-table", "ozzy")
    assert "ok" in _text(driver, "#yl-table") and served["model"] in _text(driver, "#yl-table")
    _wait_text(driver, "#yl-details", "<ozzy>")
    _shot(driver, shots, "concepts")

    # Chat: the trained concept is selected; a photo of it; a question
    _tab(driver, "Chat")
    WebDriverWait(driver, 30).until(lambda d: "ozzy" in _text(d, "#yl-chat-concepts"))
    test_photo = sorted((world / "test" / "ozzy").glob("*.png"))[0]
    _upload_image(driver, "yl-chat-photo", test_photo)
    question = driver.find_element(By.CSS_SELECTOR, "#yl-question textarea")
    question.send_keys("Is <ozzy> in this photo?")
    driver.find_element(By.ID, "yl-send").click()
    answer = _wait_bot_answer(driver)
    assert answer
    if served["model"] == "toy":
        assert answer.startswith("Yes")
    _shot(driver, shots, "chat")

    # Compare: soft prompt vs in-context on a photo
    _tab(driver, "Compare")
    _upload_image(driver, "yl-compare-photo", test_photo)
    driver.find_element(By.ID, "yl-compare").click()
    _wait_text(driver, "#yl-soft", "P(Yes)", timeout=120)
    _wait_text(driver, "#yl-context", "P(Yes)", timeout=120)
    assert "personalization tokens" in _text(driver, "#yl-soft")
    assert driver.find_elements(By.CSS_SELECTOR, "#yl-refs img"), "the in-context side shows no reference photo"
    _shot(driver, shots, "compare")


def _upload_image(driver, elem_id: str, path: Path) -> None:
    """Drop a file on the image component ``elem_id`` and wait for its preview."""
    driver.find_element(By.CSS_SELECTOR, f"#{elem_id} input[type='file']").send_keys(str(path))
    WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, f"#{elem_id} img"))


def _wait_bot_answer(driver, timeout: float = 120) -> str:
    def answered(d):
        bots = [m for m in d.find_elements(By.CSS_SELECTOR, "#yl-chatbot [data-testid='bot']") if m.text.strip()]
        return bots[-1].text.strip() if bots else False

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.5).until(answered)
    except WebDriverException as exc:
        raise AssertionError(f"no answer in the chat after {timeout} s: {_text(driver, '#yl-chatbot')!r}") from exc
