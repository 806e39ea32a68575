"""Which of the model's changed files may reach a test run: the verdict comes from files the task owns.

Why: the model's changed files are applied over a fresh copy of the task's repository and its test command runs
there. If the model could change what runs the tests or decides their outcome, it could score 1.0 without fixing
anything: rewrite the tests, plant a `conftest.py` that marks every test passed, replace `run_tests.sh` with one
that prints PASSED lines, plant a `pytest.py` (or `_pytest/`, or a stdlib name) that `python -m pytest` imports
from the repo instead of the real one, a `sitecustomize.py` or `.pth` file that runs at start-up, a pytest config
(`pytest.ini`, `tox.ini`, `setup.cfg`, `pyproject.toml`) that deselects or reports differently, or a stale `.pyc`
that Python loads in place of a task file. Such files are dropped from the request before the tests run, so the
copy keeps the task's own version (restored) or has none (refused); the test service enforces this itself, for
every runtime, since a client may be hostile, and reports the dropped paths (`TestResult.ignored_files`).
What stays allowed is the code under repair: any other file, new modules included, whatever their content.
"""

from __future__ import annotations

import fnmatch
import re
import sys
from collections.abc import Collection
from pathlib import PurePosixPath

# Folders of tests, of the runner's own tools, and of the test environment (an R2E image's `.venv` is in /testbed).
PROTECTED_DIRS = frozenset({"tests", "test", "r2e_tests", ".venv", "venv", ".tox", ".nox",
                            "site-packages", "dist-packages", "__pycache__"})
# File names that configure or hook test runs, wherever they are.
PROTECTED_NAMES = frozenset({"conftest.py", "pytest.ini", ".pytest.ini", "tox.ini", "setup.cfg", "pyproject.toml",
                             "sitecustomize.py", "usercustomize.py", "run_tests.sh", "noxfile.py"})
PROTECTED_PATTERNS = ("test_*.py", "*_test.py", "tests.py", "*.pth", "*.pyc", "*.pyo")
# Top-level names the test command imports: a new module or package by one of these names would shadow it.
TEST_TOOLS = frozenset({"pytest", "_pytest", "py", "pluggy", "iniconfig", "packaging", "exceptiongroup", "tomli",
                        "tomllib", "colorama", "pygments", "hypothesis", "coverage", "xdist", "pytest_cov",
                        "unittest", "nose", "nose2", "site"})
# Folders the REPL's copy of the repository leaves out: hidden tests (R2E images keep theirs in r2e_tests/).
HIDDEN_FROM_MODEL = frozenset({"r2e_tests"})

_WORD = re.compile(r"[A-Za-z0-9_./-]+\.(?:sh|py|cfg|ini|toml)\b")


def command_files(test_cmd: str) -> set[str]:
    """Repo-relative files the test command names (e.g. `bash run_tests.sh` -> run_tests.sh)."""
    return {str(PurePosixPath(word.removeprefix("./"))) for word in _WORD.findall(test_cmd)
            if not word.startswith("/")}


def protected_reason(path: str, test_cmd: str = "", original: Collection[str] | None = None) -> str | None:
    """Why the changed file `path` (repo-relative) may not reach a test run, or None when it may.

    `original`: the top-level names of the task's repository, when known; a new top-level module named like a test
    tool or a stdlib module is refused (without `original`, every one by such a name is)."""
    parts = PurePosixPath(path).parts
    name = parts[-1] if parts else ""
    if not parts or PurePosixPath(path).is_absolute() or any(p in ("", ".", "..") for p in parts):
        return "not a plain repository path"
    if hidden := sorted(set(parts[:-1]) & PROTECTED_DIRS):
        return f"under {hidden[0]}/ (tests or the test environment)"
    if name in PROTECTED_NAMES or any(fnmatch.fnmatch(name, p) for p in PROTECTED_PATTERNS):
        return "a test file, test runner or test configuration"
    if path in command_files(test_cmd):
        return "named by the test command"
    top = parts[0].removesuffix(".py") if len(parts) == 1 else parts[0]
    shadows = top in TEST_TOOLS or top in sys.stdlib_module_names
    if shadows and (len(parts) > 1 or name.endswith(".py")) and (original is None or parts[0] not in original):
        return f"a new top-level module {top!r} would shadow the one the tests import"
    return None


def split_changes(paths: list[str], test_cmd: str = "",
                  original: Collection[str] | None = None) -> tuple[list[str], dict[str, str]]:
    """(paths that may reach the test run, {dropped path: why})."""
    kept, ignored = [], {}
    for path in paths:
        reason = protected_reason(path, test_cmd, original)
        if reason is None:
            kept.append(path)
        else:
            ignored[path] = reason
    return kept, ignored
