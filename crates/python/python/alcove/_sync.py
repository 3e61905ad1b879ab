"""The synchronous API: :class:`Sandbox`, its files, streams and PTYs.

Every call blocks the calling thread only; the GIL is released while alcove
waits, so other Python threads run meanwhile. A :class:`Sandbox` may be
used from several threads at once.
"""

from __future__ import annotations

import json
from typing import Iterator, List, Mapping, Optional, Sequence, Union

from . import _alcove
from ._settings import PathLike, settings
from ._types import (
    Command,
    DirEntry,
    ExecEvent,
    ExecResult,
    FileStat,
    Metrics,
    SandboxInfo,
    _argv,
    _data,
    _entries,
    _env,
    _event,
    _info,
    _info_json,
    _metrics_json,
    _path,
    _result,
    _stat,
    _stdin,
    _timeout,
)

DEFAULT_STOP_TIMEOUT = 10.0


def _opt_str(value: Optional[str], what: str) -> Optional[str]:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")
    return value


class Files:
    """File operations inside a sandbox (``sandbox.files``). Paths are absolute guest paths."""

    def __init__(self, native: "_alcove.NativeSandbox") -> None:
        self._native = native

    def read(self, path: str) -> bytes:
        """The whole content of a file."""
        return self._native.files("read", _path(path))

    def write(self, path: str, data: Union[bytes, str], mode: int = 0o644) -> int:
        """Creates or replaces a file with ``data``; returns the bytes written."""
        return self._native.files("write", _path(path), _data(data), mode)

    def list(self, path: str) -> List[DirEntry]:
        """The entries of a directory."""
        return _entries(self._native.files("list", _path(path)))

    def stat(self, path: str) -> FileStat:
        """A path's metadata (a symlink itself, not its target)."""
        return _stat(self._native.files("stat", _path(path)))

    def remove(self, path: str, recursive: bool = False) -> None:
        """Removes a file, or a directory (with ``recursive``, and its content)."""
        self._native.files("remove", _path(path), None, 0, bool(recursive))

    def mkdir(self, path: str, parents: bool = False) -> None:
        """Creates a directory (with ``parents``, and its missing parents)."""
        self._native.files("mkdir", _path(path), None, 0, bool(parents))

    def exists(self, path: str) -> bool:
        """Whether the path exists."""
        from .errors import FileError

        try:
            self.stat(path)
            return True
        except FileError as e:
            if e.kind == "not_found":
                return False
            raise


class ExecStream:
    """A running command's events (``sandbox.exec_stream``); iterate over it.

    Events come in order: ``started``, ``stdout``/``stderr`` chunks, then
    ``exit``. Opened with ``stdin=True``, :meth:`write` and
    :meth:`close_stdin` feed the command.
    """

    def __init__(self, native: "_alcove.NativeStream") -> None:
        self._native = native

    @property
    def pid(self) -> int:
        """The command's pid inside the sandbox."""
        return self._native.pid

    def __iter__(self) -> Iterator[ExecEvent]:
        return self

    def __next__(self) -> ExecEvent:
        raw = self._native.next()
        if raw is None:
            raise StopIteration
        return _event(raw)

    def write(self, data: Union[bytes, str]) -> None:
        """Sends bytes to the command's stdin."""
        self._native.write(_data(data))

    def close_stdin(self) -> None:
        """Closes stdin; the command reads end of file."""
        self._native.close_stdin()

    def signal(self, signum: int) -> None:
        """Sends a signal to the command's process group."""
        self._native.signal(int(signum))

    def wait(self) -> ExecResult:
        """Reads the remaining events; returns the output not yet read and how the command ended."""
        out, err = bytearray(), bytearray()
        for ev in self:
            if ev.kind == "stdout":
                out += ev.data
            elif ev.kind == "stderr":
                err += ev.data
            elif ev.kind == "exit":
                return ExecResult(bytes(out), bytes(err), ev.exit_code, ev.signal, ev.oom_killed)
        raise RuntimeError("the command's events ended without an exit")

    def __enter__(self) -> "ExecStream":
        return self

    def __exit__(self, *exc: object) -> None:
        # Leaving early kills the command rather than leave it running.
        if exc[0] is not None:
            try:
                self.signal(9)
            except Exception:
                pass


class Pty(ExecStream):
    """A command on a terminal (``sandbox.pty``): what it prints comes as
    ``stdout`` events (or :meth:`read`), what you :meth:`write` is typed."""

    _exit: Optional[ExecEvent] = None

    def read(self) -> bytes:
        """The next output of the terminal; ``b""`` once the command has exited."""
        for ev in self:
            if ev.kind in ("stdout", "stderr"):
                return ev.data
            if ev.kind == "exit":
                self._exit = ev
                return b""
        return b""

    def resize(self, rows: int, cols: int) -> None:
        """Changes the terminal's size."""
        self._native.resize(int(rows), int(cols))

    @property
    def exit_code(self) -> Optional[int]:
        """The exit code once :meth:`read` has returned ``b""``."""
        return self._exit.exit_code if self._exit else None


