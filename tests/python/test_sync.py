"""The synchronous API against real jail sandboxes."""

from __future__ import annotations

import time

import pytest

import alcove
from conftest import cli, process_alive, ps


def test_a_sandbox_runs_commands_and_the_cli_sees_it(home, make) -> None:
    with make("first", memory=256) as sb:
        assert sb.name == "first"
        result = sb.exec(["sh", "-c", "echo out; echo err >&2; exit 3"])
        assert result == alcove.ExecResult(b"out\n", b"err\n", 3, None, False)
        assert not result.ok
        assert sb.exec(["true"]).ok
        # alcove ps lists it, alcove exec reaches it.
        [entry] = ps(home)
        assert (entry["name"], entry["status"], entry["pid"], entry["backend"]) == ("first", "Running", sb.pid, "jail")
        out = cli(home, "exec", "first", "--", "echo", "from the cli")
        assert out.stdout == b"from the cli\n", out
        info = sb.info()
        assert (info.name, info.status, info.pid, info.backend) == ("first", "Running", sb.pid, "jail")
        assert [i.name for i in alcove.list(home=home)] == ["first"]
        pid = sb.pid
    # The context manager removed it: no process, no record.
    assert not process_alive(pid)
    assert ps(home) == []
    assert sb.closed


def test_exec_takes_stdin_env_cwd_user_and_shell_strings(make) -> None:
    with make() as sb:
        assert sb.name.startswith("run-")
        assert sb.exec(["cat"], stdin=b"piped bytes").stdout == b"piped bytes"
        assert sb.exec("cat | tr a-z A-Z", stdin="text").stdout == b"TEXT"
        assert sb.exec(["sh", "-c", "echo $GREETING"], env={"GREETING": "hi"}).stdout == b"hi\n"
        assert sb.exec(["pwd"], cwd="/tmp").stdout == b"/tmp\n"
        assert sb.exec(["id", "-u"], user="nobody").stdout.strip() == b"65534"
        killed = sb.exec(["sh", "-c", "kill -9 $$"])
        assert (killed.exit_code, killed.signal) == (None, 9)


def test_sandbox_settings_reach_the_sandbox(make) -> None:
    with make(env={"FROM_CREATE": "yes"}, workdir="/tmp", memory=128) as sb:
        assert sb.exec(["sh", "-c", "echo $FROM_CREATE; pwd"]).stdout == b"yes\n/tmp\n"
        limit = sb.exec(["cat", "/sys/fs/cgroup/memory.max"])
        if limit.ok:
            assert limit.stdout.strip() == str(128 * 1024 * 1024).encode()


def test_a_timeout_kills_the_command(make) -> None:
    with make() as sb:
        with pytest.raises(alcove.Timeout, match="did not finish within") as caught:
            sb.exec(["sleep", "600"], timeout=0.5)
        assert isinstance(caught.value, TimeoutError)
        # The command is gone, the sandbox carries on.
        assert sb.exec(["pidof", "sleep"]).exit_code == 1


def test_files(make) -> None:
    with make() as sb:
        files = sb.files
        assert files.write("/tmp/a.txt", b"\x00binary\xff") == 8
        assert files.read("/tmp/a.txt") == b"\x00binary\xff"
        files.write("/tmp/b.txt", "text", mode=0o600)
        st = files.stat("/tmp/b.txt")
        assert (st.kind, st.size, st.mode & 0o777, st.is_file) == ("file", 4, 0o600, True)
        files.mkdir("/tmp/d/e", parents=True)
        assert files.stat("/tmp/d").is_dir
        names = {e.name: e.stat.kind for e in files.list("/tmp")}
        assert names["a.txt"] == "file" and names["d"] == "dir"
        assert files.exists("/tmp/a.txt") and not files.exists("/tmp/nope")
        files.remove("/tmp/a.txt")
        assert not files.exists("/tmp/a.txt")
        with pytest.raises(alcove.FileError) as caught:
            files.remove("/tmp/d")
        assert caught.value.kind == "directory_not_empty"
        files.remove("/tmp/d", recursive=True)
        with pytest.raises(alcove.FileError) as caught:
            files.read("/tmp/d")
        assert caught.value.kind == "not_found"
        assert "/tmp/d" in str(caught.value) and "\n" not in str(caught.value)
        # What the SDK wrote, the guest reads.
        assert sb.exec(["cat", "/tmp/b.txt"]).stdout == b"text"
        big = bytes(range(256)) * 20_000
        files.write("/tmp/big", big)
        assert files.read("/tmp/big") == big


