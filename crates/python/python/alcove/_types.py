"""Result types of the alcove SDK (plain, immutable data)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

Command = Union[str, Sequence[str]]
"""A command: a list of program and arguments, or a string run by ``/bin/sh -c``."""


@dataclass(frozen=True)
class ExecResult:
    """How a command ended and everything it printed."""

    stdout: bytes
    stderr: bytes
    exit_code: Optional[int]
    """The exit code, or ``None`` when a signal ended the command."""
    signal: Optional[int]
    """The signal that ended the command, if one did."""
    oom_killed: bool
    """Whether the kernel's OOM killer ended it."""

    @property
    def ok(self) -> bool:
        """True when the command exited with code 0."""
        return self.exit_code == 0


@dataclass(frozen=True)
class ExecEvent:
    """One event of a streamed command.

    ``kind`` is ``"started"`` (``pid`` set), ``"stdout"`` or ``"stderr"``
    (``data`` set), or ``"exit"`` (``exit_code``, ``signal`` and
    ``oom_killed`` set; always the last event).
    """

    kind: str
    data: bytes = b""
    pid: Optional[int] = None
    exit_code: Optional[int] = None
    signal: Optional[int] = None
    oom_killed: bool = False


@dataclass(frozen=True)
class FileStat:
    """Metadata of a path in the sandbox."""

    kind: str
    """``"file"``, ``"dir"``, ``"symlink"`` or ``"other"``."""
    size: int
    mode: int
    uid: int
    gid: int
    mtime: int
    """Modification time, seconds since the epoch."""
    link_target: Optional[str] = None

    @property
    def is_dir(self) -> bool:
        return self.kind == "dir"

    @property
    def is_file(self) -> bool:
        return self.kind == "file"


@dataclass(frozen=True)
class DirEntry:
    """One entry of a directory listing."""

    name: str
    stat: FileStat


@dataclass(frozen=True)
class RunInfo:
    """One run (start to stop) of a sandbox, as recorded."""

    id: int
    pid: int
    status: str
    exit_code: Optional[int]
    exit_signal: Optional[int]
    reason: Optional[str]
    detail: Optional[str]
    started_at_ms: int
    terminated_at_ms: Optional[int]


@dataclass(frozen=True)
class SandboxInfo:
    """A sandbox as ``alcove ps`` shows it."""

    name: str
    status: str
    """``Created``, ``Starting``, ``Running``, ``Paused``, ``Draining``, ``Stopped``, ``Failed``, ``Crashed``, ..."""
    backend: str
    pid: Optional[int]
    """The sandbox process's pid while it runs."""
    created_at_ms: int
    last_run: Optional[RunInfo]


@dataclass(frozen=True)
class Metrics:
    """The newest resource sample of a sandbox."""

    at_ms: int
    cpu_usec: int
    memory_bytes: int
    io_read_bytes: int
    io_write_bytes: int
    net_rx_bytes: int
    net_tx_bytes: int


def _argv(cmd: Any) -> List[str]:
    if isinstance(cmd, str):
        return ["/bin/sh", "-c", cmd]
    if isinstance(cmd, (bytes, bytearray)) or not isinstance(cmd, Sequence):
        raise TypeError(f"cmd must be a str or a sequence of str, not {type(cmd).__name__}")
    argv = list(cmd)
    for arg in argv:
        if not isinstance(arg, str):
            raise TypeError(f"every argument of cmd must be a str, not {type(arg).__name__}")
    if not argv:
        raise ValueError("cmd is empty")
    return argv


def _env(env: Optional[Mapping[str, str]]) -> List[Tuple[str, str]]:
    if env is None:
        return []
    if not isinstance(env, Mapping):
        raise TypeError(f"env must be a mapping of str to str, not {type(env).__name__}")
    pairs = []
    for k, v in env.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError("env must map str to str")
        pairs.append((k, v))
    return pairs


def _stdin(data: Union[bytes, str, None]) -> Optional[bytes]:
    if data is None:
        return None
    if isinstance(data, str):
        return data.encode()
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise TypeError(f"stdin must be bytes or str, not {type(data).__name__}")


def _timeout(value: Optional[float], what: str = "timeout") -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a number of seconds, not {type(value).__name__}")
    return float(value)


def _result(raw: Tuple[bytes, bytes, Optional[int], Optional[int], bool]) -> ExecResult:
    return ExecResult(*raw)


def _event(raw: Tuple[str, Any]) -> ExecEvent:
    kind, payload = raw
    if kind == "started":
        return ExecEvent("started", pid=payload)
    if kind == "exit":
        code, sig, oom = payload
        return ExecEvent("exit", exit_code=code, signal=sig, oom_killed=oom)
    return ExecEvent(kind, data=payload)


def _stat(raw: Tuple[Any, ...]) -> FileStat:
    return FileStat(*raw)


def _entries(raw: List[Tuple[str, Tuple[Any, ...]]]) -> List[DirEntry]:
    return [DirEntry(name, _stat(st)) for name, st in raw]


def _info(d: Dict[str, Any]) -> SandboxInfo:
    run = d.get("last_run")
    return SandboxInfo(
        name=d["name"],
        status=d["status"],
        backend=d["backend"],
        pid=d.get("pid"),
        created_at_ms=d["created_at_ms"],
        last_run=RunInfo(**run) if run else None,
    )


def _info_json(text: str) -> SandboxInfo:
    return _info(json.loads(text))


def _metrics_json(text: str) -> Optional[Metrics]:
    d = json.loads(text)
    return Metrics(**d) if d else None


def _data(data: Union[bytes, str]) -> bytes:
    if isinstance(data, str):
        return data.encode()
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise TypeError(f"data must be bytes or str, not {type(data).__name__}")


def _path(path: Any) -> str:
    if not isinstance(path, str):
        raise TypeError(f"path must be a str, not {type(path).__name__}")
    return path
