"""The envs a run may name: one line per env, naming the module whose `SPEC` (envs/spec.py) declares it.

Adding an env adds one line here and a folder (docs/ADDING_AN_ENV.md). A spec module is imported only when its env
is asked for, and is light to import (its heavy imports live inside its functions).
"""

from __future__ import annotations

import importlib

from envs.mix.composite import MIX, mix_env, parse_mix
from envs.spec import EnvSpec, UnknownEnvError

ENV_SPECS: dict[str, str] = {
    "gmsh": "envs.gmsh.spec",
    "openspiel": "envs.openspiel.spec",
    "planner": "envs.planner.spec",
    "r2e": "envs.r2e.spec",
    "toy": "envs.toy.spec",
    "workflow": "envs.workflow.spec",
}

__all__ = ["ENV_SPECS", "MIX", "env_names", "get_env", "load_spec", "spec_summary", "unknown_env"]


def env_names() -> list[str]:
    return sorted(ENV_SPECS)


def unknown_env(name: str) -> str:
    return f"--env: unknown env {name!r}; choose from {', '.join(env_names())}"


def load_spec(name: str) -> EnvSpec:
    """The spec of a registered env (read from its module each time, so a test may replace a module's SPEC)."""
    if name not in ENV_SPECS:
        raise UnknownEnvError(unknown_env(name))
    spec = importlib.import_module(ENV_SPECS[name]).SPEC
    if not isinstance(spec, EnvSpec):
        raise TypeError(f"{ENV_SPECS[name]}.SPEC is not an EnvSpec")
    return spec


def spec_summary(name: str) -> str:
    """What the env is, in one line: the first line of its spec module's docstring."""
    doc = (importlib.import_module(ENV_SPECS[name]).__doc__ or "").strip()
    return doc.splitlines()[0].rstrip(".") if doc else name


def get_env(name: str, mix: str | None = None) -> EnvSpec:
    """The env `name`; for a mixed run (name MIX, `mix` = the run's --mix) the composite of its envs
    (envs/mix/composite.py)."""
    if name == MIX and mix is not None:
        return mix_env(parse_mix(mix, env_names()), load_spec)
    return load_spec(name)