class Sandbox:
    """A running alcove sandbox.

    Create one with :meth:`create` (or use it as a context manager, which
    removes the sandbox on exit), or reach a running one with
    :meth:`connect`. Sandboxes are the CLI's: ``alcove ps`` lists them and
    ``alcove exec``/``stop``/``rm`` work on them.
    """

    def __init__(self, native: "_alcove.NativeSandbox") -> None:
        self._native = native
        self.files = Files(native)

    @classmethod
    def create(
        cls,
        name: Optional[str] = None,
        *,
        rootfs: Optional[PathLike] = None,
        memory: Optional[int] = None,
        cpus: Optional[int] = None,
        idle_timeout: Optional[float] = None,
        max_duration: Optional[float] = None,
        network: Optional[str] = None,
        net_rules: Optional[Sequence[str]] = None,
        env: Optional[Mapping[str, str]] = None,
        volumes: Optional[Sequence[str]] = None,
        workdir: Optional[str] = None,
        user: Optional[str] = None,
        backend: str = "auto",
        home: Optional[PathLike] = None,
        auto_remove: bool = False,
        executable: Optional[PathLike] = None,
    ) -> "Sandbox":
        """Creates and starts a sandbox, as ``alcove create`` does; returns once it accepts commands.

        ``name`` is generated when absent. ``rootfs`` is an imported rootfs's
        name, a directory or an image reference (default: alcove's busybox
        rootfs, built on first use). ``memory`` is in MiB; ``idle_timeout``
        and ``max_duration`` in seconds. ``network`` is ``none`` (default),
        ``public``, ``private``, ``host`` or ``all``. ``home`` replaces
        ``$ALCOVE_HOME``. ``backend`` is ``auto``, ``jail`` or ``krun``.
        ``executable`` is the ``alcove`` program that runs the sandbox
        (default: ``$ALCOVE_BIN``, else the one in the wheel, else ``PATH``).
        """
        s = settings(
            name, rootfs, memory, cpus, idle_timeout, max_duration, network, net_rules, env,
            volumes, workdir, user, backend, home, auto_remove, executable,
        )
        return cls(_alcove.NativeSandbox.create(s))

    @classmethod
    def connect(cls, name: str, *, home: Optional[PathLike] = None) -> "Sandbox":
        """A handle on the running sandbox ``name``."""
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, not {type(name).__name__}")
        return cls(_alcove.NativeSandbox.connect(name, None if home is None else str(home)))

    @property
    def name(self) -> str:
        return self._native.name

    @property
    def home(self) -> str:
        """The alcove home (``$ALCOVE_HOME``) the sandbox belongs to."""
        return str(self._native.home)

    @property
    def pid(self) -> int:
        """The pid of the sandbox's process on the host."""
        return self._native.pid

    def exec(
        self,
        cmd: Command,
        stdin: Union[bytes, str, None] = None,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
        user: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> ExecResult:
        """Runs a command to its end and returns its output and exit.

        A non-zero exit is not an error (see :attr:`ExecResult.exit_code`); a
        command that cannot start raises :class:`~alcove.errors.SpawnError`,
        one that outlives ``timeout`` seconds is killed and raises
        :class:`~alcove.errors.Timeout`.
        """
        raw = self._native.exec(
            _argv(cmd), _stdin(stdin), _env(env), _opt_str(cwd, "cwd"), _opt_str(user, "user"), _timeout(timeout)
        )
        return _result(raw)

    def exec_stream(
        self,
        cmd: Command,
        stdin: bool = False,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
        user: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> ExecStream:
        """Starts a command and returns its events as they come (see :class:`ExecStream`)."""
        native = self._native.stream(
            _argv(cmd), _env(env), _opt_str(cwd, "cwd"), _opt_str(user, "user"), _timeout(timeout), None, bool(stdin)
        )
        return ExecStream(native)

    def pty(
        self,
        cmd: Command = ("/bin/sh",),
        rows: int = 24,
        cols: int = 80,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
        user: Optional[str] = None,
    ) -> Pty:
        """Starts a command on a terminal of ``rows`` x ``cols`` (see :class:`Pty`)."""
        native = self._native.stream(
            _argv(cmd), _env(env), _opt_str(cwd, "cwd"), _opt_str(user, "user"), None, (int(rows), int(cols)), True
        )
        return Pty(native)

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> bool:
        """Stops the sandbox as ``alcove stop`` does (its commands get ``timeout`` seconds
        after SIGTERM); its writable layer is kept. Returns whether it was running."""
        return self._native.stop(float(timeout))

    def kill(self) -> bool:
        """Forces the sandbox off at once. Returns whether it was running."""
        return self._native.kill()

    def remove(self) -> None:
        """Forces the sandbox off if it runs and removes it with its records and files;
        the handle is closed afterwards."""
        self._native.remove()

    def close(self) -> None:
        """Closes this handle; the sandbox keeps running."""
        self._native.close()

    @property
    def closed(self) -> bool:
        return self._native.closed

    def info(self) -> SandboxInfo:
        """The sandbox as ``alcove ps`` shows it."""
        return _info_json(self._native.info())

    def metrics(self) -> Optional[Metrics]:
        """Its newest resource sample, or ``None`` before the first."""
        return _metrics_json(self._native.metrics())

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._native.closed:
            self.remove()

    def __repr__(self) -> str:
        return f"<alcove.Sandbox {self.name!r} pid={self.pid}>"


def list_sandboxes(home: Optional[PathLike] = None) -> List[SandboxInfo]:
    """Every sandbox (running or not) of ``$ALCOVE_HOME`` (or ``home``), as ``alcove ps --all``."""
    return [_info(d) for d in json.loads(_alcove.list_sandboxes(None if home is None else str(home)))]
