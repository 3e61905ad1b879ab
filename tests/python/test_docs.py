"""The quick start of docs/python.md runs as printed."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "python.md"


def test_the_quick_start_runs(rootfs) -> None:
    code = re.search(r"## Quick start\n\n```python\n(.*?)```", DOC.read_text(), re.S).group(1)
    assert len(code.strip().splitlines()) <= 10
    # The installation whose default rootfs the session built, as a
    # newcomer's ~/.alcove would have it after a first sandbox.
    home = pathlib.Path(rootfs).parents[2]
    env = {**os.environ, "ALCOVE_HOME": str(home)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=300, text=True)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[:2] == ["b'42\\n' 0", "b'hello'"], out.stdout
    assert [line.split()[0] for line in lines[2:6]] == ["started", "stdout", "stderr", "exit"], out.stdout
    # The sandbox is gone once the block ended.
    assert lines[6:] == ["[]"], out.stdout
