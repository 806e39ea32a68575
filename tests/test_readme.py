"""The README is a front door that tells the truth: it fits on a screen, its first block is the two commands
(`.ci/run` runs the second), every link resolves, and every default the README and the env manuals quote is the one
a user gets from `train.py`.

Conventions the manuals follow so this can check them (no training, no model loaded):
- A table whose header starts `| flag | default |` lists defaults: each row's flag (one backticked `--flag`) must
  resolve, through the real command line (`trainer.cli.config_from_args`, the env's spec defaults included), to the
  value in the default cell. A default in words is written in italics (`_a local service_`) and not checked;
  `none` is None.
- The README's env table has one row per registered env, a column per backticked flag, and links the env's manual.
- Prose that quotes the SFT/GRPO split ("3 SFT epochs", "GRPO steps 4-6", "step 4 .. 6") matches the env's
  `--sft-epochs` and `--max-training-steps` (RL steps, numbered after the SFT epochs).
Also checked: `scripts/uv`, the bootstrap the two commands use, picks the right pip flags for a PEP 668 system
Python, a plain one and a venv (with a stand-in interpreter, so nothing is installed).
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CI_RUN = ROOT / ".ci" / "run"
BOOTSTRAP = ROOT / "scripts" / "uv"
MAX_README_LINES = 160
MIX_EXAMPLE = ["--mix", "openspiel=0.5,toy=0.5", "--game-types", "tic_tac_toe"]  # envs/mix/README.md's command
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.M | re.S)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FLAG_CELL = re.compile(r"^`(--[a-z0-9-]+)`$")


def manuals() -> list[Path]:
    """The hand-written pages: the README, each env's manual and the docs that are not generated."""
    generated = {"PERFORMANCE.md", "RELIABILITY.md"}
    docs = [p for p in sorted((ROOT / "docs").glob("*.md")) if p.name not in generated]
    return [README, *sorted((ROOT / "envs").glob("*/*.md")), *docs]


def env_readmes() -> list[Path]:
    return sorted((ROOT / "envs").glob("*/README.md"))


def prose(text: str) -> str:
    """The text without its code blocks (a link or a number inside an example is not a claim)."""
    return FENCE.sub("", text)


def table_rows(text: str) -> Iterator[tuple[list[str], list[list[str]]]]:
    """Every markdown table: (header cells, body rows of cells)."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("|") and i + 1 < len(lines) and re.match(r"^\|[\s:|-]+\|$", lines[i + 1]):
            header = [c.strip() for c in lines[i].strip("|").split("|")]
            body, i = [], i + 2
            while i < len(lines) and lines[i].startswith("|"):
                body.append([c.strip() for c in lines[i].strip("|").split("|")])
                i += 1
            yield header, body
        else:
            i += 1


# ---- the front door ---------------------------------------------------------------------------------------------


def test_readme_fits_on_a_screen_or_two():
    assert len(README.read_text().splitlines()) <= MAX_README_LINES


def the_two_commands() -> list[str]:
    first = FENCE.search(README.read_text())
    assert first, "the README has no command block"
    return [line for line in first.group(1).splitlines() if line.strip()]


def test_readme_first_block_is_the_two_commands():
    train, tests = the_two_commands()  # exactly two
    assert train == "scripts/uv run python train.py --experiment-name demo"
    assert tests.startswith("scripts/uv run ") and "pytest" in tests
    assert os.access(BOOTSTRAP, os.X_OK), "scripts/uv must be executable (git keeps the mode)"


def test_ci_runs_the_readme_test_command():
    commands = [line.strip() for line in CI_RUN.read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert the_two_commands()[1] in commands


# ---- links ------------------------------------------------------------------------------------------------------


def slugs(markdown: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, repeats numbered."""
    found: set[str] = set()
    for heading in re.findall(r"^#{1,6} (.+)$", prose(markdown.read_text()), re.M):
        base = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        slug, n = base, 0
        while slug in found:
            n += 1
            slug = f"{base}-{n}"
        found.add(slug)
    return found


