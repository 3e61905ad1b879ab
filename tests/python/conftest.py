"""Fixtures of the SDK tests: a private $ALCOVE_HOME per test (removed with
everything in it afterwards), a rootfs built once, and the alcove CLI of
the installed wheel to check what the SDK did."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import tempfile
from typing import Any, Callable, Iterator, List

import pytest

import alcove

CLI = pathlib.Path(alcove.__file__).parent / "bin" / "alcove"


def pytest_sessionstart(session: pytest.Session) -> None:
    if os.geteuid() != 0:
        raise pytest.UsageError("the SDK tests start jail sandboxes and must run as root")


@pytest.fixture(scope="session")
def rootfs() -> str:
    """alcove's default rootfs, built once by a first sandbox of the SDK."""
    home = os.environ.get("ALCOVE_SDK_TEST_ROOTFS_HOME") or tempfile.mkdtemp(prefix="alcv-py-rootfs-", dir="/tmp")
    root = pathlib.Path(home) / "rootfs" / "default" / "root"
    if not root.is_dir():
        with alcove.Sandbox.create("warmup", home=home, backend="jail") as sb:
            assert sb.exec(["true"]).ok
    assert root.is_dir(), root
    return str(root)


@pytest.fixture
def home() -> Iterator[str]:
    d = tempfile.mkdtemp(prefix="alcv-py-", dir="/tmp")
    yield d
    # What a failed test left: removed, so no sandbox outlives the run.
    for info in alcove.list(home=d):
        cli(d, "rm", "-f", info.name)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def make(home: str, rootfs: str) -> Callable[..., alcove.Sandbox]:
    """Creates a jail sandbox in the test's home."""

    def create(name: Any = None, **kw: Any) -> alcove.Sandbox:
        kw.setdefault("rootfs", rootfs)
        kw.setdefault("backend", "jail")
        return alcove.Sandbox.create(name, home=home, **kw)

    return create


def cli(home: str, *args: str) -> subprocess.CompletedProcess:
    """The wheel's alcove CLI on the installation at ``home``."""
    env = {**os.environ, "ALCOVE_HOME": home, "NO_COLOR": "1"}
    return subprocess.run([str(CLI), *args], env=env, capture_output=True, timeout=120)


def ps(home: str) -> List[dict]:
    out = cli(home, "ps", "--all", "--json")
    assert out.returncode == 0, out
    return json.loads(out.stdout)


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
