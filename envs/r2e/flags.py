"""The r2e env's own train.py flags (rollouts.registry.ENV_FLAGS): light, no heavy imports; read at parse time."""

from __future__ import annotations

import argparse
from typing import Any


def add_flags(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--test-runtime", choices=["process", "docker"], default="process",
                       help="r2e: where the local test service runs each test: a sandboxed process on a copy of the "
                            "cached repo, or a fresh container of the row's image (needs a Docker engine and the "
                            "images: `python -m envs.r2e images`); ignored by remote --docker-url nodes")


def validate(options: dict[str, Any]) -> None:
    """A docker runtime with no engine is refused before any work (one line naming the flag)."""
    if options.get("test_runtime") == "docker":
        from envs.r2e.docker_runtime import engine_problem

        problem = engine_problem()
        if problem:
            raise ValueError(f"--test-runtime docker: {problem}")
