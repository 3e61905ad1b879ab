"""The asyncio API: :class:`AsyncSandbox` and its files, streams and PTYs.

Each call starts the operation on alcove's own threads and resolves an
asyncio future when it ends (``loop.call_soon_threadsafe``), so the event
loop never blocks and any number of commands run concurrently (a handle
opens at most ``alcove._alcove.MAX_CONCURRENT_SESSIONS`` sessions at once;
the rest wait for a slot).
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Awaitable, Callable, Generator, List, Mapping, Optional, Sequence, Union

from . import _alcove
from ._settings import PathLike, settings
from ._sync import DEFAULT_STOP_TIMEOUT, _opt_str
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
    _info_json,
    _metrics_json,
    _path,
    _result,
    _stat,
    _stdin,
    _timeout,
)


def _settle(fut: "asyncio.Future[Any]", ok: bool, value: Any) -> None:
    if fut.cancelled():
        return
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(value)


def _call(start: Callable[[Callable[[bool, Any], None]], Any]) -> "asyncio.Future[Any]":
    """Runs ``start(done)``; the future resolves when alcove calls ``done(ok, value)``.

    Cancelling the future (``asyncio.wait_for``, a cancelled task) cancels
    the operation: a command it runs is killed.
    """
    loop = asyncio.get_running_loop()
    fut = loop.create_future()

    def done(ok: bool, value: Any) -> None:
        try:
            loop.call_soon_threadsafe(_settle, fut, ok, value)
        except RuntimeError:
            pass  # the loop is closed: nobody waits any more

    task = start(done)

    def cancelled(f: "asyncio.Future[Any]") -> None:
        if f.cancelled():
            task.cancel()

    fut.add_done_callback(cancelled)
    return fut


class AsyncFiles:
    """File operations inside a sandbox (``sandbox.files``), as coroutines."""

    def __init__(self, native: "_alcove.NativeSandbox") -> None:
        self._native = native

    async def read(self, path: str) -> bytes:
        """The whole content of a file."""
        p = _path(path)
        return await _call(lambda done: self._native.files_async(done, "read", p))

    async def write(self, path: str, data: Union[bytes, str], mode: int = 0o644) -> int:
        """Creates or replaces a file with ``data``; returns the bytes written."""
        p, d = _path(path), _data(data)
        return await _call(lambda done: self._native.files_async(done, "write", p, d, mode))

    async def list(self, path: str) -> List[DirEntry]:
        """The entries of a directory."""
        p = _path(path)
        return _entries(await _call(lambda done: self._native.files_async(done, "list", p)))

    async def stat(self, path: str) -> FileStat:
        """A path's metadata."""
        p = _path(path)
        return _stat(await _call(lambda done: self._native.files_async(done, "stat", p)))

    async def remove(self, path: str, recursive: bool = False) -> None:
        """Removes a file, or a directory (with ``recursive``, and its content)."""
        p = _path(path)
        await _call(lambda done: self._native.files_async(done, "remove", p, None, 0, bool(recursive)))

    async def mkdir(self, path: str, parents: bool = False) -> None:
        """Creates a directory (with ``parents``, and its missing parents)."""
        p = _path(path)
        await _call(lambda done: self._native.files_async(done, "mkdir", p, None, 0, bool(parents)))


class AsyncExecStream:
    """A command's events: ``async for event in sandbox.exec_stream(...)``.

    The command starts on the first iteration (or ``await stream.start()``).
    """

    def __init__(self, start: Callable[[Callable[[bool, Any], None]], None]) -> None:
        self._start = start
        self._native: Optional["_alcove.NativeStream"] = None

    async def start(self) -> "AsyncExecStream":
        """Starts the command (once); raises if it cannot start."""
        if self._native is None:
            self._native = await _call(self._start)
        return self

    def __await__(self) -> Generator[Any, None, "AsyncExecStream"]:
        return self.start().__await__()

    @property
    def pid(self) -> int:
        """The command's pid inside the sandbox (once started)."""
        if self._native is None:
            raise RuntimeError("the command has not started yet")
        return self._native.pid

    def __aiter__(self) -> AsyncIterator[ExecEvent]:
        return self

    async def __anext__(self) -> ExecEvent:
        await self.start()
        native = self._native
        assert native is not None
        raw = await _call(native.next_async)
        if raw is None:
            raise StopAsyncIteration
        return _event(raw)

    async def write(self, data: Union[bytes, str]) -> None:
        """Sends bytes to the command's stdin."""
        await self.start()
        d = _data(data)
        native = self._native
        assert native is not None
        await _call(lambda done: native.write_async(done, d))

    async def close_stdin(self) -> None:
        """Closes stdin; the command reads end of file."""
        await self.start()
        assert self._native is not None
        self._native.close_stdin()

    async def signal(self, signum: int) -> None:
        """Sends a signal to the command's process group."""
        await self.start()
        assert self._native is not None
        self._native.signal(int(signum))

    async def wait(self) -> ExecResult:
        """Reads the remaining events; returns the output not yet read and how the command ended."""
        out, err = bytearray(), bytearray()
        async for ev in self:
            if ev.kind == "stdout":
                out += ev.data
            elif ev.kind == "stderr":
                err += ev.data
            elif ev.kind == "exit":
                return ExecResult(bytes(out), bytes(err), ev.exit_code, ev.signal, ev.oom_killed)
        raise RuntimeError("the command's events ended without an exit")


