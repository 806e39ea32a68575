"""The reward preflight: before any training, prove on a few scenarios that the env's reward separates a right
answer from doing nothing and from cheating (`train.py --check-rewards`, and automatically before a run's first RL
step unless `--skip-reward-check`).

Each probe of `EnvSpec.reward_probes` (envs/probes.py: the oracle, a do-nothing reply, the cheats) is replayed
through the env's real `rollout` and the services the run started, with a scripted policy in place of the model
(`ScriptedContext`). The reward separates them when, on every sampled scenario, the oracle reaches the env's
`pass_threshold` (where the env has an oracle), the do-nothing reply and every cheat stay below it, and no cheat
scores above doing nothing: a cheat that pays more than silence is a gradient RL will follow.

Envs with a frozen executor (planner, workflow) get a reference executor here instead of the base model
(`ReferenceExecutor`): it solves the scenario's own question and copies any answer it is told. So the check is
about the reward and about the most gullible executor, not about the frozen model's skill (a weak executor would
fail the oracle and block training for no fault of the reward), and it needs no model at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import re
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from openai.types.chat.chat_completion import Choice
from openai.types.chat.chat_completion_message import ChatCompletionMessage

from agent.executor import ExecutorReply
from envs.probes import RewardProbe
from rollouts.context import RolloutContext, RolloutSettings
from rollouts.scenario import Scenario

DEFAULT_SCENARIOS = 3
STATE_KEY = "reward_check"  # state.json's record of the check (trainer/run.py skips a passed one on resume)


class RewardCheckFailed(RuntimeError):
    """The reward does not separate the probes; the message is one line naming the env, scenario and probe."""


@dataclass
class ScriptedContext(RolloutContext):
    """A rollout context whose "model" says the probe's replies in order (the last one repeats)."""

    replies: tuple[str, ...] = ("",)
    turns: int = 0

    async def complete(self, messages: list[dict[str, Any]], max_tokens: int) -> Choice:
        reply = self.replies[min(self.turns, len(self.replies) - 1)]
        self.turns += 1
        # No logprobs: the rollouts that read them (planner's token count) fall back to a character estimate.
        return Choice(finish_reason="stop", index=0, logprobs=None,
                      message=ChatCompletionMessage(role="assistant", content=reply))

    async def aclose(self) -> None:  # no model client was ever opened
        return None


_DICTATED = re.compile(r"(?:####|answer\s*(?:is|:|=))\s*\$?\s*(-?[\d,]*\.?\d+)", re.IGNORECASE)


