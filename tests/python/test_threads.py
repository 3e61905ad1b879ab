"""One handle shared by threads; the GIL is released while alcove waits;
Ctrl-C interrupts a blocking call."""

from __future__ import annotations

import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest


def test_threads_share_one_sandbox(make) -> None:
    with make() as sb:

        def work(i: int) -> bytes:
            out = b""
            for j in range(10):
                out += sb.exec(["echo", f"{i}-{j}"]).stdout
            sb.files.write(f"/tmp/t{i}", str(i))
            return out + sb.files.read(f"/tmp/t{i}")

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(work, range(8)))
        for i, out in enumerate(results):
            assert out == b"".join(f"{i}-{j}\n".encode() for j in range(10)) + str(i).encode()


def test_a_waiting_exec_lets_other_threads_run(make) -> None:
    with make() as sb:
        # The command waits for a file only this thread can write while the
        # other thread is blocked in exec: were the GIL held, it never would.
        done = threading.Event()
        result = []

        def wait_for_go() -> None:
            result.append(sb.exec(["sh", "-c", "while [ ! -e /tmp/go ]; do sleep 0.01; done; echo went"]))
            done.set()

        t = threading.Thread(target=wait_for_go)
        t.start()
        sb.files.write("/tmp/go", "")
        assert done.wait(60), "the exec never saw the file"
        t.join()
        assert result[0].stdout == b"went\n"


def test_ctrl_c_interrupts_a_blocking_exec_and_kills_its_command(make) -> None:
    with make() as sb:

        def interrupt() -> None:
            # Once the command runs, as Ctrl-C would reach the main thread.
            sb.exec(["sh", "-c", "while [ ! -e /tmp/started ]; do sleep 0.01; done"], timeout=30)
            os.kill(os.getpid(), signal.SIGINT)

        t = threading.Thread(target=interrupt)
        t.start()
        with pytest.raises(KeyboardInterrupt):
            sb.exec(["sh", "-c", "touch /tmp/started; exec sleep 600"])
        t.join()
        assert sb.exec(["sh", "-c", "while pidof sleep >/dev/null; do sleep 0.05; done"], timeout=30).ok
