"""Train an agent with GRPO on a LoRA adapter: `uv run python train.py --experiment-name NAME [flags]`.

This file owns the CLI -> `ExperimentConfig`, the wiring, the step loop and resume. Everything env-specific
lives in `envs/` + `rollouts/`; every figure it logs comes from `rollouts.metrics` and the backend.

Resume contract: `state.json` (written last in each step, atomically) is the only commit point. On start,
whatever a killed run left beyond the committed step (a newer checkpoint, history rows, trajectory files) is
rolled back, so each step is trained, logged and counted exactly once, and the data cursor carries on.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Set before anything imports ART/LiteLLM/HF: no network at import, no hub downloads at run time.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

log = logging.getLogger("train")

EMBEDDED_MODEL = "embedded"
# LoRA on a real pretrained model wants ART's small default; the randomly initialised embedded model is far
# from any optimum and learns the toy task within minutes only with a much larger step.
DEFAULT_LR = {"embedded": 1e-2, "pretrained": 5e-6}


def default_rollout_root() -> str:
    """Memory-backed when possible: copying a 5 MB repo per rollout took 42 ms into /dev/shm and 120-490 ms into
    a disk-backed /tmp here (bench/r2e.py), and a rollout's files live only as long as the rollout."""
    shm = Path("/dev/shm")
    base = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else os.environ.get("TMPDIR", "/tmp")
    return os.path.join(base, "art-rollouts")


class ConfigError(ValueError):
    """A flag has an unusable value; the message starts with the flag's name."""


