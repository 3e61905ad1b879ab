"""alcove: sandboxes for running untrusted code, from Python.

Quick start::

    import alcove

    with alcove.Sandbox.create(memory=256) as sb:
        result = sb.exec(["echo", "hello"])
        print(result.stdout, result.exit_code)

The sandboxes are alcove's own (the ``alcove`` CLI lists and manages
them); :class:`AsyncSandbox` is the same API for asyncio. Errors are the
classes of :mod:`alcove.errors`.
"""

from ._aio import AsyncExecStream, AsyncFiles, AsyncPty, AsyncSandbox
from ._sync import ExecStream, Files, Pty, Sandbox
from ._sync import list_sandboxes as list  # noqa: A001 - the SDK's documented name
from ._types import DirEntry, ExecEvent, ExecResult, FileStat, Metrics, RunInfo, SandboxInfo
from .errors import (
    AlcoveError,
    ConnectionLost,
    FileError,
    InvalidArgument,
    SandboxClosed,
    SandboxExists,
    SandboxNotFound,
    SandboxNotRunning,
    SpawnError,
    StartError,
    Timeout,
)

__all__ = [
    "Sandbox",
    "AsyncSandbox",
    "Files",
    "AsyncFiles",
    "ExecStream",
    "AsyncExecStream",
    "Pty",
    "AsyncPty",
    "ExecResult",
    "ExecEvent",
    "FileStat",
    "DirEntry",
    "SandboxInfo",
    "RunInfo",
    "Metrics",
    "list",
    "AlcoveError",
    "StartError",
    "SandboxNotFound",
    "SandboxExists",
    "SandboxNotRunning",
    "SandboxClosed",
    "InvalidArgument",
    "SpawnError",
    "FileError",
    "Timeout",
    "ConnectionLost",
]
