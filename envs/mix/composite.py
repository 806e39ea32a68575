"""The composite env of a mixed run (`--mix`, envs/mix/mix.py): its parts' specs, dispatched by each scenario's env.

Every mixed env keeps what makes it itself: its scenarios, rollout, services, figures, held-out set, demonstrations
and options. The composite only tags and dispatches:
- scenarios are wrapped with their env (ids `<env>/<id>`, unique across envs); the env's rollout gets its own
  scenario back, so its trajectories are what a single-env run makes (a line `mix: env <env>` is added to their
  logs, since a mixed run's step logs are named after the mix);
- each step's groups are drawn by ratio with one resumable position per env (envs/mix/cursor.py);
- each env's rollouts run with its own turn limits on a copy of the run's rollout context;
- figures: each env's generic ones (rollouts/metrics.py) and its own, under `<env>/`, beside the run's totals
  (so history.jsonl holds `train/<env>/reward`, `val/<env>/reward`, ...); evaluation covers every env's held-out
  set; the SFT stage gets every env's demonstrations.

Below the registry (which builds the composite for `get_env("mix", ...)`): it is handed the specs, never looks
them up, so nothing here imports envs/registry.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from collections.abc import AsyncIterator, Callable, Collection
from pathlib import Path
from typing import Any

from envs.mix.cursor import ENV_KEY, MixCursor
from envs.spec import EnvFlagError, EnvSpec
from rollouts.scenario import DatasetError, Scenario

MIX = "mix"  # the env name of a mixed run (also envs.registry.MIX)
RATIO_TOLERANCE = 1e-6


class MixError(EnvFlagError):
    """A bad --mix, or a flag that does not go with it; the message names the flag."""


def parse_mix(text: str, known: Collection[str]) -> dict[str, float]:
    """'gmsh=0.3,r2e=0.4,openspiel=0.3' -> {env: share}, sorted by env; MixError naming --mix otherwise.
    `known`: the registered env names."""
    shares: dict[str, float] = {}
    choices = ", ".join(sorted(known))
    for item in (part.strip() for part in text.split(",")):
        name, sep, value = (piece.strip() for piece in item.partition("="))
        if not sep or not name:
            raise MixError(f"--mix: {item!r} is not ENV=RATIO (e.g. --mix toy=0.5,openspiel=0.5)")
        if name not in known:
            raise MixError(f"--mix: unknown env {name!r}; choose from {choices}")
        if name in shares:
            raise MixError(f"--mix: {name} is given twice")
        try:
            share = float(value)
        except ValueError:
            raise MixError(f"--mix: {name}={value!r} is not a number") from None
        if not (share > 0 and math.isfinite(share)):
            raise MixError(f"--mix: {name}={value} must be a ratio above 0")
        shares[name] = share
    if abs(sum(shares.values()) - 1) > RATIO_TOLERANCE:
        raise MixError(f"--mix: the ratios sum to {sum(shares.values()):.10g}, not 1")
    return dict(sorted(shares.items()))


def format_mix(shares: dict[str, float]) -> str:
    """The canonical spelling kept in the config (so the same mix in another order has the same config hash).
    Shares keep 15 significant digits (every ratio typed with up to 15 reads back as itself): a rounded spelling
    would change the shares drawn by, and could fail the sum check the config gets again (`mix_problem`)."""
    return ",".join(f"{env}={share:.15g}" for env, share in shares.items())


def env_config(cfg: Any, env: str) -> Any:
    """The run's config as `env` alone would see it: its name, its own typed options and turn limits (the mix's
    options, `cfg.env_options`, hold one entry per env: envs/mix/mix.py `MixOptions`). A config built in code
    without them gives the env its options' defaults and the run's limits."""
    entries = getattr(cfg.env_options, "envs", None) or {}
    entry = entries.get(env)
    if entry is None:
        return dataclasses.replace(cfg, env=env, mix=None, env_options=None)
    return dataclasses.replace(cfg, env=env, mix=None, env_options=entry.options, max_tokens=entry.max_tokens,
                               max_steps=entry.max_steps)


def env_of(group: Any) -> str:
    """A group's env, from its scenario id (`<env>/<id>`), known even when every rollout of it failed."""
    return str(group.metadata.get("scenario_id", "")).partition("/")[0]


def mixed_scenario(env: str, scenario: Scenario, settings: dict[str, int]) -> Scenario:
    return Scenario(id=f"{env}/{scenario.id}", prompt=scenario.prompt,
                    data={ENV_KEY: env, "scenario": scenario, "settings": settings})


