"""The asyncio API."""

from __future__ import annotations

import asyncio

import pytest

import alcove
from conftest import process_alive, ps


def run(coro):
    return asyncio.run(coro)


def test_async_sandbox_lifecycle_exec_and_files(home, rootfs) -> None:
    async def main() -> int:
        async with alcove.AsyncSandbox.create("aio", home=home, rootfs=rootfs, backend="jail") as sb:
            r = await sb.exec(["sh", "-c", "echo hi; exit 2"])
            assert (r.stdout, r.exit_code) == (b"hi\n", 2)
            assert (await sb.exec("cat", stdin=b"in")).stdout == b"in"
            await sb.files.write("/tmp/f", "async")
            assert await sb.files.read("/tmp/f") == b"async"
            assert (await sb.files.stat("/tmp/f")).size == 5
            assert "f" in [e.name for e in await sb.files.list("/tmp")]
            await sb.files.mkdir("/tmp/x/y", parents=True)
            await sb.files.remove("/tmp/x", recursive=True)
            info = await sb.info()
            assert (info.status, info.pid) == ("Running", sb.pid)
            return sb.pid

    pid = run(main())
    assert not process_alive(pid)
    assert ps(home) == []


def test_a_hundred_concurrent_execs(make) -> None:
    with make() as created:

        async def main() -> None:
            sb = await alcove.AsyncSandbox.connect(created.name, home=created.home)
            results = await asyncio.gather(*(sb.exec(["echo", str(i)]) for i in range(100)))
            assert [r.stdout for r in results] == [f"{i}\n".encode() for i in range(100)]

        run(main())


def test_async_stream_pty_and_errors(make) -> None:
    with make() as created:

        async def main() -> None:
            sb = await alcove.AsyncSandbox.connect(created.name, home=created.home)
            events = [ev async for ev in sb.exec_stream(["sh", "-c", "echo a; echo b >&2"])]
            assert [e.kind for e in events] == ["started", "stdout", "stderr", "exit"]
            assert events[1].data == b"a\n" and events[2].data == b"b\n"

            stream = await sb.exec_stream(["cat"], stdin=True)
            await stream.write(b"round trip")
            await stream.close_stdin()
            assert (await stream.wait()).stdout == b"round trip"

            pty = await sb.pty(["/bin/sh"], rows=20, cols=60)
            await pty.write(b"stty size; exit 3\n")
            screen = b""
            while chunk := await pty.read():
                screen += chunk
            assert b"20 60" in screen and pty.exit_code == 3

            with pytest.raises(alcove.SpawnError) as caught:
                await sb.exec(["missing-program"])
            assert caught.value.kind == "not_found"
            with pytest.raises(alcove.Timeout):
                await sb.exec(["sleep", "600"], timeout=0.5)
            with pytest.raises(alcove.SandboxNotFound):
                await alcove.AsyncSandbox.connect("ghost", home=created.home)

        run(main())


def test_async_stop_and_kill(home, make) -> None:
    make("a1")
    make("a2")

    async def main() -> None:
        a1 = await alcove.AsyncSandbox.connect("a1", home=home)
        a2 = await alcove.AsyncSandbox.connect("a2", home=home)
        assert await asyncio.gather(a1.stop(timeout=5), a2.kill()) == [True, True]
        assert not process_alive(a1.pid) and not process_alive(a2.pid)
        await a1.remove()
        await a2.remove()

    run(main())
    assert ps(home) == []


def test_a_cancelled_exec_kills_its_command(make) -> None:
    with make() as created:

        async def main() -> None:
            sb = await alcove.AsyncSandbox.connect(created.name, home=created.home)
            task = asyncio.ensure_future(sb.exec(["sh", "-c", "touch /tmp/started; exec sleep 600"]))
            # Cancelled once the command is known to run.
            await sb.exec(["sh", "-c", "while [ ! -e /tmp/started ]; do sleep 0.01; done"], timeout=30)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            gone = await sb.exec(["sh", "-c", "while pidof sleep >/dev/null; do sleep 0.05; done"], timeout=30)
            assert gone.ok

        run(main())