@pytest.mark.parametrize("page", manuals(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path):
    for target in LINK.findall(prose(page.read_text())):
        if re.match(r"^[a-z]+:", target):
            continue  # http(s), mailto: not ours to check offline
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        assert file.exists(), f"{page.relative_to(ROOT)}: link to {target} names no file"
        if anchor and file.suffix == ".md":
            assert anchor in slugs(file), f"{page.relative_to(ROOT)}: {target}: no such heading"


def test_every_env_has_a_manual_in_its_folder():
    from envs.registry import env_names

    for env in [*env_names(), "mix"]:
        assert (ROOT / "envs" / env / "README.md").is_file(), f"envs/{env}/README.md is missing"


# ---- quoted defaults --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resolve(tmp_path_factory: pytest.TempPathFactory):
    """env name (or "mix") -> {flag: the value train.py resolves for it}, via the real command line."""
    from envs.registry import load_spec
    from trainer.cli import build_parser, config_from_args

    dests = {flag: action.dest for flag, action in build_parser()._option_string_actions.items()}
    cwd, cache = Path.cwd(), {}
    os.chdir(tmp_path_factory.mktemp("readme"))  # relative defaults (.art, logs) land here

    def value_of(env: str, flag: str) -> Any:
        if env not in cache:
            argv = MIX_EXAMPLE if env == "mix" else ["--env", env]
            cache[env] = config_from_args(["--experiment-name", "readme-check", *argv])
        cfg, dest = cache[env], dests[flag]
        options = cfg.env_options
        if env != "mix" and options is not None and hasattr(options, dest):
            return getattr(options, dest)
        value = getattr(cfg, dest)
        if dest == "max_steps" and value is None:  # left to the env: its turn limit
            return load_spec(env).default_max_steps
        return value

    yield value_of
    os.chdir(cwd)


def same(cell: str, value: Any) -> bool:
    text = cell.strip("`")
    if text.lower() == "none":
        return value is None
    if isinstance(value, bool) or value is None:
        return text.lower() == str(value).lower()
    if isinstance(value, int | float):
        try:
            return math.isclose(float(text), float(value), rel_tol=1e-9)
        except ValueError:
            return False
    return text == str(value)


def quoted_defaults(page: Path) -> list[tuple[str, str]]:
    """(flag, default cell) of every checked row of the page's `| flag | default |` tables."""
    rows = []
    for header, body in table_rows(prose(page.read_text())):
        if [c.lower() for c in header[:2]] != ["flag", "default"]:
            continue
        for cells in body:
            flag = FLAG_CELL.match(cells[0])
            assert flag, f"{page.relative_to(ROOT)}: {cells[0]!r}: one backticked --flag per defaults row"
            if not re.fullmatch(r"[_*].*[_*]", cells[1]):  # italics: a default in words
                rows.append((flag.group(1), cells[1]))
    return rows


@pytest.mark.parametrize("page", env_readmes(), ids=lambda p: p.parent.name)
def test_env_manual_defaults_match_the_code(page: Path, resolve):
    env = page.parent.name
    rows = quoted_defaults(page)
    assert rows, f"envs/{env}/README.md has no `| flag | default |` table"
    wrong = [(flag, cell, resolve(env, flag)) for flag, cell in rows if not same(cell, resolve(env, flag))]
    assert not wrong, f"envs/{env}/README.md quotes defaults the code does not have (flag, quoted, code): {wrong}"


@pytest.mark.parametrize("page", env_readmes(), ids=lambda p: p.parent.name)
def test_env_manual_lists_every_default_its_env_sets(page: Path):
    from envs.mix.mix import MIX_DEFAULTS
    from envs.registry import load_spec

    env = page.parent.name
    defaults = MIX_DEFAULTS if env == "mix" else load_spec(env).defaults
    listed = {FLAG_CELL.match(cells[0]).group(1) for header, body in table_rows(prose(page.read_text()))
              if [c.lower() for c in header[:2]] == ["flag", "default"] for cells in body}
    missing = sorted(f"--{key.replace('_', '-')}" for key in defaults
                     if f"--{key.replace('_', '-')}" not in listed)
    assert not missing, f"envs/{env}/README.md's defaults table leaves out what the env sets: {missing}"


def test_readme_env_table_matches_the_code(resolve):
    from envs.registry import env_names

    tables = [(h, b) for h, b in table_rows(prose(README.read_text())) if h and h[0].lower() == "env"]
    assert len(tables) == 1, "the README has one env table (first column: env)"
    header, body = tables[0]
    flags = {i: FLAG_CELL.match(cell).group(1) for i, cell in enumerate(header) if FLAG_CELL.match(cell)}
    assert flags, "the env table quotes defaults in columns headed by a backticked --flag"
    seen = []
    for cells in body:
        env = re.match(r"^`([a-z0-9_]+)`", cells[0]).group(1)
        seen.append(env)
        for i, flag in flags.items():
            assert same(cells[i], resolve(env, flag)), f"README: {env} {flag} is {resolve(env, flag)}, not {cells[i]}"
        assert f"(envs/{env}/README.md)" in cells[-1], f"README: the {env} row links envs/{env}/README.md"
    # A new env needs its folder and one registry line (docs/ADDING_AN_ENV.md); its row here is welcome, not
    # required, but a row must name a registered env, once.
    assert set(seen) <= set(env_names()) and len(seen) == len(set(seen)), seen


def stage_claims(text: str) -> Iterator[tuple[str, int, str]]:
    """(what, quoted number, what it must equal) for every quote of a run's shape: its SFT epochs, its first and
    last RL step, its RL steps, its groups x rollouts."""
    for n in re.findall(r"(\d+) SFT epochs", text):
        yield "N SFT epochs", int(n), "sft"
    for n in re.findall(r"sft epoch 1/(\d+)", text):
        yield "sft epoch 1/N", int(n), "sft"
    for n in re.findall(r"SFT epochs?[^.]*?\(steps 1-(\d+)\)", text):
        yield "(steps 1-N)", int(n), "sft"
    for m in re.finditer(r"GRPO steps (\d+)-(\d+)|`step (\d+) \.\. (\d+)`", text):
        first, last = (m[1], m[2]) if m[1] else (m[3], m[4])
        yield "first RL step", int(first), "first_rl"
        yield "last RL step", int(last), "last"
    for n in re.findall(r"(\d+) GRPO steps", text):
        yield "N GRPO steps", int(n), "rl"
    for groups, rollouts in re.findall(r"(\d+) tasks x (\d+) rollouts", text):
        yield "N tasks x M rollouts", int(groups), "groups"
        yield "N tasks x M rollouts", int(rollouts), "rollouts"


@pytest.mark.parametrize("page", [README, *env_readmes()], ids=lambda p: str(p.relative_to(ROOT)))
def test_quoted_sft_and_rl_steps_match_the_code(page: Path, resolve):
    env = "gmsh" if page == README else page.parent.name  # the README's first command runs the default env
    sft, rl = resolve(env, "--sft-epochs"), resolve(env, "--max-training-steps")  # RL steps follow the SFT epochs
    expected = {"sft": sft, "first_rl": sft + 1, "last": sft + rl if rl else None, "rl": rl,
                "groups": resolve(env, "--groups-per-step"), "rollouts": resolve(env, "--rollouts-per-group")}
    text = prose(page.read_text())
    if page == README:
        text = text.split("## What the first command shows", 1)[1].split("\n## ", 1)[0]
    wrong = [(what, n, expected[key]) for what, n, key in stage_claims(text) if n != expected[key]]
    assert not wrong, f"{page.relative_to(ROOT)} (env {env}): (quote, quoted, code) {wrong}"


# ---- the bootstrap ----------------------------------------------------------------------------------------------

# A stand-in interpreter: answers `-m pip` (records the install's flags, "installs" a uv that answers --version),
# `-m uv` (after an install into a venv), and runs `-` programs with its own view of venv and PEP 668.
FAKE_PYTHON = textwrap.dedent("""\
    #!{python}
    import os, sys, sysconfig
    mode, home = os.environ["FAKE_MODE"], os.environ["HOME"]
    uv = os.path.join(home, "venv-uv" if mode == "venv" else ".local/bin/uv")
    args = sys.argv[1:]
    if args[:2] == ["-m", "pip"]:
        if args[2:] == ["--version"]:
            sys.exit(0)
        open(os.path.join(home, "pip-args"), "w").write(" ".join(args[2:]))
        os.makedirs(os.path.dirname(uv), exist_ok=True)
        open(uv, "w").write('#!/bin/sh\\n[ "$1" = --version ] && echo "uv 0.9.0" || echo "ran uv $*"\\n')
        os.chmod(uv, 0o755)
    elif args[:2] == ["-m", "uv"]:
        os.execv(uv, [uv, *args[2:]]) if os.path.exists(uv) and mode == "venv" else sys.exit(1)
    elif args == ["-"]:
        stdlib = os.path.join(home, "stdlib")
        os.makedirs(stdlib, exist_ok=True)
        if mode == "managed":
            open(os.path.join(stdlib, "EXTERNALLY-MANAGED"), "w").write("[externally-managed]\\n")
        sys.prefix = "/venv" if mode == "venv" else sys.base_prefix
        sysconfig.get_path = lambda name: stdlib
        exec(sys.stdin.read())
    """)


def bootstrap(tmp_path: Path, mode: str | None, *args: str) -> tuple[subprocess.CompletedProcess, str]:
    """Run scripts/uv with a PATH that holds no uv: only the stand-in python3 (mode None: no python at all)."""
    home, bin_dir = tmp_path / "home", tmp_path / "bin"
    home.mkdir()
    bin_dir.mkdir()
    for tool in ("awk", "env"):
        found = next((Path(d) / tool for d in ("/usr/bin", "/bin") if (Path(d) / tool).exists()), None)
        assert found, f"no {tool} on this machine"
        (bin_dir / tool).symlink_to(found)
    if mode is not None:
        (bin_dir / "python3").write_text(FAKE_PYTHON.format(python=sys.executable))
        (bin_dir / "python3").chmod(0o755)
    env = {"PATH": str(bin_dir), "HOME": str(home), "FAKE_MODE": mode or ""}
    done = subprocess.run(["/bin/sh", str(BOOTSTRAP), *args], env=env, capture_output=True, text=True, timeout=60)
    pip_args = home / "pip-args"
    return done, pip_args.read_text() if pip_args.exists() else ""


@pytest.mark.parametrize(("mode", "flags"), [("managed", "--user --break-system-packages"), ("plain", "--user"),
                                             ("venv", "")])
def test_bootstrap_installs_uv_the_way_the_interpreter_allows(tmp_path: Path, mode: str, flags: str):
    done, pip_args = bootstrap(tmp_path, mode, "run", "pytest")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ran uv run pytest"
    assert pip_args.split()[:-1] == ["install", "-q", "--disable-pip-version-check", *flags.split()]
    assert pip_args.split()[-1].startswith("uv>=")


def test_bootstrap_without_python_pip_or_curl_says_what_to_do(tmp_path: Path):
    done, _ = bootstrap(tmp_path, None, "--version")
    assert done.returncode == 2
    assert "install uv (https://docs.astral.sh/uv/)" in done.stderr
