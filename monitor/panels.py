"""The report's panels: which figures of `history.jsonl` are drawn together, in what order, in which unit, and
what each line is called (monitor/report.py draws them).

One panel answers one question and holds one unit (a reward beside a count hides both). Learning comes first
(train reward, held-out reward and pass rate, the losses, then the env's own figures, found by name and grouped by
unit); how the steps went next; health, disk and service-node figures last, under a collapsed section of the
page: they explain a bad run, they are not what a run is read for. Legends name lines in words (`label_of`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

UNIT_LABELS = {"reward": "reward", "rate": "rate, 0-1", "count": "count", "seconds": "seconds", "mb": "MB",
               "gb": "GB", "ratio": "ratio", "loss": "loss", "norm": "gradient norm", "corr": "correlation, -1 to 1",
               "value": "value"}


@dataclass
class Panel:
    title: str
    unit: str
    keys: list[str]
    section: str = "run"  # "learning" (read first), "run" (how the steps went), "health" (collapsed)


# The questions a person asks of a run, in reading order. Did it learn (train reward, held-out reward and pass
# rate, the losses) comes first, the env's own figures right after; then how the steps went; health, disk and
# service figures last, collapsed: they explain a bad run, they are not what a run is read for.
LEARNING = [
    Panel("Train reward per step", "reward", ["train/reward_mean", "train/reward_min", "train/reward_max"],
          "learning"),
    Panel("Held-out evaluation: reward", "reward", ["val/reward_mean", "val/reward_ci_low", "val/reward_ci_high"],
          "learning"),
    Panel("Held-out evaluation: pass rate", "rate", ["val/pass_rate"], "learning"),
    Panel("RL policy loss", "loss", ["train/loss"], "learning"),
    Panel("SFT loss (per epoch)", "loss", ["loss/train"], "learning"),
]
RUN = [
    Panel("Rollout outcomes", "rate", ["train/finished_mean", "train/zero_variance_group_share",
                                       "train/exception_rate"]),
    Panel("Agent turns per rollout", "count", ["train/agent_steps_mean", "val/agent_steps_mean"]),
    Panel("Completion tokens per rollout", "count", ["train/completion_tokens_mean"]),
    Panel("Time per step", "seconds", ["train/rollout_seconds_mean", "train/gather_seconds", "train/step_seconds",
                                       "train/batch_wait_seconds", "train/train_seconds"]),
    Panel("Off-policy data (--max-steps-off-policy)", "count", ["train/off_policy_steps_mean",
                                                                "train/off_policy_steps_max",
                                                                "train/stale_groups_dropped"]),
    Panel("Rollouts and what was trained", "count", ["train/rollouts", "train/failed_rollouts",
                                                     "train/trained_groups", "train/trained_sequences",
                                                     "train/num_gradient_steps", "train/dropped_too_long"]),
    Panel("Trained tokens per step", "count", ["train/trained_tokens"]),
    Panel("Gradient norm", "norm", ["train/grad_norm", "loss/grad_norm"]),
    Panel("Sampler/trainer probability agreement", "corr", ["train/probs_corr"]),
]
HEALTH = [
    Panel("Trainer memory", "mb", ["train/health/trainer_rss_mb"], "health"),
    Panel("Disk", "gb", ["train/health/disk_free_gb", "train/health/rollout_root_gb"], "health"),
    Panel("Health events", "count", ["train/health/child_processes", "train/health/stale_dirs_removed",
                                     "train/health/warnings"], "health"),
]
FIXED = LEARNING + RUN + HEALTH
# Legends name each line as a reader would; a key not named here is named from its parts (`label_of`).
LABELS = {
    "train/reward_mean": "train reward (mean)", "train/reward_min": "train reward (min)",
    "train/reward_max": "train reward (max)", "val/reward_mean": "held-out reward (mean)",
    "val/reward_ci_low": "held-out reward, 90% CI low", "val/reward_ci_high": "held-out reward, 90% CI high",
    "val/pass_rate": "held-out pass rate", "train/loss": "RL policy loss", "loss/train": "SFT loss",
    "train/finished_mean": "rollouts that finished (share)",
    "train/zero_variance_group_share": "groups scored alike (share)",
    "train/exception_rate": "rollouts that raised (share)", "train/agent_steps_mean": "train turns (mean)",
    "val/agent_steps_mean": "held-out turns (mean)", "train/completion_tokens_mean": "completion tokens (mean)",
    "train/rollout_seconds_mean": "one rollout (mean)", "train/gather_seconds": "gathering rollouts",
    "train/step_seconds": "whole step", "train/batch_wait_seconds": "trainer waiting for rollouts",
    "train/train_seconds": "training", "train/off_policy_steps_mean": "policy lag, steps (mean)",
    "train/off_policy_steps_max": "policy lag, steps (max)", "train/stale_groups_dropped": "stale groups dropped",
    "train/rollouts": "rollouts scored", "train/failed_rollouts": "rollouts failed",
    "train/trained_groups": "groups trained", "train/trained_sequences": "sequences trained",
    "train/num_gradient_steps": "gradient steps", "train/dropped_too_long": "sequences too long, dropped",
    "train/trained_tokens": "tokens trained", "train/grad_norm": "RL gradient norm",
    "loss/grad_norm": "SFT gradient norm", "train/probs_corr": "sampler/trainer probability correlation",
    "train/health/trainer_rss_mb": "trainer memory (RSS)", "train/health/disk_free_gb": "disk free",
    "train/health/rollout_root_gb": "rollout folder size", "train/health/child_processes": "child processes",
    "train/health/stale_dirs_removed": "stale folders removed", "train/health/warnings": "health warnings",
}
SUFFIXES = {"mean": "mean", "min": "min", "max": "max", "std": "std", "s": "s"}  # name_mean -> "name (mean)"


def label_of(key: str) -> str:
    """A metric key as a legend names it: `LABELS`, else its parts: `train/gmsh/success_rate` -> "gmsh: success
    rate", `val/toy/reward_mean` -> "held-out toy: reward (mean)", `train/nodes/gmsh/node0/calls` -> "gmsh node0:
    calls" (the panel's title already says these are service nodes)."""
    if key in LABELS:
        return LABELS[key]
    parts = key.split("/")
    split = parts.pop(0) if len(parts) > 1 and parts[0] in ("train", "val") else ""
    if len(parts) > 1 and parts[0] in GROUPS:
        parts.pop(0)
    words = parts[-1].split("_")
    if len(words) > 1 and words[-1] in SUFFIXES:
        name = f"{' '.join(words[:-1])} ({SUFFIXES[words[-1]]})"
    else:
        name = " ".join(words)
    text = f"{' '.join(parts[:-1])}: {name}" if len(parts) > 1 else name
    return f"held-out {text}" if split == "val" else text


