"""The generated tasks' demonstrations (envs/r2e/generated.py makes the tasks): each a short REPL session that
lists the files, reads the module, applies the reference fix, runs the tests and finishes, run through the real
sandboxed REPL by envs/r2e/demos.py. Apart from the generator so that the generator, which the scenario loader
imports, does not import the demonstration code, which imports the scenario loader."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from envs.r2e.demos import FINAL_TURN, demonstrate, write_jsonl
from envs.r2e.generated import GeneratedTask, build_generated_cache, generated_tasks


def demo_turns(task: GeneratedTask) -> list[str]:
    """The assistant turns of the task's demonstration: list the files, read the module, apply the one-replace fix
    and run the tests, FINAL. Short on purpose, to fit a 135M model's 2048-token context with room to spare."""
    path, (old, new) = task.module_path, task.patch
    if task.bug_kind == "missing_case":
        said = f"{task.function} is missing a case; I add it back."
    elif "\n" not in old:
        said = f"The line `{old.strip()}` is wrong; it should be `{new.strip()}`."
    else:
        said = f"This code in {task.function} is wrong; it should read:\n{new}\n"
    return [
        "Let me see which files the repository has.\n```repl\nprint(list_files())\n```",
        f"The bug report is about {task.function}, in {path}. Let me read it.\n```repl\n"
        f"print(read_file({path!r}))\n```",
        f"{said} I fix it and run the tests.\n```repl\ns = read_file({path!r})\n"
        f"s = s.replace({old!r}, {new!r})\nwrite_file({path!r}, s)\nprint(run_tests())\n```",
        FINAL_TURN,
    ]


async def build_generated_demos(cache_dir: Path, split: str = "train", system_prompt: str = "r2e_system_prompt",
                                limit: int | None = None) -> list[dict[str, Any]]:
    """One demonstration per generated task of `split` (the first `limit`), each run through the real sandboxed
    REPL by envs/r2e/demos.py and checked there (the files end as the reference fix, the tests all pass)."""
    import asyncio

    from envs.r2e.cache import repo_path

    tasks = generated_tasks(split)[: limit or None]
    build_generated_cache(cache_dir, {t.row.instance_id for t in tasks})
    slots = asyncio.Semaphore(2)  # each demo runs pytest in a sandbox; two at a time is plenty

    async def one(task: GeneratedTask) -> dict[str, Any]:
        async with slots:
            demo = await demonstrate(task.row, repo_path(cache_dir, task.row.instance_id), system_prompt,
                                     fixed=task.fixed, turns=demo_turns(task))
        demo["metadata"]["split"] = split
        return demo

    return list(await asyncio.gather(*(one(t) for t in tasks)))


def write_generated_demos(out: Path, cache_dir: Path, split: str = "train", system_prompt: str = "r2e_system_prompt",
                          limit: int | None = None) -> list[dict[str, Any]]:
    """Build the generated tasks' demonstrations and write them to `out` (.jsonl, as art.utils.sft reads)."""
    import asyncio

    demos = asyncio.run(build_generated_demos(cache_dir, split, system_prompt, limit))
    write_jsonl(out, demos)
    return demos
