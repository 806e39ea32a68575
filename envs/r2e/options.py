"""The r2e env's options: one frozen dataclass whose fields are its train.py flags (envs/options.py makes them).

Light to import: a docker engine is looked for by `validate` alone, for `--test-runtime docker`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

SYSTEM_PROMPTS = ("r2e_system_prompt", "r2e_cot_system_prompt")  # agent/prompts.py R2E_SYSTEM_PROMPTS
REWARD_KINDS = ("binary", "partial")  # envs/r2e/reward.py REWARDS
TASK_FAMILIES = ("bundled", "generated")  # generated: envs/r2e/generated.py
# Options that joined after runs were made: left out of the config hash at these values, so those runs keep theirs.
OMITTED_WHEN_DEFAULT = ("r2e_tasks",)


@dataclass(frozen=True)
class R2EOptions:
    """Real repositories with real bugs, fixed through a sandboxed REPL, scored by their tests."""

    # Where the tests run, not what the run learns: never in the config hash (a resume may use other nodes).
    docker_url: tuple[str, ...] = field(default=(), metadata={
        "action": "append", "metavar": "URL", "hash": "skip",
        "help": "test service URL, or @FILE of URLs one a line (repeat for several nodes; token from "
                "TEST_SERVICE_TOKEN); default: start one locally"})
    # "top": these were config fields before envs declared their options; hashed where they were, so older runs
    # keep their config hash.
    split: str = field(default="train", metadata={
        "hash": "top", "help": "r2e: hub split when no --dataset (train, dev_10pr_v1, dev_100pr_v1)"})
    reward: str = field(default="binary", metadata={
        "hash": "top", "choices": REWARD_KINDS,
        "help": "r2e: test reward (binary: 1 when every expected test result matches; partial: the share that does)"})
    system_prompt: str = field(default="r2e_system_prompt", metadata={
        "hash": "top", "choices": SYSTEM_PROMPTS,
        "help": "r2e: the agent's system prompt (the cot one asks it to reason before each cell)"})
    bash_timeout: float = field(default=60.0, metadata={"hash": "top", "help": "r2e: seconds per REPL cell"})
    test_runtime: str = field(default="process", metadata={
        "choices": ("process", "docker"),
        "help": "r2e: where the local test service runs each test: a sandboxed process on a copy of the cached "
                "repo, or a fresh container of the row's image (needs a Docker engine and the images: "
                "`python -m envs.r2e images`); ignored by remote --docker-url nodes"})

    r2e_tasks: str = field(default="bundled", metadata={
        "choices": TASK_FAMILIES,
        "help": "r2e: which tasks: bundled (the six sample repositories, or --dataset's / the hub's R2E-Gym rows) or "
                "generated (small generated repair tasks, 60 train and 20 held out, sized for a 135M model)"})

    def hash_view(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """envs/options.py's view of the fields' `hash` places, less the options that joined the hash later and are
        at their defaults: a run that leaves --r2e-tasks at bundled keeps the config hash it always had."""
        top: dict[str, Any] = {}
        own: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value, place = getattr(self, f.name), f.metadata.get("hash", "env")
            if place == "skip" or (f.name in OMITTED_WHEN_DEFAULT and value == f.default):
                continue
            (top if place == "top" else own)[f.name] = list(value) if isinstance(value, tuple) else value
        return top, own

    def validate(self) -> None:
        """One line naming the flag; a docker runtime with no engine is refused before any work."""
        from envs.local_service import check_service_urls

        if not self.bash_timeout > 0:
            raise ValueError("--bash-timeout must be positive")
        check_service_urls("--docker-url", self.docker_url)
        if self.test_runtime == "docker":
            from envs.r2e.docker_runtime import engine_problem

            if problem := engine_problem():
                raise ValueError(f"--test-runtime docker: {problem}")
