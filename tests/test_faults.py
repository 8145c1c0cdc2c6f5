"""Fault injection at every write of every writing command: a reader sees the old or the new artifact, never a broken one.

For each command (train's final save, retrieve, build-data, index build, index add, toy generate)
the N-th filesystem write is made to fail, for every N the command performs: once by raising
``OSError`` in-process, once by ``os._exit`` in a child (a kill: no cleanup runs). After each, the
artifact is read back through the library's readers (their recovery runs), a re-run must complete
and leave the new artifact and no staging, backup or lock files. See tests/faults.py for what
counts as a write.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

import fault_scenarios
from faults import EXIT_CODE, Injector, copy_workspace, count_points, leftovers, run_killed
from yollava.errors import YollavaError

SCENARIOS = fault_scenarios.SCENARIOS
# Fewer points would mean the injector no longer sees the command's writes.
MIN_POINTS = {"train-save": 40, "retrieve": 30, "build-data": 15, "index-build": 20, "index-add": 20, "toy-generate": 40}
COUNTS_FILE = os.environ.get("YOLLAVA_FAULT_COUNTS")  # optional: where to record the counts (JSON)


@pytest.fixture(scope="module")
def memory_root(tmp_path_factory):
    """Workspaces in RAM (/dev/shm) where there is one: the sweep runs each command ~4 times per write
    point and every run fsyncs ~20 times, which costs seconds per scenario on a real disk."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        root = Path(tempfile.mkdtemp(prefix="yollava-faults-", dir=shm))
        yield root
        shutil.rmtree(root, ignore_errors=True)
    else:
        yield tmp_path_factory.mktemp("faults")


@pytest.fixture
def tmp_path(memory_root, request):  # noqa: F811  (the sweep's scratch space, in RAM when possible)
    folder = memory_root / request.node.name.replace("[", "_").replace("]", "")
    folder.mkdir()
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def template(memory_root):
    """Each scenario's workspace with the old artifact, prepared once."""
    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            folder = memory_root / "templates" / name
            folder.mkdir(parents=True)
            SCENARIOS[name].prepare(folder)
            made[name] = folder
        return made[name]

    return get


def _points(name: str, template: Path, scratch: Path) -> tuple[list[tuple[str, str]], object, object]:
    scenario = SCENARIOS[name]
    old = scenario.read(template)
    ws = copy_workspace(template, scratch)
    points = count_points(lambda: scenario.command(ws), [ws])
    new = scenario.read(ws)
    assert old != new, f"{name}: the command must change the artifact for the test to tell old from new"
    assert len(points) >= MIN_POINTS[name], f"{name}: only {len(points)} write points seen"
    if COUNTS_FILE:
        counts = json.loads(Path(COUNTS_FILE).read_text()) if Path(COUNTS_FILE).is_file() else {}
        counts[name] = len(points)
        Path(COUNTS_FILE).write_text(json.dumps(counts, indent=2, sort_keys=True))
    return points, old, new


def _after_fault(name: str, ws: Path, n: int, point: tuple[str, str], old: object, new: object) -> object:
    """What a reader sees after the fault; then a re-run must complete cleanly."""
    scenario = SCENARIOS[name]
    seen = scenario.read(ws)
    assert seen in (old, new), f"{name}: fault #{n} at {point} left a third state"
    scenario.command(ws)
    assert scenario.read(ws) == new, f"{name}: the re-run after fault #{n} at {point} did not write the new version"
    assert leftovers(ws, scenario.skip) == [], f"{name}: fault #{n} at {point}"
    return seen


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_a_failed_write_changes_nothing_and_says_so_in_one_line(name, template, tmp_path):
    points, old, new = _points(name, template(name), tmp_path / "count")
    for n, point in enumerate(points, 1):
        ws = copy_workspace(template(name), tmp_path / "ws")
        injector = Injector([ws], fail_at=n)
        message = None
        with injector.installed():
            try:
                SCENARIOS[name].command(ws)
            except YollavaError as exc:
                message = str(exc)
        assert injector.fired, f"{name}: fault #{n} at {point} was never reached"
        seen = _after_fault(name, ws, n, point, old, new)
        if message is None:
            # only tidying up after the swap may fail without failing the command
            assert seen == new, f"{name}: fault #{n} at {point} was swallowed but the old version is still there"
        else:
            assert "\n" not in message and "nothing was changed" in message and "(EIO)" in message, message
            assert seen == old, f"{name}: said nothing was changed after fault #{n} at {point}, but a reader sees the new version"


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_a_kill_at_any_write_leaves_old_or_new(name, template, tmp_path):
    points, old, new = _points(name, template(name), tmp_path / "count")
    seen = set()
    for n, point in enumerate(points, 1):
        ws = copy_workspace(template(name), tmp_path / "ws")
        code = run_killed(name, ws, n, [ws])
        assert code == EXIT_CODE, f"{name}: the child with fault #{n} at {point} exited with {code}"
        seen.add(_after_fault(name, ws, n, point, old, new) == new)
    assert seen == {False, True}  # kills before the swap keep the old version, kills after it the new one
