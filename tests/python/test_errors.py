"""Bad input and missing sandboxes: typed exceptions with one-line messages,
and nothing left running or recorded that the caller did not ask for."""

from __future__ import annotations

import pytest

import alcove
from conftest import process_alive, ps


def one_line(e: BaseException) -> str:
    text = str(e)
    assert text and "\n" not in text, repr(text)
    return text


def test_a_sandbox_that_does_not_exist(home) -> None:
    with pytest.raises(alcove.SandboxNotFound) as caught:
        alcove.Sandbox.connect("ghost", home=home)
    assert "ghost" in one_line(caught.value)
    assert isinstance(caught.value, alcove.AlcoveError)


def test_a_name_taken_twice(home, make) -> None:
    with make("twice"):
        with pytest.raises(alcove.SandboxExists) as caught:
            make("twice")
        assert "twice" in one_line(caught.value)
        assert [e["name"] for e in ps(home)] == ["twice"]


def test_wrong_argument_types_and_values_raise_before_anything_starts(home, make, rootfs) -> None:
    with pytest.raises(TypeError, match="memory must be an int"):
        make(memory="lots")
    with pytest.raises(TypeError, match="env must be a mapping"):
        make(env=["A=B"])
    with pytest.raises(TypeError, match="name must be a str"):
        make(42)
    with pytest.raises(alcove.InvalidArgument) as caught:
        make(memory=1)
    assert one_line(caught.value) == "memory must be between 16 and 16777216 MiB, not 1"
    assert isinstance(caught.value, ValueError)
    with pytest.raises(alcove.InvalidArgument):
        make("bad name!")
    with pytest.raises(ValueError, match="unknown backend"):
        make(backend="docker")
    with pytest.raises(ValueError, match="idle_timeout must be a positive"):
        make(idle_timeout=-1)
    with pytest.raises(alcove.StartError) as caught:
        make(rootfs="/nonexistent/rootfs")
    one_line(caught.value)
    assert ps(home) == [], "nothing recorded for refused sandboxes"


def test_bad_commands(make) -> None:
    with make() as sb:
        with pytest.raises(alcove.SpawnError) as caught:
            sb.exec(["no-such-program"])
        assert caught.value.kind == "not_found"
        assert "no-such-program" in one_line(caught.value)
        with pytest.raises(alcove.SpawnError) as caught:
            sb.exec(["true"], cwd="/no/such/dir")
        assert caught.value.kind == "bad_cwd"
        with pytest.raises(TypeError, match="cmd must be a str or a sequence of str"):
            sb.exec(42)
        with pytest.raises(TypeError, match="every argument of cmd must be a str"):
            sb.exec(["echo", 1])
        with pytest.raises(ValueError, match="cmd is empty"):
            sb.exec([])
        with pytest.raises(TypeError, match="stdin must be bytes or str"):
            sb.exec(["cat"], stdin=3)
        with pytest.raises(ValueError, match="timeout must be a positive"):
            sb.exec(["true"], timeout=0)
        with pytest.raises(TypeError, match="path must be a str"):
            sb.files.read(b"/etc/passwd")
        # The sandbox is unharmed.
        assert sb.exec(["true"]).ok


def test_a_closed_or_removed_handle(home, make) -> None:
    sb = make("closing")
    other = alcove.Sandbox.connect("closing", home=home)
    other.close()
    with pytest.raises(alcove.SandboxClosed) as caught:
        other.exec(["true"])
    one_line(caught.value)
    assert sb.exec(["true"]).ok, "closing one handle leaves the sandbox alone"
    sb.remove()
    with pytest.raises(alcove.SandboxClosed):
        sb.exec(["true"])
    with pytest.raises(alcove.SandboxClosed):
        sb.files.read("/etc/passwd")
    assert ps(home) == []


def test_a_sandbox_killed_under_a_handle(home, make) -> None:
    sb = make("victim")
    other = alcove.Sandbox.connect("victim", home=home)
    assert other.kill()
    with pytest.raises((alcove.ConnectionLost, alcove.SandboxNotRunning)) as caught:
        sb.exec(["true"])
    one_line(caught.value)
    sb.remove()


def test_the_context_manager_removes_the_sandbox_when_the_body_raises(home, make) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        with make("doomed") as sb:
            pid = sb.pid
            raise RuntimeError("boom")
    assert not process_alive(pid)
    assert ps(home) == []
