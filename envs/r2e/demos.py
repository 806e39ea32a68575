"""Demonstrations for SFT: each bundled sample solved in exactly the conversation format a rollout produces.

Why run the cells rather than write the observations by hand: the demo must be what the env really shows, or
SFT teaches the model a format it never sees. So every planned cell goes through the real sandboxed `Repl`, in
a copy of the cached repo, and each observation is `r2e_observation(...)` of the cell's real output, appended the
way `envs/r2e/rollout.py` appends it (no observation after the cell that calls FINAL, since the rollout stops there).

A demo looks: list the files, read the file(s) the reference fix touches, write the fix and run the tests,
FINAL. Small files are written whole; a large one is patched with `str.replace` on the changed lines and only
the changed region is read, which keeps a conversation inside the small model's ~2048-token context.
Output lines are one JSON object each, `{"messages": [...], "metadata": {...}}`, as `art.utils.sft` reads them.
"""

from __future__ import annotations

import asyncio
import difflib
import shutil
import tempfile
from pathlib import Path
from typing import Any

from agent.code import extract_code
from agent.prompts import R2E_SYSTEM_PROMPTS, r2e_observation, r2e_task
from envs.r2e.cache import SAMPLES, build_from_samples, repo_path, sample_rows
from envs.r2e.data import R2ERow
from envs.r2e.repl import Repl
from envs.r2e.reward import binary_test_reward
from envs.r2e.scenarios import HELDOUT_SAMPLE_REPOS, SAMPLE_SPLITS, check_split, filter_split, sample_split_ids
from rollouts.scenario import DatasetError
from sandbox.run import SandboxLimits

__all__ = ["HELDOUT_SAMPLE_REPOS", "SAMPLE_SPLITS", "build_demos", "demonstrate", "filter_split", "plan_turns",
           "sample_split_ids", "write_demos", "write_jsonl"]

# The rollout's defaults (`R2ESettings`), repeated here so writing demos does not import the trainer's stack;
# tests/test_demos.py checks the two agree, since a different output cut would change the observations.
DEMO_LIMITS = SandboxLimits(wall_s=1e9, cpu_s=3600, memory_mb=2048, max_output_chars=8000)
CELL_TIMEOUT_S = 60.0
FULL_WRITE_MAX_CHARS = 1500  # above this a file is patched in place rather than written whole
FINAL_TURN = "All tests pass, so the fix is complete.\n```repl\nFINAL('done')\n```"


class DemoError(RuntimeError):
    """A planned demonstration did not do what it should (a cell failed, the fix differs, a test fails)."""


def fixed_files(row: R2ERow) -> dict[str, str]:
    """Repo-relative path -> content after the sample's reference fix (the files under samples/NAME/fix)."""
    fix = SAMPLES / row.repo_name / "fix"
    return {str(p.relative_to(fix)): p.read_text() for p in sorted(fix.rglob("*")) if p.is_file()}


def _literal(text: str) -> str:
    """A Python literal a person would write: triple quotes for multi-line code where that is exact, else repr."""
    if "\n" in text.rstrip("\n") and "\\" not in text:
        for quote in ('"""', "'''"):
            if quote not in text and not text.endswith(quote[0]):
                return f"{quote}{text}{quote}"
    return repr(text)


def _hunks(original: str, fixed: str) -> list[tuple[int, int, str, str]] | None:
    """(first line, end line, old text, new text) per changed region, each `old` unique in the file, so that
    `s.replace(old, new)` applied in order gives the fixed file. None when no context width makes them unique."""
    old_lines, new_lines = original.splitlines(keepends=True), fixed.splitlines(keepends=True)
    for context in range(1, 6):
        groups = difflib.SequenceMatcher(None, old_lines, new_lines, autojunk=False).get_grouped_opcodes(context)
        hunks = [(g[0][1], g[-1][2], "".join(old_lines[g[0][1]:g[-1][2]]), "".join(new_lines[g[0][3]:g[-1][4]]))
                 for g in groups]
        text = original
        for _, _, old, new in hunks:
            if not old or text.count(old) != 1:
                break
            text = text.replace(old, new)
        else:
            if text == fixed:
                return hunks
    return None


def _read_code(path: str, original: str, hunks: list[tuple[int, int, str, str]] | None) -> str:
    """The whole file when small; else the changed regions with 3 lines around each, numbered."""
    if hunks is None:
        return f"print(read_file({path!r}))"
    total = len(original.splitlines())
    spans: list[tuple[int, int]] = []
    for a, b, _, _ in hunks:
        start, end = max(0, a - 3), min(total, b + 3)
        if spans and start <= spans[-1][1]:
            start = spans.pop()[0]
        spans.append((start, end))
    loop = (f"for n in range{spans[0]}:" if len(spans) == 1
            else f"for a, b in {spans}:\n    for n in range(a, b):")
    indent = "    " * (loop.count("\n") + 1)
    return f"lines = read_file({path!r}).splitlines()\n{loop}\n{indent}print(n + 1, lines[n])"


def _fix_code(path: str, fixed: str, hunks: list[tuple[int, int, str, str]] | None) -> str:
    if hunks is None:
        return f"write_file({path!r}, {_literal(fixed)})"
    replaces = "".join(f"s = s.replace({_literal(old)}, {_literal(new)})\n" for _, _, old, new in hunks)
    return f"s = read_file({path!r})\n{replaces}write_file({path!r}, s)"


def _turn(prose: str, code: str) -> str:
    return f"{prose}\n```repl\n{code}\n```"


