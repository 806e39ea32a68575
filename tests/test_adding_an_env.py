"""docs/ADDING_AN_ENV.md, followed to the letter: its files are written as the page shows them (an `echo` env in a
folder of its own, found as `envs/echo` through the package path), its one registry line is added, and the page's
checks run: the env's flags in `train.py --help`, one of them refused for another env, the reward preflight, and a
one-step training run on the tiny random model."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import envs
import train
from envs import registry
from tests.helpers import ROOT, history_steps, subprocess_env, train_cmd

DOC = ROOT / "docs" / "ADDING_AN_ENV.md"
FILE_BLOCK = re.compile(r"`(envs/echo/[\w.]+)`:\n\n```\w*\n(.*?)\n```", re.DOTALL)
REGISTRY_LINE = re.compile(r'^ {4}"(\w+)": "([\w.]+)",$', re.MULTILINE)


def doc_files() -> dict[str, str]:
    """path -> text of every file the page shows (a code block right after a line ending "`envs/echo/...`:")."""
    return {path: text + "\n" for path, text in FILE_BLOCK.findall(DOC.read_text())}


def doc_registry_line() -> tuple[str, str]:
    section = DOC.read_text().split("## The registry line", 1)[1].split("\n## ", 1)[0]
    (line,) = REGISTRY_LINE.findall(section)
    return line


@pytest.fixture(scope="module")
def outside(tmp_path_factory) -> Path:
    """A folder holding `envs/echo/` as the page lays it out (the repository's own envs/ stays untouched)."""
    root = tmp_path_factory.mktemp("added")
    for path, text in doc_files().items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    return root


@pytest.fixture
def echo(outside, monkeypatch):
    """The page's one registry line, and `envs/echo` on the envs package's path."""
    name, module = doc_registry_line()
    monkeypatch.setattr(envs, "__path__", [*envs.__path__, str(outside / "envs")])
    monkeypatch.setitem(registry.ENV_SPECS, name, module)
    yield name
    for loaded in [m for m in sys.modules if m == "envs.echo" or m.startswith("envs.echo.")]:
        del sys.modules[loaded]


def flags(tmp_path, *more: str) -> list[str]:
    return ["--experiment-name", "echo", "--art-path", str(tmp_path / "art"), "--rollout-root",
            str(tmp_path / "rollouts"), "--log-dir", str(tmp_path / "logs"), "--base-model", "tiny-random",
            "--no-eval-before-after", *more]


def test_the_page_shows_every_file_of_its_layout_and_one_registry_line():
    files = doc_files()
    assert set(files) == {f"envs/echo/{name}" for name in ("__init__.py", "options.py", "reward.py", "rollout.py",
                                                           "probes.py", "spec.py", "README.md")}
    assert doc_registry_line() == ("echo", "envs.echo.spec")


def test_its_spec_is_light_and_its_flags_are_a_help_group_with_their_defaults(echo, capsys):
    spec = registry.load_spec(echo)
    assert spec.name == "echo" and spec.defaults["max_tokens"] == 8
    assert "art" not in {m.split(".")[0] for m in sys.modules if m.startswith("envs.echo")}
    assert "envs.echo.rollout" not in sys.modules  # the rollout (and art) load only when a rollout runs
    with pytest.raises(SystemExit) as done:
        train.main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    group = out.split("--env echo: Repeat one word, exactly: the smallest env that trains:", 1)[1]
    assert "--echo-words WORD [WORD ...]" in group.split("\n\n", 1)[0]
    assert "(default: apple river cloud)" in " ".join(group.split("\n\n", 1)[0].split())


def test_its_flag_is_refused_for_another_env_in_one_line(echo, tmp_path, capsys):
    assert train.main(flags(tmp_path, "--env", "toy", "--echo-words", "x")) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: --echo-words belongs to --env echo, not --env toy"]
    assert train.main(flags(tmp_path, "--env", "echo", "--echo-words", "two words", "--check-rewards")) == 2
    assert "--echo-words: 'two words' must be one word" in capsys.readouterr().err


def test_its_reward_passes_the_preflight(echo, tmp_path, capsys):
    assert train.main(flags(tmp_path, "--env", "echo", "--check-rewards")) == 0
    out = capsys.readouterr().out
    assert "reward check: echo " in out and "  separated" in out
    assert not (tmp_path / "art").exists()  # nothing trained, no model loaded


ADDED = """
import sys
import envs
envs.__path__.append(sys.argv[1])
from envs import registry
registry.ENV_SPECS[sys.argv[2]] = sys.argv[3]
import train
sys.exit(train.main(sys.argv[4:]))
"""


def test_it_trains_one_step_on_the_tiny_model(outside, tmp_path):
    """As a user runs train.py: a process of its own (the registry line added before train.py starts)."""
    name, module = doc_registry_line()
    argv = train_cmd(tmp_path, "echo", "--env", name, "--max-training-steps", "1", "--groups-per-step", "2",
                     "--rollouts-per-group", "2", "--dataset-size", "4")[2:]
    result = subprocess.run([sys.executable, "-c", ADDED, str(outside / "envs"), name, module, *argv],
                            capture_output=True, text=True, timeout=300, env=subprocess_env(), cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "reward check: echo" in result.stdout
    assert history_steps(tmp_path, "echo")[-1] == 1


def test_an_option_that_takes_a_train_py_flag_is_named_at_once(echo, monkeypatch):
    """The page's rule (a field name is none of train.py's settings), enforced where the flags are made."""
    import dataclasses

    from envs.echo import spec

    @dataclasses.dataclass(frozen=True)
    class Clashing:
        seed: int = dataclasses.field(default=1, metadata={"help": "clashes with train.py's --seed"})

    monkeypatch.setattr(spec, "SPEC", dataclasses.replace(spec.SPEC, options=Clashing))
    with pytest.raises(TypeError, match=r"^Clashing\.seed: argument --seed: conflicting option string"):
        train.main(["--help"])
