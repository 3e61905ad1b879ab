"""The exceptions of the alcove SDK.

Every error alcove reports is an :class:`AlcoveError` whose message is the
one line the ``alcove`` CLI would print. Errors with a class of their own
carry it as ``kind`` (the names the CLI and the JSON output use).
"""

from __future__ import annotations

from typing import Optional

__all__ = [
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


class AlcoveError(Exception):
    """Base class of every error alcove reports."""

    def __init__(self, message: str, kind: Optional[str] = None) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind


class StartError(AlcoveError):
    """The sandbox could not be created or did not start (bad rootfs, a
    limit this host cannot apply, the guest failing to boot, ...)."""


class SandboxNotFound(AlcoveError, LookupError):
    """No sandbox of that name exists."""


class SandboxExists(AlcoveError):
    """A sandbox of that name exists already."""


class SandboxNotRunning(AlcoveError):
    """The sandbox exists but is not running (stopped, or stopping)."""


class SandboxClosed(AlcoveError):
    """The handle was closed or its sandbox removed before this call."""


class InvalidArgument(AlcoveError, ValueError):
    """A setting or argument alcove refuses (a name, a limit, a path)."""


class SpawnError(AlcoveError):
    """The command could not be started in the sandbox.

    ``kind`` is one of ``not_found``, ``permission_denied``,
    ``not_executable``, ``bad_cwd``, ``user_setup_failed``,
    ``resource_setup_failed``, ``invalid_request``, ``shutting_down``,
    ``other``.
    """

    kind: str


class FileError(AlcoveError, OSError):
    """A file operation failed in the sandbox.

    ``kind`` is one of ``not_found``, ``permission_denied``,
    ``already_exists``, ``not_a_directory``, ``is_a_directory``,
    ``directory_not_empty``, ``invalid_input``, ``other``.
    """

    kind: str

    def __str__(self) -> str:
        return self.message


class Timeout(AlcoveError, TimeoutError):
    """The command ran longer than its ``timeout`` and was killed."""

    def __str__(self) -> str:
        return self.message


class ConnectionLost(AlcoveError):
    """The connection to the sandbox was lost (it stopped, or was killed)."""