def plan_turns(files: dict[str, tuple[str, str]], full_write_max_chars: int = FULL_WRITE_MAX_CHARS) -> list[str]:
    """The assistant turns of one demonstration; `files` maps each path the fix changes to (original, fixed)."""
    hunks = {p: _hunks(o, f) if len(f) > full_write_max_chars else None for p, (o, f) in files.items()}
    names = " and ".join(files)
    reads = "\n".join(_read_code(p, o, hunks[p]) for p, (o, _) in files.items())
    fixes = "\n".join(_fix_code(p, f, hunks[p]) for p, (_, f) in files.items())
    verb = "write the fixed" if all(h is None for h in hunks.values()) else "patch"
    return [
        _turn("Let me see which files the repository has.", "print(list_files())"),
        _turn(f"The code the bug report is about should be in {names}. Let me read it.", reads),
        _turn(f"Now I {verb} {names} and run the tests.", f"{fixes}\nprint(run_tests())"),
        FINAL_TURN,
    ]


async def demonstrate(row: R2ERow, repo: Path, system_prompt: str = "r2e_system_prompt",
                      full_write_max_chars: int = FULL_WRITE_MAX_CHARS, fixed: dict[str, str] | None = None,
                      turns: list[str] | None = None) -> dict[str, Any]:
    """Run the planned turns through the real sandboxed REPL in a copy of `repo`; return the conversation.
    Raises DemoError unless every cell ran, the files end up as the reference fix, and the tests all pass.
    `fixed` and `turns`: a task's own reference fix and demonstration (a generated task's), instead of a bundled
    sample's fix/ folder and `plan_turns`."""
    fixed = fixed if fixed is not None else fixed_files(row)
    files = {p: ((repo / p).read_text() if (repo / p).is_file() else "", c) for p, c in fixed.items()}
    messages: list[dict[str, str]] = [{"role": "system", "content": R2E_SYSTEM_PROMPTS[system_prompt]},
                                      {"role": "user", "content": r2e_task(row.problem_statement)}]
    last_output = ""
    with tempfile.TemporaryDirectory(prefix="r2e-demo-") as tmp:
        workdir = Path(tmp) / row.instance_id
        shutil.copytree(repo, workdir)
        repl = Repl(workdir, DEMO_LIMITS, CELL_TIMEOUT_S)
        await repl.start()
        try:
            for turn in turns if turns is not None else plan_turns(files, full_write_max_chars):
                messages.append({"role": "assistant", "content": turn})
                cell = await repl.run_cell(extract_code(turn) or "")
                if cell.final is not None:
                    break
                if cell.error:
                    raise DemoError(f"{row.instance_id}: a demo cell failed: {cell.error}")
                last_output = cell.stdout
                messages.append({"role": "user", "content": r2e_observation(cell.stdout, cell.stderr, cell.error)})
        finally:
            await repl.close()
        wrong = [p for p, content in fixed.items() if (workdir / p).read_text() != content]
    if wrong:
        raise DemoError(f"{row.instance_id}: after the demo {', '.join(wrong)} differ from the reference fix")
    if binary_test_reward(row.expected_output_json, last_output)[0] != 1.0:
        raise DemoError(f"{row.instance_id}: the tests do not all pass after the fix:\n{last_output[-1500:]}")
    return {"messages": messages, "metadata": {"env": "r2e", "scenario_id": row.instance_id}}


async def build_demos(cache_dir: Path, split: str = "train", system_prompt: str = "r2e_system_prompt",
                      full_write_max_chars: int = FULL_WRITE_MAX_CHARS) -> list[dict[str, Any]]:
    """One demonstration per bundled sample in `split`, from the repos cached in `cache_dir` (built if absent)."""
    check_split(split)
    if system_prompt not in R2E_SYSTEM_PROMPTS:
        raise DatasetError(f"--system-prompt {system_prompt!r}: choose from {', '.join(R2E_SYSTEM_PROMPTS)}")
    build_from_samples(cache_dir)
    wanted = set(sample_split_ids(split))
    rows = [r for r in sample_rows() if r.instance_id in wanted]
    slots = asyncio.Semaphore(2)  # each demo runs pytest in a sandbox; two at a time is plenty

    async def one(row: R2ERow) -> dict[str, Any]:
        async with slots:
            return await demonstrate(row, repo_path(cache_dir, row.instance_id), system_prompt,
                                     full_write_max_chars)

    demos = await asyncio.gather(*(one(r) for r in rows))
    for demo in demos:
        demo["metadata"]["split"] = split
    return list(demos)


def write_jsonl(path: Path, conversations: list[dict[str, Any]]) -> None:
    """One conversation per line; written to a temp file first so a failed run leaves no half file."""
    from backends.atomic import atomic_write_jsonl

    atomic_write_jsonl(path, conversations, ensure_ascii=False)


def write_demos(out: Path, split: str = "train", cache_dir: Path | None = None,
                system_prompt: str = "r2e_system_prompt") -> list[dict[str, Any]]:
    """Build the demonstrations of `split` and write them to `out` (.jsonl); returns them."""
    if out.suffix != ".jsonl":
        raise DatasetError(f"--out {out}: must end with .jsonl (the format art.utils.sft reads)")
    if cache_dir is not None and cache_dir.exists() and not cache_dir.is_dir():
        raise DatasetError(f"--cache-dir {cache_dir}: not a directory")
    with tempfile.TemporaryDirectory(prefix="r2e-demo-cache-") as tmp:
        demos = asyncio.run(build_demos(cache_dir or Path(tmp), split, system_prompt))
    write_jsonl(out, demos)
    return demos