# The reward preflight's figures ride on one step's row: the headline shows them (`reward_check_text`), no chart.
REWARD_CHECK = "train/reward_check/"
# ART's own averages of what the panels above already show, and bookkeeping nobody plots.
DUPLICATES = {"train/reward", "train/reward_std", "train/reward_std_dev", "train/agent_steps", "train/finished",
              "train/rollout_seconds", "train/completion_tokens", "train/epoch"}
COUNT_WORDS = {"chars", "tokens", "files", "steps", "queries", "restarts", "messages", "tests", "elements", "nodes",
               "groups", "rollouts", "sequences", "processes", "warnings", "removed", "missing", "found", "expected",
               "matching", "required", "calls", "cells", "lines", "errors", "requests", "failovers", "retries",
               "attempts", "failures", "moves", "answers"}
GROUPS = {"health": "Health", "nodes": "Service nodes"}  # train/<prefix>/...: figures about the run, not the env


def unit_of(key: str, values: list[float]) -> str:
    """The unit of a figure from its name (`*_seconds`, `*_mb`, `*_rate`, `*_chars`, ...), else from its values."""
    name = key.rsplit("/", 1)[-1]
    words = set(name.split("_"))
    if "reward" in name or name == "weighted_sum":
        return "reward"
    if words & {"seconds", "s"}:
        return "seconds"
    if name.endswith("_mb"):
        return "mb"
    if name.endswith("_gb"):
        return "gb"
    if words & {"rate", "share"}:
        return "rate"
    if words & COUNT_WORDS:
        return "count"
    if "ratio" in words or name.startswith("ratio"):
        return "ratio"
    if values and all(0.0 <= v <= 1.0 for v in values):
        return "rate"
    return "value"


def series(rows: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    points = [(int(r["step"]), float(r[key])) for r in rows if isinstance(r.get(key), int | float)]
    return [p[0] for p in points], [p[1] for p in points]


def panels(rows: list[dict[str, Any]]) -> list[Panel]:
    """The panels with data: the fixed ones, plus the env's own figures grouped by unit (one panel per unit)."""
    keys = sorted({k for r in rows for k in r})
    fixed = {k for p in FIXED for k in p.keys}
    extra: dict[tuple[str, str], list[str]] = {}
    for key in keys:
        if not key.startswith("train/") or key in fixed or key in DUPLICATES or key.startswith(REWARD_CHECK):
            continue
        unit = unit_of(key, series(rows, key)[1])
        part = key.split("/")[1]
        mixed = key.count("/") > 1 and f"train/{part}/groups" in keys  # an env of a --mix run (envs/mix/mix.py)
        group = f"Mixed env {part}" if mixed else GROUPS.get(part, "Reward breakdown and env figures")
        if mixed and unit == "reward":  # one reward panel per env: its train figures beside its held-out mean
            held_out = [k for k in [f"val/{part}/reward_mean"] if k in keys]  # kept last
            panel = extra.setdefault((group, unit), held_out)
            panel.insert(0 if key.endswith("/reward_mean") else len(panel) - len(held_out), key)
            continue
        # figures without a known unit each get a panel of their own, so no two of them share an axis
        extra.setdefault((group, unit if unit != "value" else key), []).append(key)
    found = [Panel(group if unit in UNIT_LABELS else f"{group}: {label_of(unit)}",
                   unit if unit in UNIT_LABELS else "value", keys) for (group, unit), keys in extra.items()]
    run_groups = tuple(GROUPS.values())
    env_panels = [replace(p, section="learning") for p in found if not p.title.startswith(run_groups)]
    health = [replace(p, section="health") for p in found if p.title.startswith(run_groups)]
    ordered = LEARNING + env_panels + RUN + HEALTH + health
    return [p for p in ordered if any(series(rows, k)[0] for k in p.keys)]