@dataclass
class ReferenceExecutor:
    """The preflight's frozen executor: answers the scenario's own question correctly (`Answer: X` and `#### X`,
    the forms both envs read), copies an answer a prompt dictates (`#### 42`, `the answer is 42`), and says it
    cannot tell otherwise. Deterministic, so a probe scores the same every time."""

    question: str
    answer: str | None
    calls: int = 0

    async def complete(self, messages: list[dict[str, Any]], *, max_tokens: int,
                       temperature: float = 0.0) -> ExecutorReply:
        self.calls += 1
        prompt = str(messages[-1].get("content", "")) if messages else ""
        if self.answer is not None and self.question.strip() and self.question.strip() in prompt:
            text = f"Working it out.\nAnswer: {self.answer}\n#### {self.answer}"
        elif dictated := _DICTATED.findall(prompt):
            text = f"#### {dictated[-1]}"
        else:
            text = "I cannot tell from this."
        return ExecutorReply(text=text, prompt_tokens=max(1, len(prompt) // 4), completion_tokens=len(text) // 4)

    async def aclose(self) -> None:
        return None


def reference_answer(scenario: Scenario) -> str | None:
    """The scenario's gold answer where it keeps one (`answer`, or the first of `answers`), else None."""
    data = scenario.data if isinstance(scenario.data, dict) else {}
    if isinstance(data.get("answer"), str | int | float):
        return str(data["answer"])
    answers = data.get("answers")
    return str(answers[0]) if isinstance(answers, list) and answers else None


def _with_reference_executor(services: dict[str, Any], scenario: Scenario) -> dict[str, Any]:
    """A copy of the services where every executor owner (agent.openai_executor.ExecutorOwner) has the reference
    executor; the run's own objects are never changed."""
    from agent.openai_executor import ExecutorOwner

    swapped = dict(services)
    for name, service in services.items():
        if isinstance(service, ExecutorOwner) and dataclasses.is_dataclass(service):
            swapped[name] = dataclasses.replace(service, executor=ReferenceExecutor(scenario.prompt,
                                                                                    reference_answer(scenario)))
    return swapped


@dataclass(frozen=True)
class ProbeScore:
    name: str
    kind: str
    reward: float | None  # None: the rollout raised (`error` says why)
    error: str | None = None


@dataclass
class ScenarioRow:
    scenario_id: str
    scores: list[ProbeScore] = field(default_factory=list)

    def of_kind(self, kind: str) -> list[ProbeScore]:
        return [s for s in self.scores if s.kind == kind]

    @property
    def oracle(self) -> float | None:
        return next((s.reward for s in self.of_kind("oracle")), None)

    @property
    def nothing(self) -> float | None:
        return next((s.reward for s in self.of_kind("nothing")), None)

    @property
    def best_cheat(self) -> ProbeScore | None:
        cheats = [s for s in self.of_kind("cheat") if s.reward is not None]
        return max(cheats, key=lambda s: s.reward or 0.0) if cheats else None


@dataclass
class PreflightResult:
    """One env's check: a row per sampled scenario, and the first failure as one line (None: separated)."""

    env: str
    pass_threshold: float
    rows: list[ScenarioRow] = field(default_factory=list)
    seconds: float = 0.0
    note: str | None = None  # what the check could not cover: no probes at all, or no oracle
    failure: str | None = None

    @property
    def passed(self) -> bool:
        return self.failure is None

    def judge(self) -> PreflightResult:
        """Sets `failure` to the first broken rule, scenario by scenario, and `note` when no row has an oracle."""
        threshold = self.pass_threshold
        if self.rows and all(not row.of_kind("oracle") for row in self.rows):
            self.note = self.note or "no oracle: do-nothing and cheats checked only"
        for row in self.rows:
            where = f"{self.env}: scenario {row.scenario_id}"
            for score in row.scores:
                if score.kind == "oracle" and (score.reward is None or score.reward < threshold):
                    got = f"failed ({score.error})" if score.reward is None else f"scores {score.reward:.3f}"
                    self.failure = f"{where}: probe {score.name} {got}, below the pass threshold {threshold:g}"
                elif score.kind != "oracle" and score.reward is not None and score.reward >= threshold:
                    self.failure = (f"{where}: probe {score.name} scores {score.reward:.3f}, at or above the pass "
                                    f"threshold {threshold:g}")
                elif (score.kind == "cheat" and score.reward is not None and row.nothing is not None
                      and score.reward > row.nothing + 1e-9):
                    self.failure = (f"{where}: probe {score.name} scores {score.reward:.3f}, above do-nothing's "
                                    f"{row.nothing:.3f}")
                if self.failure:
                    return self
        return self

    def table(self) -> str:
        """The small table the CLI prints: scenario, oracle, do-nothing, best cheat."""
        head = f"reward check: {self.env} (pass threshold {self.pass_threshold:g}, {self.seconds:.1f}s)"
        if not self.rows:
            return f"{head}\n  {self.note or 'no scenarios'}"
        width = max(len("scenario"), *(len(r.scenario_id) for r in self.rows))
        lines = [head, f"  {'scenario':<{width}}  {'oracle':>7}  {'nothing':>7}  best cheat"]
        for row in self.rows:
            cheat = row.best_cheat
            lines.append(f"  {row.scenario_id:<{width}}  {_cell(row.oracle, bool(row.of_kind('oracle'))):>7}  "
                         f"{_cell(row.nothing, bool(row.of_kind('nothing'))):>7}  "
                         + (f"{cheat.reward:.3f} {cheat.name}" if cheat else "-"))
        if self.note:
            lines.append(f"  note: {self.note}")
        lines.append(f"  {'separated' if self.passed else 'NOT separated: ' + str(self.failure)}")
        return "\n".join(lines)

    def summary(self) -> dict[str, Any]:
        """What state.json keeps and the report shows (JSON-able)."""
        def worst(values: list[float | None], pick: Any) -> float | None:
            known = [v for v in values if v is not None]
            return pick(known) if known else None

        cheats = [r.best_cheat for r in self.rows if r.best_cheat is not None]
        best = max(cheats, key=lambda s: s.reward or 0.0) if cheats else None
        return {"env": self.env, "passed": self.passed, "failure": self.failure, "note": self.note,
                "pass_threshold": self.pass_threshold, "scenarios": [r.scenario_id for r in self.rows],
                "oracle_min": worst([r.oracle for r in self.rows], min),
                "nothing_max": worst([r.nothing for r in self.rows], max),
                "best_cheat": best.reward if best else None, "best_cheat_name": best.name if best else None,
                "seconds": round(self.seconds, 3)}


def _cell(value: float | None, present: bool) -> str:
    if not present:
        return "none"
    return "error" if value is None else f"{value:.3f}"


def sample_scenarios(scenarios: list[Scenario], count: int, seed: int) -> list[Scenario]:
    """`count` scenarios drawn with the run's seed (the same ones every time for the same data and seed)."""
    if len(scenarios) <= count:
        return list(scenarios)
    return random.Random(f"reward-preflight:{seed}").sample(scenarios, count)


def rollout_settings(config: Any, spec: Any) -> RolloutSettings:
    return RolloutSettings(max_steps=config.max_steps or spec.default_max_steps,
                           max_context_tokens=config.max_context_tokens, max_tokens_per_turn=config.max_tokens,
                           temperature=config.temperature)


async def _score(spec: Any, probe: RewardProbe, scenario: Scenario, services: dict[str, Any],
                 settings: RolloutSettings, model: Any, slots: asyncio.Semaphore) -> ProbeScore:
    # Every scripted turn gets its chance: the check is about what the reward makes of an answer, not about the
    # run's turn budget (a 2-turn smoke run must not fail r2e's 4-turn oracle).
    settings = dataclasses.replace(settings, max_steps=max(settings.max_steps, len(probe.replies)))
    async with slots:
        ctx = ScriptedContext(model=model, settings=settings, services=_with_reference_executor(services, scenario),
                              replies=probe.replies)
        try:
            trajectory = await spec.rollout(ctx, scenario)
        except Exception as exc:  # a probe's rollout that raises earns nothing, as a failed rollout in training
            return ProbeScore(probe.name, probe.kind, None, f"{type(exc).__name__}: {str(exc)[:160]}")
        return ProbeScore(probe.name, probe.kind, float(trajectory.reward))


async def run_preflight(spec: Any, config: Any, services: dict[str, Any], *, count: int = DEFAULT_SCENARIOS,
                        model: Any = None, max_concurrent: int = 8,
                        scenarios: list[Scenario] | None = None) -> PreflightResult:
    """Scores every probe of `count` sampled scenarios of `spec` (or of the `scenarios` given) through its rollout
    and `services`."""
    started = time.monotonic()
    result = PreflightResult(env=spec.name, pass_threshold=spec.pass_threshold)
    if spec.reward_probes is None:
        result.note = "no reward probes for this env: nothing checked"
        return result
    if scenarios is None:
        scenarios = sample_scenarios(spec.load_scenarios(config), count, config.seed)
    settings = rollout_settings(config, spec)
    model = model if model is not None else SimpleNamespace(name="reward-preflight", inference_base_url=None,
                                                            inference_api_key=None, base_model=None)
    slots = asyncio.Semaphore(max(1, max_concurrent))
    probes = {s.id: spec.reward_probes(config, s) for s in scenarios}
    scored = await asyncio.gather(*(asyncio.gather(*(_score(spec, p, s, services, settings, model, slots)
                                                     for p in probes[s.id])) for s in scenarios))
    result.rows = [ScenarioRow(s.id, list(scores)) for s, scores in zip(scenarios, scored, strict=True)]
    result.seconds = time.monotonic() - started
    return result.judge()


def env_parts(config: Any) -> list[tuple[Any, Any]]:
    """(spec, config view) per env the run trains: one, or each env of a mixed run (envs/mix/mix.py)."""
    from envs.registry import MIX, get_env

    if config.env == MIX and config.mix:
        from envs.mix.mix import env_config, parse_mix

        return [(get_env(env), env_config(config, env)) for env in parse_mix(config.mix)]
    return [(get_env(config.env), config)]


async def check_run(config: Any, services: dict[str, Any], model: Any = None,
                    count: int = DEFAULT_SCENARIOS) -> list[PreflightResult]:
    """The automatic check of a training run: its services are started already (a mixed run's merged ones hold
    each env's under its own name)."""
    return [await run_preflight(spec, view, services, count=count, model=model) for spec, view in env_parts(config)]


async def check_standalone(config: Any, count: int = DEFAULT_SCENARIOS) -> list[PreflightResult]:
    """`--check-rewards`: each env's services started as training starts them, the check, the services stopped."""
    from monitor.health import RunDir

    results = []
    run_dir = RunDir.claim(config.rollout_root)
    try:
        for spec, view in env_parts(config):
            async with contextlib.AsyncExitStack() as stack:
                services: dict[str, Any] = {}
                if spec.services is not None:
                    env_view = dataclasses.replace(view, rollout_root=str(run_dir.path))
                    services = await stack.enter_async_context(spec.services(env_view))
                results.append(await run_preflight(spec, view, services, count=count))
    finally:
        run_dir.release()
    return results


def first_failure(results: list[PreflightResult]) -> str | None:
    return next((r.failure for r in results if r.failure), None)


def state_record(results: list[PreflightResult]) -> dict[str, Any]:
    """state.json's `reward_check`: passed overall, the first failure, and each env's summary."""
    return {"passed": first_failure(results) is None, "failure": first_failure(results),
            "envs": {r.env: r.summary() for r in results}}


def history_figures(results: list[PreflightResult]) -> dict[str, float]:
    """The figures the first RL step's history row carries (`train/reward_check/...`)."""
    figures: dict[str, float] = {"reward_check/passed": float(first_failure(results) is None),
                                 "reward_check/seconds": sum(r.seconds for r in results)}
    for r in results:
        summary = r.summary()
        prefix = "reward_check/" if len(results) == 1 else f"reward_check/{r.env}/"
        for key in ("oracle_min", "nothing_max", "best_cheat"):
            if summary[key] is not None:
                figures[prefix + key] = float(summary[key])
    return figures


def report_results(results: list[PreflightResult]) -> None:
    """Prints each env's table; raises RewardCheckFailed (one line) when any env's reward does not separate."""
    for result in results:
        print(result.table(), flush=True)
    if failure := first_failure(results):
        raise RewardCheckFailed(f"reward check failed: {failure} (fix the reward, or --skip-reward-check to train "
                                "anyway)")


async def before_training(config: Any, services: dict[str, Any], model: Any,
                          state: dict[str, Any]) -> dict[str, float]:
    """The automatic check before a run's first RL step (trainer/run.py): recorded in state.json, not repeated
    on a resume once passed, skipped by `--skip-reward-check`. Returns the figures for the first RL step's history
    row ({} when the check did not run here); raises RewardCheckFailed when the reward does not separate."""
    recorded = state.get(STATE_KEY) or {}
    if config.skip_reward_check:
        print("reward check: skipped (--skip-reward-check)", flush=True)
        if not recorded:
            model.merge_state({STATE_KEY: {"skipped": True}})
        return {}
    if recorded.get("passed"):
        print("reward check: passed at an earlier start (state.json); not repeated", flush=True)
        return {}
    results = await check_run(config, services, model)
    model.merge_state({STATE_KEY: {**state_record(results), "skipped": False}})
    report_results(results)
    return history_figures(results)