def test_exec_stream_yields_events_in_order_and_takes_stdin(make) -> None:
    with make() as sb:
        events = list(sb.exec_stream(["sh", "-c", "echo one; echo two >&2; exit 4"]))
        assert events[0].kind == "started" and events[0].pid
        assert [(e.kind, e.data) for e in events[1:-1]] == [("stdout", b"one\n"), ("stderr", b"two\n")]
        assert (events[-1].kind, events[-1].exit_code) == ("exit", 4)

        stream = sb.exec_stream(["cat"], stdin=True)
        assert next(stream).kind == "started"
        stream.write(b"echoed back")
        assert next(stream) == alcove.ExecEvent("stdout", b"echoed back")
        stream.close_stdin()
        assert stream.wait() == alcove.ExecResult(b"", b"", 0, None, False)
        assert list(stream) == []


def test_pty_session(make) -> None:
    with make() as sb:
        pty = sb.pty(["/bin/sh"], rows=30, cols=100)
        pty.write(b"stty size; echo marker-$((6*7)); exit 5\n")
        screen = b""
        while True:
            chunk = pty.read()
            if not chunk:
                break
            screen += chunk
        assert b"30 100" in screen and b"marker-42" in screen, screen
        assert pty.exit_code == 5


def test_pty_resize(make) -> None:
    with make() as sb:
        pty = sb.pty(["/bin/sh"])
        pty.resize(40, 120)
        pty.write(b"stty size; exit\n")
        screen = b""
        while chunk := pty.read():
            screen += chunk
        assert b"40 120" in screen, screen


def test_stop_keeps_the_sandbox_and_kill_forces_it_off(home, make) -> None:
    sb = make("stopped")
    sb.files.write("/root/kept", "still here")
    assert sb.stop(timeout=5) is True
    assert not process_alive(sb.pid)
    assert sb.info().status == "Stopped"
    assert sb.stop() is False
    with pytest.raises(alcove.SandboxNotRunning):
        alcove.Sandbox.connect("stopped", home=home)
    # The CLI starts it again, with its writable layer.
    assert cli(home, "start", "stopped").returncode == 0
    again = alcove.Sandbox.connect("stopped", home=home)
    assert again.files.read("/root/kept") == b"still here"
    assert again.kill() is True
    assert not process_alive(again.pid)
    last = again.info().last_run
    assert last is not None and last.reason == "Signal"
    again.remove()
    assert ps(home) == []


def test_auto_remove_sandboxes_go_when_stopped(home, make) -> None:
    sb = make("ephemeral", auto_remove=True)
    assert sb.stop(timeout=5)
    assert ps(home) == []


def test_metrics_are_read_from_the_records(make) -> None:
    with make() as sb:
        # The sandbox writes its first sample one metrics interval (1 s)
        # after its start: wait for that record, bounded.
        deadline = time.monotonic() + 30
        while (sample := sb.metrics()) is None:
            assert time.monotonic() < deadline, "no metric sample recorded within 30 s"
            time.sleep(0.05)
        assert sample.memory_bytes > 0
        assert sample.at_ms >= sb.info().created_at_ms


def test_a_stream_let_go_early_kills_its_command(make) -> None:
    with make() as sb:
        stream = sb.exec_stream(["sleep", "600"])
        assert next(stream).kind == "started"
        assert sb.exec(["pidof", "sleep"]).ok
        del stream
        # The kill is sent when the stream goes; the guest reaps the command.
        assert sb.exec(["sh", "-c", "while pidof sleep >/dev/null; do sleep 0.05; done"], timeout=30).ok


def test_a_command_over_the_memory_limit_is_reported_oom_killed(make) -> None:
    with make(memory=32) as sb:
        r = sb.exec(["sh", "-c", "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo ${#x}"])
        assert (r.signal, r.oom_killed) == (9, True), r
        assert sb.exec(["true"]).ok
