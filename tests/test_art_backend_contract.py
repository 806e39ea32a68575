"""ART's own backend tests, as the installed openpipe-art ships them, run against the CPU backend.

A user swaps `LocalBackend` for our CPU backend in ART-style code; these tests are ART's own statement of what that
code may rely on. Their source is read from the installed package at test time (never copied here) and executed
unchanged, with one name rebound: `LocalBackend` becomes a factory for the CPU backend serving the embedded
tiny-random model in place of the hub model the test names (this machine is offline and has no GPU).
"""

from __future__ import annotations

import importlib.util
import inspect
import os
from pathlib import Path
from types import ModuleType

import art
import pytest

from backends.cpu import CPUBackend

ART_TESTS = Path(art.__file__).parent / "test"
# Every ART test that constructs a LocalBackend (today: test_step_skipping.py), so a newer ART's tests join in.
BACKEND_TESTS = sorted(p.name for p in ART_TESTS.glob("test_*.py") if "LocalBackend(" in p.read_text())


def cpu_local_backend(path: str = ".art", **_: object) -> CPUBackend:
    """Stands where ART's tests call `LocalBackend(path=...)`."""
    return CPUBackend.with_embedded_model(path, "tiny-random")


def load_art_test(filename: str) -> ModuleType:
    source = ART_TESTS / filename
    if not source.exists():
        pytest.fail(f"the installed openpipe-art {getattr(art, '__version__', '?')} no longer ships {source}")
    spec = importlib.util.spec_from_file_location(f"art_test_{source.stem}", source)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert hasattr(module, "LocalBackend"), f"{source} no longer uses LocalBackend"
    module.LocalBackend = cpu_local_backend  # the one substitution
    return module


def art_test_cases() -> list[tuple[str, str]]:
    cases = []
    for filename in BACKEND_TESTS:
        module = load_art_test(filename)
        cases += [(filename, name) for name, fn in vars(module).items()
                  if name.startswith("test_") and inspect.iscoroutinefunction(fn)]
    return cases


@pytest.mark.parametrize(("filename", "name"), art_test_cases())
async def test_art_backend_test_passes_with_the_cpu_backend(filename, name):
    await getattr(load_art_test(filename), name)()  # ART's own assertions decide


def test_the_backend_tests_of_the_installed_art_are_found():
    assert "test_step_skipping.py" in BACKEND_TESTS, f"{ART_TESTS} holds {sorted(os.listdir(ART_TESTS))}"


def test_the_substitution_is_the_only_change():
    """The test really runs ART's code: its LocalBackend name is rebound, its functions are ART's own."""
    module = load_art_test("test_step_skipping.py")
    assert module.LocalBackend is cpu_local_backend
    assert Path(inspect.getsourcefile(module.test_step_skipping)).resolve() == (  # type: ignore[arg-type]
        ART_TESTS / "test_step_skipping.py").resolve()
