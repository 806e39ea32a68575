"""Mixed-domain runs (`--mix toy=0.5,openspiel=0.3,planner=0.2`): the flag's rules and the mix's typed options.

The composite env itself (dispatch, per-env figures and demonstrations) is envs/mix/composite.py.

Flags: run-wide settings (groups, rollouts per group, temperature, LoRA, SFT, step sizes) have one value for the
run, from `MIX_DEFAULTS` where left out; every mixed env's own flags are accepted, and each env gets its own typed
options (its spec's `options`, with its spec's defaults) and its own turn limits (`--max-tokens`, `--max-steps`: the
env's defaults, as in a single-env run, unless given, when they apply to every env). `--env` and `--dataset` name
one env and are refused with `--mix`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from envs.mix.composite import MIX, MixError, env_config, env_of, format_mix
from envs.mix.composite import mix_env as composite_env
from envs.mix.composite import parse_mix as parse_shares
from envs.options import check_options, hash_view, resolve_env_options
from envs.registry import env_names, load_spec
from envs.spec import EnvSpec

__all__ = ["MIX", "MIX_DEFAULTS", "PER_ENV_FIELDS", "MixError", "MixOptions", "MixedEnv", "env_config", "env_of",
           "format_mix", "mix_config_values", "mix_env", "mix_problem", "parse_mix"]

# A mixed run's run-wide defaults for the flags a user leaves out (one LoRA, one optimiser, one temperature for
# every env), sized like the single envs' own (their specs' `defaults`).
MIX_DEFAULTS: dict[str, Any] = {"groups_per_step": 4, "rollouts_per_group": 4, "temperature": 0.7, "lora_rank": 16,
                                "sft_epochs": 2, "sft_learning_rate": 1e-3, "max_training_steps": 4}
# Config fields each mixed env keeps its own value of (its spec's default, else the run's) unless the flag is given.
PER_ENV_FIELDS = ("max_tokens", "max_steps")


@dataclass(frozen=True)
class MixedEnv:
    """One env of a mix: its typed options (None for an env without any) and its own turn limits."""

    options: Any
    max_tokens: int
    max_steps: int | None


@dataclass(frozen=True)
class MixOptions:
    """A mixed run's `cfg.env_options`: env -> its `MixedEnv` (envs/mix/composite.py `env_config` reads it)."""

    envs: Mapping[str, MixedEnv]

    def __getitem__(self, env: str) -> MixedEnv:
        return self.envs[env]

    def validate(self) -> None:
        """Each env's own check (envs/options.py `check_options` calls this for a mixed run)."""
        for entry in self.envs.values():
            check_options(entry.options)

    def hash_view(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """As mixed runs have always been hashed: per env, its options and turn limits under env_options."""
        top: dict[str, Any] = {}
        own: dict[str, Any] = {}
        for env, entry in self.envs.items():
            env_top, env_own = hash_view(entry.options)
            top |= env_top
            own[env] = env_own | {"max_tokens": entry.max_tokens, "max_steps": entry.max_steps}
        return top, own


def parse_mix(text: str) -> dict[str, float]:
    """'gmsh=0.3,r2e=0.4,openspiel=0.3' -> {env: share}, sorted by env; MixError naming --mix otherwise."""
    return parse_shares(text, env_names())


def mix_env(text: str) -> EnvSpec:
    """The composite env of `--mix TEXT` (envs/mix/composite.py)."""
    return composite_env(parse_mix(text), load_spec)


def mix_problem(env: str, mix: str) -> str | None:
    """What is wrong with a config's mix (a config built in code is checked as one from flags), or None."""
    try:
        parse_mix(mix)
    except MixError as exc:
        return str(exc)
    return None if env == MIX else f"--mix: the run's env is the mix; leave --env out (got --env {env})"


def mix_config_values(values: dict[str, Any], given: set[str]) -> tuple[dict[str, Any], MixOptions]:
    """A mixed run's parsed flags -> (the config fields, its typed options: per env, its options and limits)."""
    shares = parse_mix(values["mix"])
    if "env" in given and values["env"] != MIX:
        raise MixError(f"--mix: the run's env is the mix; leave --env out (got --env {values['env']})")
    if "dataset" in given:
        raise MixError("--dataset names one env's data; with --mix every env loads its own (leave --dataset out)")
    values = {**values, "env": MIX, "mix": format_mix(shares)}
    values |= {key: value for key, value in MIX_DEFAULTS.items() if key not in given}
    envs: dict[str, MixedEnv] = {}
    for env in shares:
        defaults = {key: value for key, value in load_spec(env).defaults.items() if key not in given}
        _, options = resolve_env_options(env, {**values, **defaults}, given, mixed=tuple(shares))
        envs[env] = MixedEnv(options, *(defaults.get(key, values[key]) for key in PER_ENV_FIELDS))
    common, _ = resolve_env_options(next(iter(shares)), values, given, mixed=tuple(shares))
    return common, MixOptions(envs)
