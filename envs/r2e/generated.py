"""Generated repository-repair tasks (`--r2e-tasks generated`): small enough for a 135M model to learn the REPL loop.

Why: the bundled R2E-style repositories are beyond SmolLM2-135M, so every rollout scores 0 and GRPO never trains.
Each generated task is a tiny package (one module of 1-3 short functions, e.g. `calc/core.py`), a test file, and
one bug from envs/r2e/generated_templates.py (wrong operator, off-by-one, wrong constant, swapped arguments,
missing case), written as the rows and repo-cache folders the env already reads, so rollout, reward, protected
files, demonstrations and the verl export run unchanged.

Deterministic from the seed. The held-out split never shares a (function, bug) pair with the train split: about a
quarter of each bug kind's pairs are held out, so evaluation asks for the same kind of edit in an unseen place.
Every task is checked when generated (the bug fails a test, the reference fix passes them all, run in-process on
our own template code); tests/test_r2e_generated.py checks the same through the real test service.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envs.r2e.cache import build_from_files, sample_image
from envs.r2e.data import R2ERow
from envs.r2e.generated_templates import BUG_KINDS, MODULES, PACKAGES, TEMPLATES, Bug, FunctionTemplate

DEFAULT_SEED = 0
TRAIN_TASKS = 60
HELDOUT_TASKS = 20
HELDOUT_SHARE = 0.25  # of each bug kind's (function, bug) pairs
DEMONSTRATED_IN_EVAL = 4  # train tasks evaluated beside the held-out ones, for val/demonstrated_reward
GENERATED_SPLITS = ("train", "heldout", "all")
# The bundled samples' runner: pytest's -rA summary, which the reward parses.
RUN_TESTS = ('#!/usr/bin/env bash\n# Prints pytest\'s -rA summary, which the reward parses.\ncd "$(dirname "$0")"\n'
             "PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 python -m pytest -rA -p no:cacheprovider -q tests\n")


@dataclass(frozen=True)
class GeneratedTask:
    """One task: its row, the buggy repository's files, and the reference fix as files and as one replace."""

    row: R2ERow
    split: str
    function: str
    bug_kind: str
    module_path: str  # the file the bug is in, e.g. calc/core.py
    files: dict[str, str]  # the buggy repository: repo-relative path -> text
    fixed: dict[str, str]  # the files the reference fix changes, as they read after it
    patch: tuple[str, str]  # (buggy lines, fixed lines): `s.replace(*patch)` on the module gives the fix


def split_pairs(seed: int = DEFAULT_SEED) -> dict[str, list[tuple[str, str]]]:
    """{"train": [...], "heldout": [...]} of (function, bug kind) pairs: per bug kind, a seeded quarter held out."""
    by_kind: dict[str, list[tuple[str, str]]] = {kind: [] for kind in BUG_KINDS}
    for template in TEMPLATES:
        for bug in template.bugs:
            by_kind[bug.kind].append((template.name, bug.kind))
    splits: dict[str, list[tuple[str, str]]] = {"train": [], "heldout": []}
    for kind, pairs in by_kind.items():
        pairs = sorted(pairs)
        random.Random(f"{seed}:{kind}").shuffle(pairs)
        cut = max(1, round(len(pairs) * HELDOUT_SHARE))
        splits["heldout"] += pairs[:cut]
        splits["train"] += pairs[cut:]
    return splits


def _test_line(call: str, expected: str) -> str:
    return f"{call} is {expected}" if expected in ("True", "False", "None") else f"{call} == {expected}"


def _passes(namespace: dict[str, Any], call: str, expected: str) -> bool:
    try:
        return bool(eval(_test_line(call, expected), dict(namespace)))  # noqa: S307 - our own template code
    except Exception:
        return False


def _outcome(namespace: dict[str, Any], call: str) -> str:
    """What `call` does under the buggy code, in a bug report's words."""
    try:
        return f"returns {eval(call, dict(namespace))!r}"  # noqa: S307 - our own template code
    except Exception as exc:
        return f"raises {type(exc).__name__}"


def _patch(buggy: str, correct: str) -> tuple[str, str] | None:
    """(old, new): the fewest whole lines of `buggy` whose one replace gives `correct`; a deleted case is anchored
    on the line after it (or before it, at a blank line or the end). None when `old` is not unique."""
    b, c = buggy.splitlines(), correct.splitlines()
    head = 0
    while head < min(len(b), len(c)) and b[head] == c[head]:
        head += 1
    tail = 0
    while tail < min(len(b), len(c)) - head and b[-1 - tail] == c[-1 - tail]:
        tail += 1
    if head == len(b) - tail:  # nothing of `buggy` differs: lines were deleted from it
        if tail and b[len(b) - tail].strip():
            tail -= 1
        else:
            head -= 1
    old, new = "\n".join(b[head:len(b) - tail]), "\n".join(c[head:len(c) - tail])
    return (old, new) if old.strip() and buggy.count(old) == 1 and buggy.replace(old, new) == correct else None