def _step_metrics(specs: dict[str, EnvSpec], groups: list[Any]) -> dict[str, float]:
    """Per env: its generic figures, its share of the step, its pass rate and its own figures."""
    from rollouts.evaluate import PASS_REWARD
    from rollouts.metrics import step_metrics as generic

    figures: dict[str, float] = {}
    for env, spec in specs.items():
        mine = [g for g in groups if env_of(g) == env]
        own = {"groups": float(len(mine))}
        if mine:
            own |= generic(mine, sum(len(g.trajectories) + len(g.exceptions) for g in mine))
            rewards = [t.reward for g in mine for t in g.trajectories]
            if rewards:
                own["pass_rate"] = sum(r >= PASS_REWARD - 1e-9 for r in rewards) / len(rewards)
            if spec.step_metrics is not None:
                own |= spec.step_metrics(mine)
        # an env's own figures may carry its name already (`openspiel/legal_rate`): one prefix, not two
        figures |= {key if key.startswith(f"{env}/") else f"{env}/{key}": value for key, value in own.items()}
    return figures


def mix_env(shares: dict[str, float], load: Callable[[str], EnvSpec]) -> EnvSpec:
    """The composite env of a mix's `shares` ({env: ratio}, from `parse_mix`); `load` gives an env's spec."""
    specs = {env: load(env) for env in shares}

    def load_split(cfg: Any, split: str) -> list[Scenario]:
        scenarios: list[Scenario] = []
        for env, spec in specs.items():
            view = env_config(cfg, env)
            if split == "train":
                own = spec.load_scenarios(view)
                if not own:
                    raise DatasetError(f"--mix: {env} loaded no scenarios")
            else:
                own = spec.load_val(view) if spec.load_val is not None else []
            settings = {"max_steps": view.max_steps or spec.default_max_steps, "max_tokens_per_turn": view.max_tokens}
            scenarios += [mixed_scenario(env, s, settings) for s in own]
        return scenarios

    async def rollout(ctx: Any, scenario: Scenario) -> Any:
        env = scenario.data[ENV_KEY]
        ctx.client()  # the run's model client, made on the run's context so the copies share it (the run closes it)
        own = dataclasses.replace(ctx, settings=dataclasses.replace(ctx.settings, **scenario.data["settings"]))
        trajectory = await specs[env].rollout(own, scenario.data["scenario"])
        trajectory.logs.append(f"mix: env {env}")
        return trajectory

    @contextlib.asynccontextmanager
    async def services(cfg: Any) -> AsyncIterator[dict[str, Any]]:
        async with contextlib.AsyncExitStack() as stack:
            merged: dict[str, Any] = {}
            owners: dict[str, str] = {}
            for env, spec in specs.items():
                if spec.services is None:
                    continue
                started = await stack.enter_async_context(spec.services(env_config(cfg, env)))
                for name in started:
                    if name in merged:
                        raise RuntimeError(f"--mix: {owners[name]} and {env} both name a service {name!r}")
                    owners[name] = env
                merged |= started
            yield merged

    demo_specs = {env: spec for env, spec in specs.items() if spec.write_demos is not None}

    def write_demos(cfg: Any, out: Path) -> None:
        """Every env's demonstrations, one file after another (written aside, then renamed: a kill leaves none)."""
        parts = []
        for env, spec in demo_specs.items():
            part = out.with_name(f".{out.stem}.{env}{out.suffix}")  # an env may check the suffix (.jsonl)
            spec.write_demos(env_config(cfg, env), part)  # type: ignore[misc]
            parts.append(part)
        tmp = out.with_name(f".{out.name}.tmp")
        with tmp.open("w") as joined:
            for part in parts:
                text = part.read_text()
                joined.write(text if not text or text.endswith("\n") else text + "\n")
                part.unlink()
        os.replace(tmp, out)

    return EnvSpec(
        name=MIX, load_scenarios=lambda cfg: load_split(cfg, "train"), rollout=rollout,
        default_max_steps=max(spec.default_max_steps for spec in specs.values()),
        services=services if any(spec.services for spec in specs.values()) else None,
        step_metrics=lambda groups: _step_metrics(specs, groups), load_val=lambda cfg: load_split(cfg, "val"),
        runs_model_code=any(spec.runs_model_code for spec in specs.values()),
        write_demos=write_demos if demo_specs else None,
        make_cursor=lambda saved: MixCursor.restore(saved, shares))
