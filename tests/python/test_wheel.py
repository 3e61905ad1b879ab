"""The package under test is the installed wheel, and it is complete."""

import os
import pathlib
import sysconfig

import alcove
from conftest import CLI


def test_the_package_comes_from_the_installed_wheel() -> None:
    site = pathlib.Path(sysconfig.get_paths()["purelib"]).resolve()
    assert pathlib.Path(alcove.__file__).resolve().is_relative_to(site), alcove.__file__


def test_the_wheel_is_abi3_and_carries_its_alcove_executable_and_types() -> None:
    pkg = pathlib.Path(alcove.__file__).parent
    assert (pkg / "_alcove.abi3.so").is_file()
    assert os.access(CLI, os.X_OK)
    assert (pkg / "py.typed").is_file()
    assert (pkg / "_alcove.pyi").is_file()
    assert "ALCOVE_BIN" not in os.environ, "the tests use the executable of the wheel"


def test_every_public_name_has_a_docstring() -> None:
    for name in alcove.__all__:
        obj = getattr(alcove, name)
        assert callable(obj) and obj.__doc__, name