class AsyncPty(AsyncExecStream):
    """A command on a terminal (``await sandbox.pty(...)``)."""

    _exit: Optional[ExecEvent] = None

    async def read(self) -> bytes:
        """The next output of the terminal; ``b""`` once the command has exited."""
        async for ev in self:
            if ev.kind in ("stdout", "stderr"):
                return ev.data
            if ev.kind == "exit":
                self._exit = ev
                return b""
        return b""

    async def resize(self, rows: int, cols: int) -> None:
        """Changes the terminal's size."""
        await self.start()
        assert self._native is not None
        self._native.resize(int(rows), int(cols))

    @property
    def exit_code(self) -> Optional[int]:
        """The exit code once :meth:`read` has returned ``b""``."""
        return self._exit.exit_code if self._exit else None


class _Creating:
    """What :meth:`AsyncSandbox.create` returns: await it for the sandbox, or
    use it in ``async with`` to remove the sandbox on exit."""

    def __init__(self, make: Callable[[], Awaitable["AsyncSandbox"]]) -> None:
        self._make = make
        self._sandbox: Optional[AsyncSandbox] = None

    def __await__(self) -> Generator[Any, None, "AsyncSandbox"]:
        return self._make().__await__()

    async def __aenter__(self) -> "AsyncSandbox":
        self._sandbox = await self._make()
        return self._sandbox

    async def __aexit__(self, *exc: object) -> None:
        if self._sandbox is not None:
            await self._sandbox.__aexit__(*exc)


class AsyncSandbox:
    """A running alcove sandbox, for asyncio. The same sandboxes as
    :class:`alcove.Sandbox`, with coroutines instead of blocking calls."""

    def __init__(self, native: "_alcove.NativeSandbox") -> None:
        self._native = native
        self.files = AsyncFiles(native)

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
    ) -> _Creating:
        """Creates and starts a sandbox (see :meth:`alcove.Sandbox.create`).

        ``sb = await AsyncSandbox.create(...)``, or
        ``async with AsyncSandbox.create(...) as sb:`` to remove it on exit.
        """
        s = settings(
            name, rootfs, memory, cpus, idle_timeout, max_duration, network, net_rules, env,
            volumes, workdir, user, backend, home, auto_remove, executable,
        )

        async def make() -> "AsyncSandbox":
            return cls(await _call(lambda done: _alcove.NativeSandbox.create_async(done, s)))

        return _Creating(make)

    @classmethod
    async def connect(cls, name: str, *, home: Optional[PathLike] = None) -> "AsyncSandbox":
        """A handle on the running sandbox ``name``."""
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, not {type(name).__name__}")
        h = None if home is None else str(home)
        return cls(await _call(lambda done: _alcove.NativeSandbox.connect_async(done, name, h)))

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

    async def exec(
        self,
        cmd: Command,
        stdin: Union[bytes, str, None] = None,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
        user: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> ExecResult:
        """Runs a command to its end (see :meth:`alcove.Sandbox.exec`)."""
        args = (_argv(cmd), _stdin(stdin), _env(env), _opt_str(cwd, "cwd"), _opt_str(user, "user"), _timeout(timeout))
        return _result(await _call(lambda done: self._native.exec_async(done, *args)))

    def exec_stream(
        self,
        cmd: Command,
        stdin: bool = False,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
        user: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> AsyncExecStream:
        """A command's events as they come: ``async for event in sb.exec_stream(cmd)``."""
        args = (_argv(cmd), _env(env), _opt_str(cwd, "cwd"), _opt_str(user, "user"), _timeout(timeout), None, bool(stdin))
        return AsyncExecStream(lambda done: self._native.stream_async(done, *args))

    async def pty(
        self,
        cmd: Command = ("/bin/sh",),
        rows: int = 24,
        cols: int = 80,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
        user: Optional[str] = None,
    ) -> AsyncPty:
        """Starts a command on a terminal of ``rows`` x ``cols``."""
        args = (_argv(cmd), _env(env), _opt_str(cwd, "cwd"), _opt_str(user, "user"), None, (int(rows), int(cols)), True)
        pty = AsyncPty(lambda done: self._native.stream_async(done, *args))
        await pty.start()
        return pty

    async def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> bool:
        """Stops the sandbox as ``alcove stop`` does. Returns whether it was running."""
        t = float(timeout)
        return await _call(lambda done: self._native.stop_async(done, t))

    async def kill(self) -> bool:
        """Forces the sandbox off at once. Returns whether it was running."""
        return await _call(self._native.kill_async)

    async def remove(self) -> None:
        """Forces the sandbox off if it runs and removes it; the handle is closed afterwards."""
        await _call(self._native.remove_async)

    def close(self) -> None:
        """Closes this handle; the sandbox keeps running."""
        self._native.close()

    @property
    def closed(self) -> bool:
        return self._native.closed

    async def info(self) -> SandboxInfo:
        """The sandbox as ``alcove ps`` shows it."""
        return _info_json(await asyncio.get_running_loop().run_in_executor(None, self._native.info))

    async def metrics(self) -> Optional[Metrics]:
        """Its newest resource sample, or ``None`` before the first."""
        return _metrics_json(await asyncio.get_running_loop().run_in_executor(None, self._native.metrics))

    async def __aenter__(self) -> "AsyncSandbox":
        return self

    async def __aexit__(self, *exc: object) -> None:
        if not self._native.closed:
            await self.remove()

    def __repr__(self) -> str:
        return f"<alcove.AsyncSandbox {self.name!r} pid={self.pid}>"
