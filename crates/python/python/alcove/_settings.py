"""The settings of a new sandbox, checked and handed to the native module."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Union

from ._types import _env, _timeout

PathLike = Union[str, "os.PathLike[str]"]

_BUNDLED = Path(__file__).parent / "bin" / "alcove"


def executable() -> Optional[str]:
    """The ``alcove`` executable the wheel ships, unless ``$ALCOVE_BIN`` names one."""
    if os.environ.get("ALCOVE_BIN"):
        return None
    return str(_BUNDLED) if _BUNDLED.is_file() else None


def _int(value: Any, what: str) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{what} must not be negative, not {value}")
    return value


def _str(value: Any, what: str) -> Optional[str]:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")
    return value


def _strs(value: Any, what: str) -> list:
    if value is None:
        return []
    if isinstance(value, str) or not isinstance(value, Sequence) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"{what} must be a list of str")
    return list(value)


def settings(
    name: Optional[str],
    rootfs: Optional[PathLike],
    memory: Optional[int],
    cpus: Optional[int],
    idle_timeout: Optional[float],
    max_duration: Optional[float],
    network: Optional[str],
    net_rules: Optional[Sequence[str]],
    env: Optional[Mapping[str, str]],
    volumes: Optional[Sequence[str]],
    workdir: Optional[str],
    user: Optional[str],
    backend: str,
    home: Optional[PathLike],
    auto_remove: bool,
    executable_path: Optional[PathLike],
) -> Dict[str, Any]:
    if rootfs is not None and not isinstance(rootfs, (str, os.PathLike)):
        raise TypeError(f"rootfs must be a str or a path, not {type(rootfs).__name__}")
    if home is not None and not isinstance(home, (str, os.PathLike)):
        raise TypeError(f"home must be a str or a path, not {type(home).__name__}")
    if not isinstance(auto_remove, bool):
        raise TypeError(f"auto_remove must be a bool, not {type(auto_remove).__name__}")
    exe = executable_path if executable_path is not None else executable()
    return {
        "name": _str(name, "name"),
        "rootfs": os.fspath(rootfs) if rootfs is not None else None,
        "memory": _int(memory, "memory"),
        "cpus": _int(cpus, "cpus"),
        "idle_timeout": _timeout(idle_timeout, "idle_timeout"),
        "max_duration": _timeout(max_duration, "max_duration"),
        "network": _str(network, "network"),
        "net_rules": _strs(net_rules, "net_rules"),
        "env": _env(env),
        "volumes": _strs(volumes, "volumes"),
        "workdir": _str(workdir, "workdir"),
        "user": _str(user, "user"),
        "backend": _str(backend, "backend"),
        "home": os.fspath(home) if home is not None else None,
        "auto_remove": auto_remove,
        "executable": os.fspath(exe) if exe is not None else None,
    }