@dataclass
class ExperimentConfig:
    experiment_name: str
    model_name: str | None = None
    project: str = "art-agent-trainer"
    base_model: str = EMBEDDED_MODEL
    backend: str = "auto"
    env: str = "r2e"
    vllm_url: str | None = None
    docker_url: list[str] = field(default_factory=list)
    gmsh_url: list[str] = field(default_factory=list)
    dataset: str | None = None
    split: str = "train"
    reward: str = "binary"
    system_prompt: str = "r2e_system_prompt"
    bash_timeout: float = 60.0
    cache_dir: str | None = None
    num_epochs: int = 3
    groups_per_step: int = 4
    rollouts_per_group: int = 8
    max_concurrent: int = 32
    max_rollouts_per_second: float = 100.0
    max_failed_share: float = 0.25
    max_steps: int | None = None
    max_context_tokens: int = 2048
    max_tokens: int = 1024
    temperature: float = 1.0
    learning_rate: float | None = None
    dataset_size: int | None = None
    toy_target: str = "a"
    log_dir: str = "logs"
    log_sample_rate: float = 0.1
    max_training_steps: int | None = None
    art_path: str = ".art"
    seed: int = 0
    advantage_balance: float = 0.0
    scale_rewards: bool = True
    loss_fn: str = "cispo"
    lora_rank: int = 8
    eval_every: int = 0
    eval_only: bool = False
    checkpoint: int | None = None
    eval_rollouts: int = 1
    keep_checkpoints: int = 0
    save_every: int = 1
    init_adapter: str | None = None
    allow_config_change: bool = False
    rollout_root: str = field(default_factory=lambda: default_rollout_root())
    health_check_interval: float = 30.0
    max_child_processes: int = 64
    max_tmp_usage_gb: float = 10.0
    wandb: str = "auto"

    # Fields that steer how a run is executed, not what it learns: changing them between a stop and a resume
    # is normal (run longer, more concurrency, another service node), so they stay out of the hash.
    RUN_CONTROL = frozenset({
        "max_training_steps", "num_epochs", "allow_config_change", "max_concurrent", "max_rollouts_per_second",
        "max_failed_share", "vllm_url", "docker_url", "gmsh_url", "log_dir", "log_sample_rate", "backend",
        "rollout_root", "health_check_interval", "max_child_processes", "max_tmp_usage_gb", "wandb", "art_path",
        "eval_every", "eval_only", "checkpoint", "eval_rollouts", "keep_checkpoints", "save_every",
    })

    def __post_init__(self) -> None:
        self.model_name = self.model_name or self.experiment_name
        if self.learning_rate is None:
            kind = "embedded" if self.base_model == EMBEDDED_MODEL else "pretrained"
            self.learning_rate = DEFAULT_LR[kind]

    def hashed_fields(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in self.RUN_CONTROL}

    def config_hash(self) -> str:
        """Short stable hash of what defines the experiment; a resume with a different one is refused."""
        blob = json.dumps(self.hashed_fields(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def validate(self) -> None:
        checks: list[tuple[bool, str]] = [
            (bool(self.experiment_name.strip()), "--experiment-name must not be empty"),
            (all(c.isalnum() or c in "-_." for c in self.model_name or ""),
             "--model-name may hold only letters, digits, '-', '_' and '.'"),
            (self.num_epochs >= 1, "--num-epochs must be at least 1"),
            (self.groups_per_step >= 1, "--groups-per-step must be at least 1"),
            (self.rollouts_per_group >= 2, "--rollouts-per-group must be at least 2 (GRPO compares rollouts)"),
            (self.max_concurrent >= 1, "--max-concurrent must be at least 1"),
            (self.max_rollouts_per_second > 0, "--max-rollouts-per-second must be positive"),
            (0 <= self.max_failed_share <= 1, "--max-failed-share must be between 0 and 1"),
            (self.max_steps is None or self.max_steps >= 1, "--max-steps must be at least 1"),
            (self.max_context_tokens >= 64, "--max-context-tokens must be at least 64"),
            (self.max_tokens >= 1, "--max-tokens must be at least 1"),
            (0 <= self.temperature <= 10, "--temperature must be between 0 and 10"),
            (self.learning_rate is not None and 0 < self.learning_rate < 1, "--learning-rate must be in (0, 1)"),
            (self.dataset_size is None or self.dataset_size >= 1, "--dataset-size must be at least 1"),
            (0 <= self.log_sample_rate <= 1, "--log-sample-rate must be between 0 and 1"),
            (self.max_training_steps is None or self.max_training_steps >= 1,
             "--max-training-steps must be at least 1"),
            (-1 <= self.advantage_balance <= 1, "--advantage-balance must be between -1 and 1"),
            (self.lora_rank >= 1, "--lora-rank must be at least 1"),
            (self.health_check_interval > 0, "--health-check-interval must be positive"),
            (self.bash_timeout > 0, "--bash-timeout must be positive"),
            (self.eval_every >= 0, "--eval-every must be 0 (off) or more"),
            (self.eval_rollouts >= 1, "--eval-rollouts must be at least 1"),
            (self.keep_checkpoints >= 0, "--keep-checkpoints must be 0 (keep all) or more"),
            (self.save_every >= 1, "--save-every must be at least 1"),
            (self.checkpoint is None or self.eval_only, "--checkpoint goes with --eval-only"),
            (self.init_adapter is None or (Path(self.init_adapter) / "adapter_config.json").is_file(),
             f"--init-adapter {self.init_adapter}: not a PEFT adapter directory (no adapter_config.json)"),
            (len(self.toy_target) == 1, "--toy-target must be exactly one character"),
            (self.base_model == EMBEDDED_MODEL or Path(self.base_model).is_dir(),
             f"--base-model {self.base_model!r} is not a local model directory (nothing is downloaded at run "
             f"time; pass a Hugging Face model folder, or '{EMBEDDED_MODEL}')"),
            (self.vllm_url is None or self.vllm_url.startswith(("http://", "https://")),
             "--vllm-url must start with http:// or https://"),
        ]
        from rollouts.registry import ENVS

        checks.append((self.env in ENVS, f"--env: unknown env {self.env!r}; choose from {', '.join(sorted(ENVS))}"))
        for flag, urls in (("--docker-url", self.docker_url), ("--gmsh-url", self.gmsh_url)):
            for url in urls:
                checks.append((url.startswith(("http://", "https://")), f"{flag} {url!r} must start with http://"))
        checks.append((self.dataset is None or Path(self.dataset).is_file(), f"--dataset {self.dataset}: no such file"))
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)


# ---- CLI ------------------------------------------------------------------------------------------------------


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line naming it (the usage text buries the reason)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    d = ExperimentConfig(experiment_name="x")
    p = OneLineParser(prog="train.py", description=__doc__.split("\n\n")[0],
                      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a("--experiment-name", required=True, help="names the run, its logs and (by default) the model")
    a("--model-name", default=None, help="ART model name (default: the experiment name)")
    a("--project", default=d.project)
    a("--base-model", default=d.base_model, help=f"a local HF model directory, or '{EMBEDDED_MODEL}'")
    a("--backend", choices=["auto", "local", "cpu"], default=d.backend)
    a("--env", default=d.env, help="environment (see rollouts/registry.py)")
    a("--vllm-url", default=None, help="external OpenAI-compatible server for rollouts (it must serve the adapter)")
    a("--docker-url", action="append", default=[], help="test service URL (repeat for several nodes)")
    a("--gmsh-url", action="append", default=[],
      help="gmsh service URL (repeat for several; token from GMSH_SERVICE_TOKEN); default: start one locally")
    a("--dataset", default=None, help="the env's own dataset file (gmsh: task parquet; r2e: rows .jsonl/.parquet)")
    a("--split", default=d.split, help="r2e: hub split when no --dataset (train, dev_10pr_v1, dev_100pr_v1)")
    a("--reward", choices=["binary", "partial"], default=d.reward, help="r2e: test reward")
    a("--system-prompt", choices=["r2e_system_prompt", "r2e_cot_system_prompt"], default=d.system_prompt)
    a("--bash-timeout", type=float, default=d.bash_timeout, help="r2e: seconds per REPL cell")
    a("--cache-dir", default=None)
    a("--num-epochs", type=int, default=d.num_epochs)
    a("--groups-per-step", type=int, default=d.groups_per_step)
    a("--rollouts-per-group", type=int, default=d.rollouts_per_group)
    a("--max-concurrent", type=int, default=d.max_concurrent, help="rollouts in flight at once")
    a("--max-rollouts-per-second", type=float, default=d.max_rollouts_per_second, help="rollout start rate limit")
    a("--max-failed-share", type=float, default=d.max_failed_share,
      help="share of a step's rollouts that may raise before the step fails")
    a("--max-steps", type=int, default=None, help="agent turns per rollout (default: the env's)")
    a("--max-context-tokens", type=int, default=d.max_context_tokens)
    a("--max-tokens", type=int, default=d.max_tokens, help="tokens per model turn")
    a("--temperature", type=float, default=d.temperature)
    a("--learning-rate", type=float, default=None,
      help=f"default {DEFAULT_LR['embedded']} for the embedded model, {DEFAULT_LR['pretrained']} otherwise")
    a("--dataset-size", type=int, default=None, help="scenarios to load (env default if omitted)")
    a("--toy-target", default=d.toy_target, help="toy env: the character to learn")
    a("--log-dir", default=d.log_dir)
    a("--log-sample-rate", type=float, default=d.log_sample_rate)
    a("--max-training-steps", type=int, default=None, help="stop once the model's step reaches N")
    a("--art-path", default=d.art_path)
    a("--seed", type=int, default=d.seed)
    a("--advantage-balance", type=float, default=d.advantage_balance)
    a("--scale-rewards", action=argparse.BooleanOptionalAction, default=d.scale_rewards)
    a("--loss-fn", choices=["cispo", "ppo"], default=d.loss_fn)
    a("--lora-rank", type=int, default=d.lora_rank)
    a("--allow-config-change", action="store_true", help="resume even if the config hash changed")
    a("--eval-every", type=int, default=0, help="evaluate on the val split every N steps (0: never)")
    a("--eval-only", action="store_true", help="evaluate the current (or --checkpoint) model and exit")
    a("--checkpoint", type=int, default=None, help="with --eval-only: the step to evaluate")
    a("--eval-rollouts", type=int, default=1, help="rollouts per val scenario")
    a("--keep-checkpoints", type=int, default=0, help="keep the K newest saved checkpoints (+latest, +best eval)")
    a("--save-every", type=int, default=1, help="checkpoints kept by --keep-checkpoints fall on every N steps")
    a("--init-adapter", default=None, help="warm-start from a Hugging Face LoRA adapter directory (CPU backend)")
    a("--rollout-root", default=d.rollout_root, help="where per-rollout work dirs live")
    a("--health-check-interval", type=float, default=d.health_check_interval)
    a("--max-child-processes", type=int, default=d.max_child_processes)
    a("--max-tmp-usage-gb", type=float, default=d.max_tmp_usage_gb)
    a("--wandb", choices=["auto", "online", "offline", "disabled"], default=d.wandb,
      help="auto: online when WANDB_API_KEY is set, else offline")
    return p


def config_from_args(argv: list[str] | None = None) -> ExperimentConfig:
    args = build_parser().parse_args(argv)
    config = ExperimentConfig(**vars(args))
    config.validate()
    return config


# ---- resume ---------------------------------------------------------------------------------------------------


@dataclass
class Cursor:
    """Where in the scenario order the next step starts; epochs reshuffle with a seed of their own."""

    epoch: int = 0
    position: int = 0

    def take(self, scenarios: list[Any], count: int, seed: int) -> tuple[list[Any], Cursor]:
        if self.position + count > len(scenarios):  # a short tail would make an uneven step: next epoch
            return Cursor(self.epoch + 1, 0).take(scenarios, count, seed)
        order = list(range(len(scenarios)))
        random.Random(f"{seed}:epoch:{self.epoch}").shuffle(order)
        chosen = [scenarios[i] for i in order[self.position : self.position + count]]
        return chosen, Cursor(self.epoch, self.position + count)


def rollback_uncommitted(model_dir: Path, committed_step: int) -> list[str]:
    """Remove what a killed run wrote past the committed step; returns what was removed, for the log."""
    removed: list[str] = []
    checkpoints = model_dir / "checkpoints"
    if checkpoints.is_dir():
        for entry in checkpoints.iterdir():
            if entry.name.startswith(".tmp-") or (entry.name.isdigit() and int(entry.name) > committed_step):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(str(entry))
    history = model_dir / "history.jsonl"
    if history.exists():
        kept, dropped = [], 0
        for line in history.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut by the kill
                dropped += 1
                continue
            if int(row.get("step", 0)) <= committed_step:
                kept.append(line)
            else:
                dropped += 1
        if dropped:
            tmp = history.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            os.replace(tmp, history)
            removed.append(f"{history} ({dropped} rows)")
    for parquet in (model_dir / "trajectories").glob("*/*.parquet"):
        if parquet.stem.isdigit() and int(parquet.stem) > committed_step:
            parquet.unlink()
            removed.append(str(parquet))
    return removed


def check_resume(config: ExperimentConfig, state: dict[str, Any]) -> None:
    previous = state.get("config_hash")
    if previous and previous != config.config_hash() and not config.allow_config_change:
        changed = state.get("config", {})
        diffs = [k for k, v in config.hashed_fields().items() if k in changed and changed[k] != v]
        detail = f" (changed: {', '.join(diffs)})" if diffs else ""
        raise ConfigError(
            f"--allow-config-change: this run's config hash {config.config_hash()} differs from the saved "
            f"{previous}{detail}; use a new --experiment-name, or pass --allow-config-change to resume anyway"
        )


# ---- the loop -------------------------------------------------------------------------------------------------


async def run(config: ExperimentConfig) -> dict[str, Any]:
    """Train until the step reaches --max-training-steps or the epochs run out; returns the final state."""
    from backends import choose_backend, create_backend
    from backends.checkpoints import best_val_step, steps_to_keep
    from backends.cpu import CPUBackendSettings
    from backends.policy import LoraSettings
    from backends.tiny_model import LORA_TARGETS, ensure_tiny_model
    from backends.trainer_model import TrainerModel
    from rollouts.context import RolloutContext, RolloutSettings
    from rollouts.evaluate import evaluate
    from rollouts.gather import GatherLimits, freeze_startup_heap, gather_step
    from rollouts.health import HealthLimits, HealthMonitor
    from rollouts.metrics import has_signal, step_metrics
    from rollouts.registry import get_env

    env = get_env(config.env)
    scenarios = env.load_scenarios(config)
    max_steps = config.max_steps or env.default_max_steps
    if len(scenarios) < config.groups_per_step:
        raise ConfigError(
            f"--groups-per-step {config.groups_per_step} is more than the {len(scenarios)} scenarios loaded"
        )
    choice = choose_backend(config.backend)
    print(f"backend: {choice.kind} ({choice.reason})", flush=True)

    base_model, lora_targets = config.base_model, "all-linear"
    if base_model == EMBEDDED_MODEL:
        base_model, lora_targets = ensure_tiny_model(config.art_path), LORA_TARGETS
    model = TrainerModel(name=config.model_name, project=config.project, base_model=base_model,
                         base_path=config.art_path)
    _configure_wandb(model, config)
    model_dir = Path(config.art_path) / config.project / "models" / config.model_name
    state = model.read_state() or {}
    check_resume(config, state)
    committed = int(state.get("step", 0))
    from rollouts.logs import remove_steps_after, write_step

    for item in rollback_uncommitted(model_dir, committed) + remove_steps_after(config.log_dir, config.experiment_name,
                                                                              committed):
        print(f"resume: rolled back uncommitted {item}", flush=True)
    cursor = Cursor(**state.get("cursor", {}))

    cpu_settings = CPUBackendSettings(lora=LoraSettings(rank=config.lora_rank, alpha=2 * config.lora_rank,
                                                                    target_modules=lora_targets),
                                      seed=config.seed, max_seq_length=config.max_context_tokens,
                                      default_max_tokens=config.max_tokens, init_adapter=config.init_adapter)
    backend = create_backend(choice, config.art_path, cpu_settings)
    monitor = HealthMonitor(config.rollout_root, HealthLimits(
        interval_s=config.health_check_interval, max_child_processes=config.max_child_processes,
        max_tmp_usage_gb=config.max_tmp_usage_gb)).start()
    services = contextlib.AsyncExitStack()
    ctx: RolloutContext | None = None
    try:
        await model.register(backend)
        if config.vllm_url:
            model.inference_base_url = config.vllm_url.rstrip("/")
            log.warning("rollouts use %s; it must load each new adapter itself", config.vllm_url)
        step = await model.get_step()
        if step != committed:
            raise RuntimeError(f"checkpoint step {step} does not match the committed step {committed} in state.json")
        print(f"resume: starting after step {step} (epoch {cursor.epoch}, position {cursor.position})"
              if step else "start: step 0", flush=True)
        ctx = RolloutContext(model=model, settings=RolloutSettings(
            max_steps=max_steps, max_context_tokens=config.max_context_tokens,
            max_tokens_per_turn=config.max_tokens, temperature=config.temperature),
            max_connections=config.max_concurrent, count_tokens=_token_counter(base_model))
        if env.services is not None:
            ctx.services = await services.enter_async_context(env.services(config))
        limits = GatherLimits.create(config.max_concurrent, config.max_rollouts_per_second)
        val = env.load_val(config) if (config.eval_every or config.eval_only) and env.load_val else []

        async def run_eval(at_step: int) -> dict[str, float]:
            groups, figures = await evaluate(val, env.rollout, ctx, config.eval_rollouts, limits, env.step_metrics)
            await model.log([g for g in groups if g.trajectories], split="val", step=at_step, metrics=figures)
            return figures

        if config.eval_only:
            if config.checkpoint is not None:
                await _load_checkpoint(backend, model, model_dir, config.checkpoint)
            at = config.checkpoint if config.checkpoint is not None else step
            figures = await run_eval(at)
            print(json.dumps({"eval_step": at, "scenarios": len(val), **figures}, indent=2), flush=True)
            return model.read_state() or {}
        freeze_startup_heap()  # after everything that lives for the whole run is loaded, before the first step
        last_step = config.max_training_steps or sys.maxsize
        while step < last_step:
            batch, next_cursor = cursor.take(scenarios, config.groups_per_step, config.seed)
            if next_cursor.epoch >= config.num_epochs:
                print(f"done: {config.num_epochs} epoch(s) completed at step {step}", flush=True)
                break
            step += 1
            ctx.step = step
            started = time.monotonic()
            groups = await gather_step(batch, env.rollout, ctx, config.rollouts_per_group, limits,
                                       config.max_failed_share, desc=f"step {step}")
            gather_s = time.monotonic() - started
            metrics = step_metrics(groups, config.groups_per_step * config.rollouts_per_group)
            if env.step_metrics is not None:
                metrics |= env.step_metrics(groups)
            trainable = [g for g in groups if has_signal(g)]
            result = await backend.train(model, trainable, learning_rate=config.learning_rate,
                                         advantage_balance=config.advantage_balance,
                                         scale_rewards=config.scale_rewards, loss_fn=config.loss_fn)
            if result.step != step:
                raise RuntimeError(f"backend trained to step {result.step}, expected {step}")
            metrics |= {"gather_seconds": gather_s, "step_seconds": time.monotonic() - started,
                        "trained_groups": float(len(trainable)), "epoch": float(next_cursor.epoch)}
            metrics |= result.metrics | monitor.figures()
            await model.log([g for g in groups if g.trajectories], split="train", step=step, metrics=metrics)
            if config.eval_every and step % config.eval_every == 0 and val:
                figures = await run_eval(step)
                print(f"eval at step {step}: reward {figures.get('reward_mean', float('nan')):.3f}, "
                      f"pass rate {figures['pass_rate']:.0%}", flush=True)
            await write_step(config.log_dir, config.experiment_name, step, groups, seed=config.seed,
                             rate=config.log_sample_rate, meta={"env": config.env, "model": config.model_name,
                                                                "experiment": config.experiment_name,
                                                                "config_hash": config.config_hash(),
                                                                "max_steps": max_steps})
            state = model.merge_state({
                "step": step, "config_hash": config.config_hash(), "config": config.hashed_fields(),
                "epoch": next_cursor.epoch, "cursor": dataclasses.asdict(next_cursor),
            })
            cursor = next_cursor
            print(_summary_line(step, metrics), flush=True)
            if config.keep_checkpoints:
                existing = [int(p.name) for p in (model_dir / "checkpoints").iterdir() if p.name.isdigit()]
                keep = steps_to_keep(existing, step, config.keep_checkpoints, config.save_every,
                                     best_val_step(model_dir))
                await backend._delete_checkpoint_files(model, keep)
        _write_report(config, model_dir)
        return model.read_state() or {}
    finally:
        await services.aclose()
        if ctx is not None:
            await ctx.aclose()
        monitor.stop()
        await backend.close()
        if model._wandb_run is not None:
            model._wandb_run.finish()


def _write_report(config: ExperimentConfig, model_dir: Path) -> None:
    """The HTML report is a convenience: a failure to draw it is logged, never a failed run."""
    try:
        from rollouts.report import write_report

        path = write_report(Path(config.log_dir) / config.experiment_name, model_dir / "history.jsonl")
        print(f"report: {path}", flush=True)
    except Exception:
        log.exception("could not write the HTML report")


async def _load_checkpoint(backend: Any, model: Any, model_dir: Path, step: int) -> None:
    from backends.cpu import CPUBackend

    checkpoint = model_dir / "checkpoints" / f"{step:04d}"
    if not checkpoint.is_dir():
        raise ConfigError(f"--checkpoint {step}: no checkpoint at {checkpoint}")
    if not isinstance(backend, CPUBackend):
        raise ConfigError("--checkpoint: evaluating an older checkpoint is supported on the CPU backend only")
    await asyncio.to_thread(backend.policy(model).load, checkpoint)


def _token_counter(base_model: str):
    """Exact token counts for context budgets, from the policy's own tokenizer (a local directory)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_model)
    return lambda text: len(tokenizer.encode(text, add_special_tokens=False))


def _configure_wandb(model: Any, config: ExperimentConfig) -> None:
    mode = config.wandb
    if mode == "auto":
        mode = os.environ.get("WANDB_MODE") or ("online" if "WANDB_API_KEY" in os.environ else "offline")
    if mode == "disabled":
        os.environ["WANDB_MODE"] = "disabled"
        model.report_metrics = []
    elif mode == "online" and "WANDB_API_KEY" not in os.environ:
        raise ConfigError("--wandb online needs WANDB_API_KEY in the environment")
    else:
        model.report_metrics = ["wandb"]


def _summary_line(step: int, m: dict[str, float]) -> str:
    loss = f"{m['train/loss']:.4f}" if "train/loss" in m and m.get("train/num_gradient_steps") else "-"
    return (
        f"step {step}: reward {m.get('reward_mean', float('nan')):.3f} "
        f"[{m.get('reward_min', float('nan')):.2f}, {m.get('reward_max', float('nan')):.2f}] "
        f"zero-var {m['zero_variance_group_share']:.0%} failed {int(m['failed_rollouts'])} "
        f"trained {int(m['trained_groups'])} groups, loss {loss}, "
        f"{m['step_seconds']:.1f}s"
    )


def export_main(argv: list[str]) -> int:
    """`train.py export --experiment-name NAME --checkpoint STEP --out DIR [--merge]`: a standard PEFT adapter."""
    parser = OneLineParser(prog="train.py export", description=export_main.__doc__)
    parser.add_argument("--experiment-name", required=True)
    parser.add_argument("--model-name", default=None)
    parser.add_argument("--project", default=ExperimentConfig.project)
    parser.add_argument("--art-path", default=".art")
    parser.add_argument("--checkpoint", type=int, default=None, help="step to export (default: the latest)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--merge", action="store_true", help="write the merged full model (base + adapter)")
    args = parser.parse_args(argv)
    from backends.checkpoints import export_adapter

    model_dir = Path(args.art_path) / args.project / "models" / (args.model_name or args.experiment_name)
    steps = sorted(int(p.name) for p in (model_dir / "checkpoints").glob("[0-9]*") if p.name.isdigit())
    if not steps:
        print(f"error: --experiment-name: no checkpoints under {model_dir}", file=sys.stderr)
        return 2
    step = steps[-1] if args.checkpoint is None else args.checkpoint
    if step not in steps:
        print(f"error: --checkpoint {step}: not among the kept steps {steps}", file=sys.stderr)
        return 2
    base_model = json.loads((model_dir / "model.json").read_text())["base_model"]
    out = export_adapter(model_dir / "checkpoints" / f"{step:04d}", Path(args.out), args.merge, base_model)
    print(f"exported step {step} {'merged model' if args.merge else 'adapter'} to {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["export"]:
        return export_main(argv[1:])
    try:
        config = config_from_args(argv)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from backends import BackendUnavailable
    from backends.trainer_model import StateFileError
    from envs.scenario import DatasetError
    from rollouts.gather import StepFailed

    try:
        asyncio.run(run(config))
    except (ConfigError, BackendUnavailable, DatasetError, StateFileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except StepFailed as exc:
        print(f"error: {exc}; nothing of this step was committed, rerun the same command to retry it",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