def build_task(template: FunctionTemplate, bug: Bug, others: list[FunctionTemplate], position: int, package: str,
               module: str, split: str) -> GeneratedTask | None:
    """The task of `template` with `bug`, at `position` among the correct `others`, in `package/module.py`; None
    when the fix is not one unique replace there, or the tests do not catch the bug (the caller draws again)."""
    functions = [*others[:position], template, *others[position:]]
    buggy_source = template.source.replace(bug.correct, bug.buggy)
    correct = f'"""{package}.{module}: small helpers."""\n\n\n' + "\n\n".join(t.source for t in functions)
    buggy = correct.replace(template.source, buggy_source)
    patch = _patch(buggy, correct)
    if patch is None:
        return None
    spaces: dict[str, dict[str, Any]] = {"buggy": {}, "fixed": {}}
    exec(buggy, spaces["buggy"])  # noqa: S102 - our own template code, to check the task and word its report
    exec(correct, spaces["fixed"])  # noqa: S102
    tests = [(t.name, suffix, call, expected) for t in functions for suffix, call, expected in t.tests]
    if not all(_passes(spaces["fixed"], call, expected) for _, _, call, expected in tests):
        return None
    failing = [(call, expected) for name, _, call, expected in tests if not _passes(spaces["buggy"], call, expected)]
    if not failing or any(name != template.name for name, _, call, expected in tests
                          if not _passes(spaces["buggy"], call, expected)):
        return None
    call, expected = failing[0]
    module_path, test_path = f"{package}/{module}.py", f"tests/test_{module}.py"
    names = ", ".join(sorted(t.name for t in functions))
    test_text = f"from {package}.{module} import {names}\n\n\n" + "\n\n".join(
        f"def test_{name}_{suffix}():\n    assert {_test_line(call_, exp)}\n" for name, suffix, call_, exp in tests)
    files = {f"{package}/__init__.py": f'"""{package}: small helpers."""\n', module_path: buggy,
             test_path: test_text, "run_tests.sh": RUN_TESTS}
    statement = (f"In the {package} package, {call} {_outcome(spaces['buggy'], call)} "
                 f"but it should return {expected}.")
    commit = hashlib.sha1(json.dumps(files, sort_keys=True).encode()).hexdigest()
    repo_name = f"gen-{template.name}-{bug.kind}"
    row = R2ERow(repo_name=repo_name, docker_image=sample_image(repo_name, commit), commit_hash=commit,
                 problem_statement=statement,
                 expected_output_json={f"{test_path}::test_{n}_{s}": "PASSED" for n, s, _, _ in tests})
    return GeneratedTask(row=row, split=split, function=template.name, bug_kind=bug.kind, module_path=module_path,
                         files=files, fixed={module_path: correct}, patch=patch)


def _split_tasks(pairs: list[tuple[str, str]], count: int, split: str, rng: random.Random,
                 seen: set[str]) -> list[GeneratedTask]:
    """`count` tasks cycling over `pairs` (each pair in turn), each in a drawn package with 0-2 correct
    neighbours; a draw that makes no valid task, or one already made, is drawn again."""
    templates = {t.name: t for t in TEMPLATES}
    order = sorted(pairs)
    rng.shuffle(order)
    tasks: list[GeneratedTask] = []
    for index in range(count):
        name, kind = order[index % len(order)]
        template = templates[name]
        bug = next(b for b in template.bugs if b.kind == kind)
        for _ in range(50):
            others = rng.sample([t for t in TEMPLATES if t.name != name], rng.randint(0, 2))
            task = build_task(template, bug, others, rng.randint(0, len(others)), rng.choice(PACKAGES),
                              rng.choice(MODULES), split)
            if task is not None and task.row.instance_id not in seen:
                seen.add(task.row.instance_id)
                tasks.append(task)
                break
        else:
            raise RuntimeError(f"no valid generated task for ({name}, {kind}) in 50 draws")
    return tasks


@functools.lru_cache(maxsize=8)
def generate_tasks(seed: int = DEFAULT_SEED, train: int = TRAIN_TASKS,
                   heldout: int = HELDOUT_TASKS) -> tuple[GeneratedTask, ...]:
    """The train tasks, then the held-out ones; the same seed and counts give the same tasks."""
    pairs, seen = split_pairs(seed), set[str]()
    return (*_split_tasks(pairs["train"], train, "train", random.Random(f"{seed}:train"), seen),
            *_split_tasks(pairs["heldout"], heldout, "heldout", random.Random(f"{seed}:heldout"), seen))


def generated_tasks(split: str = "all") -> list[GeneratedTask]:
    """The default tasks of `split`: "train", "heldout" or "all"."""
    if split not in GENERATED_SPLITS:
        raise ValueError(f"split {split!r}: choose from {', '.join(GENERATED_SPLITS)}")
    return [t for t in generate_tasks() if split == "all" or t.split == split]


def generated_rows(split: str = "all") -> list[R2ERow]:
    return [t.row for t in generated_tasks(split)]


def generated_split_ids(split: str) -> set[str]:
    return {t.row.instance_id for t in generated_tasks(split)}


def task_of(instance_id: str) -> GeneratedTask | None:
    """The default generated task with this id, or None (a bundled sample, an R2E-Gym row)."""
    return next((t for t in generate_tasks() if t.row.instance_id == instance_id), None)


def run_rows(split: str) -> list[R2ERow]:
    """What a run reads: its train tasks ("train"), or what it evaluates on ("val": every held-out task and a few
    demonstrated ones, so val/heldout_reward and val/demonstrated_reward both show)."""
    if split == "train":
        return generated_rows("train")
    return generated_rows("heldout") + generated_rows("train")[:DEMONSTRATED_IN_EVAL]


def build_generated_cache(cache_dir: Path, only: set[str] | None = None) -> dict[str, dict[str, Any]]:
    """Write the generated repositories into the repo cache (no Docker, no network; ~80 tiny folders, kept when
    already there); `only`: these instance ids alone (those of a --dataset that holds generated rows)."""
    tasks = [t for t in generate_tasks() if only is None or t.row.instance_id in only]
    return build_from_files(cache_dir, [(t.row, t.files) for t in tasks])
