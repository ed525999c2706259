"""The top-level package: its re-exports resolve, and importing it is cheap."""

import subprocess
import sys

import midswarm


def test_every_top_level_name_resolves_to_its_subpackage_object() -> None:
    import importlib

    for name in midswarm.__all__:
        if name == "__version__":
            continue
        package = midswarm._WHERE[name]
        assert getattr(midswarm, name) is getattr(
            importlib.import_module(f"midswarm.{package}"), name)


def test_unknown_attribute_is_an_attribute_error() -> None:
    try:
        midswarm.no_such_thing  # noqa: B018
    except AttributeError as exc:
        assert "no_such_thing" in str(exc)
    else:
        raise AssertionError("expected AttributeError")


def test_import_midswarm_does_not_import_the_kernels() -> None:
    code = "import sys, midswarm; print('numba' in sys.modules, 'midswarm.kernels' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
