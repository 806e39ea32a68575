"""The run: wiring (env, backend, services, model), the optional SFT stage, then the GRPO step loop.

Every step, SFT epoch or RL step alike, ends with `model.merge_state(...)`: the one commit point that resume
relies on (see trainer/resume.py). Evaluation on the env's held-out split runs before any training, after SFT,
every `--eval-every` steps and after the last step, so the reward's rise is measured on tasks never trained on.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer.active_run import Run
from trainer.checks import wants_demos
from trainer.config import PRETRAINED_MODEL, TINY_RANDOM_MODEL, ConfigError, ExperimentConfig
from trainer.resume import RUN_ID, ExperimentLock, check_outputs, check_resume, claim_outputs, load_cursor

if TYPE_CHECKING:  # heavy (ART, torch): imported by the wiring below once the config is checked
    import art

    from backends.trainer_model import TrainerModel
    from envs.spec import EnvSpec

__all__ = ["Run", "resolve_base_model", "run"]

log = logging.getLogger("train")


def resolve_base_model(config: ExperimentConfig) -> tuple[str, str | list[str]]:
    """A named embedded model -> its local folder (built or converted once); returns (folder, LoRA targets)."""
    if config.base_model == TINY_RANDOM_MODEL:
        from backends.tiny_random_model import LORA_TARGETS, ensure_tiny_model

        return ensure_tiny_model(config.art_path), LORA_TARGETS
    if config.base_model == PRETRAINED_MODEL:
        from backends.smollm2 import ensure_pretrained

        return ensure_pretrained(PRETRAINED_MODEL, config.art_path), "all-linear"
    return config.base_model, "all-linear"


async def run(config: ExperimentConfig) -> dict[str, Any]:
    """SFT for --sft-epochs, then RL until --max-training-steps RL steps or --num-epochs passes are done; returns
    the final state.

    The experiment's lock comes first: a second live run of the same experiment stops here, having touched nothing.
    """
    if config.check_rewards:  # --check-rewards: the reward preflight alone; no model, no lock, no training
        return await _check_rewards(config)
    model_dir = Path(config.art_path) / config.project / "models" / str(config.model_name)
    lock = ExperimentLock.acquire(model_dir, config.experiment_name)
    try:
        return await _run(config, model_dir)
    finally:
        lock.release()


async def _run(config: ExperimentConfig, model_dir: Path) -> dict[str, Any]:
    from backends import RemoteSettings, choose_backend, create_backend
    from backends.cpu import CPUBackendSettings
    from backends.policy import LoraSettings
    from backends.trainer_model import TrainerModel
    from envs.registry import get_env
    from monitor.health import HealthLimits, HealthMonitor, RunDir, remove_dead_runs
    from rollouts.context import RolloutContext, RolloutSettings
    from rollouts.gather import GatherLimits
    from trainer.resume import recover_checkpoints
    from trainer.sft_stage import load_sft_conversations

    choice = choose_backend(config.backend)  # keys, extras, GPUs: before anything is loaded or written
    env = get_env(config.env, config.mix)  # a mixed run (--mix): the composite of envs/mix/mix.py
    if env.runs_model_code:
        _require_sandbox(config)
    scenarios = env.load_scenarios(config)
    if len(scenarios) < config.groups_per_step:
        raise ConfigError(
            f"--groups-per-step {config.groups_per_step} is more than the {len(scenarios)} scenarios loaded"
        )
    model = TrainerModel(name=config.model_name, project=config.project, base_model=config.base_model,
                         base_path=config.art_path)
    state = model.read_state() or {}
    check_resume(config, state)
    check_outputs(config, model_dir, state)  # clashes with files another run left: one line, before any work
    state = recover_checkpoints(model_dir, state, model.overwrite_state, local=choice.kind in ("cpu", "local"))
    committed = int(state.get("step", 0))
    conversations = load_sft_conversations(config.sft_data) if config.sft_data else []
    sft_done = int((state.get("sft") or {}).get("epochs_done", 0)) >= config.sft_epochs
    if wants_demos(config, env.write_demos is not None) and not sft_done:
        conversations += await _env_demonstrations(env, config, model_dir)
    if config.sft_only and not conversations and not sft_done:
        raise ConfigError("--sft-only: no SFT data (give --sft-data FILE; this env writes no demonstrations)")
    print(f"backend: {choice.kind} ({choice.reason})", flush=True)
    base_model, lora_targets = resolve_base_model(config)
    print(f"base model: {config.base_model} ({base_model})", flush=True)
    if conversations:
        _check_sft_lengths(conversations, base_model, config.max_context_tokens)
    model.base_model = base_model
    from backends.local_config import configure_model

    configure_model(model, config, base_model, lora_targets, choice.kind)  # ART's _internal_config (GPU kinds)
    _configure_wandb(model, config)
    _, removed = claim_outputs(config, model_dir, state, lambda run_id: model.merge_state({RUN_ID: run_id}))
    for item in removed:
        print(f"resume: rolled back uncommitted {item}", flush=True)
    from trainer.config_file import write_resolved

    if not config.eval_only:  # an evaluation leaves the training run's config.toml as it was
        write_resolved(config, model_dir)  # the resolved config beside state.json, once the run owns the folder
    if dead := remove_dead_runs(config.rollout_root):
        print(f"start: removed {len(dead)} rollout dir(s) of dead runs under {config.rollout_root}", flush=True)

    cpu_settings = CPUBackendSettings(lora=LoraSettings(rank=config.lora_rank, alpha=2 * config.lora_rank,
                                                        target_modules=lora_targets),
                                      seed=config.seed, max_seq_length=config.max_context_tokens,
                                      default_max_tokens=config.max_tokens, init_adapter=config.init_adapter,
                                      dtype=config.cpu_dtype)
    backend = create_backend(choice, config.art_path, cpu_settings, RemoteSettings(config.serverless_url))
    run_dir = RunDir.claim(config.rollout_root)  # this run's work dirs; removed at exit, or by the next start
    monitor = HealthMonitor(config.rollout_root, HealthLimits(
        interval_s=config.health_check_interval, max_child_processes=config.max_child_processes,
        max_tmp_usage_gb=config.max_tmp_usage_gb), own=run_dir.path).start()
    services = contextlib.AsyncExitStack()
    the_run = Run(config, env, model, backend, model_dir, max_steps=config.max_steps or env.default_max_steps)
    try:
        await model.register(backend)
        if choice.kind == "serverless":  # checkpoints live on the engine: undo a step trained but never committed
            from backends.remote import roll_back_remote_steps

            for rolled in await roll_back_remote_steps(backend, model, committed):
                print(f"resume: rolled back uncommitted remote step {rolled}", flush=True)
        if config.vllm_url:
            model.inference_base_url = config.vllm_url.rstrip("/")
            log.warning("rollouts use %s; it must load each new adapter itself", config.vllm_url)
        step = await model.get_step()
        if step != committed:
            raise RuntimeError(f"checkpoint step {step} does not match the committed step {committed} in state.json")
        cursor = load_cursor(env, state)
        print(f"resume: starting after step {step} ({cursor.describe()})"
              if step else "start: step 0", flush=True)
        the_run.ctx = RolloutContext(model=model, settings=RolloutSettings(
            max_steps=the_run.max_steps, max_context_tokens=config.max_context_tokens,
            max_tokens_per_turn=config.max_tokens, temperature=config.temperature),
            max_connections=config.max_concurrent, **_token_counters(
                base_model, server_shortens=choice.kind == "cpu" and not config.vllm_url))
        if env.services is not None:
            env_config = dataclasses.replace(config, rollout_root=str(run_dir.path))
            the_run.ctx.services = await services.enter_async_context(env.services(env_config))
        the_run.limits = GatherLimits.create(config.max_concurrent, config.max_rollouts_per_second)
        wants_eval = config.eval_every or config.eval_only or config.eval_before_after
        the_run.val = env.load_val(config) if wants_eval and env.load_val else []
        if config.eval_only:
            if config.checkpoint is not None:
                await _load_checkpoint(backend, model, model_dir, config.checkpoint)
            at = config.checkpoint if config.checkpoint is not None else step
            figures = await the_run.evaluate(at, "only")
            print(json.dumps({"eval_step": at, "scenarios": len(the_run.val), **figures}, indent=2), flush=True)
            return model.read_state() or {}
        if not config.sft_only:  # the reward preflight: before any training, SFT included (trainer/reward_check.py)
            from trainer.reward_check import before_training

            the_run.reward_check = await before_training(config, the_run.ctx.services, model,
                                                         model.read_state() or {})
        if the_run.val and step == 0 and config.eval_before_after:
            await the_run.evaluate(0, "before training")
        if conversations:
            await _sft_stage(the_run, conversations)
        if not config.sft_only:
            from trainer.rl import rl_loop

            await rl_loop(the_run, scenarios, monitor)
        if (report := _write_report(config, model_dir)) is not None:
            from monitor.wandb_log import log_report

            log_report(model, report, config.experiment_name, (model.read_state() or {}).get("step"))  # W&B on
        return model.read_state() or {}
    finally:  # the backend after what uses its server: its close waits for the sampler thread to leave torch
        await close_all([services.aclose, lambda: the_run.ctx and the_run.ctx.aclose(), monitor.stop, backend.close,
                         lambda: model._wandb_run and model._wandb_run.finish(), run_dir.release])


async def close_all(closers: list[Callable[[], Any]]) -> None:
    """Call each in turn, awaiting what it returns when that is awaitable, and raise the first failure once all have
    run: one close that fails (a service that will not stop) must not leave the policy server's threads running at
    interpreter exit, where a thread still in torch aborts the process."""
    failure: BaseException | None = None
    for close in closers:
        try:
            result = close()
            if inspect.isawaitable(result):
                await result
        except BaseException as exc:  # a cancellation too: the rest still close, then it propagates
            failure = failure or exc
    if failure is not None:
        raise failure


async def _sft_stage(the_run: Run, conversations: list[dict[str, Any]]) -> None:
    from trainer.sft_stage import SFTPlan, run_sft_stage

    config = the_run.config
    plan = SFTPlan(epochs=config.sft_epochs, batch_size=config.sft_batch_size,
                   learning_rate=float(config.sft_learning_rate or 0), seed=config.seed)

    def commit(step: int, epochs_done: int, metrics: dict[str, float]) -> None:
        the_run.commit(step, sft={"epochs_done": epochs_done, "epochs": plan.epochs,
                                  "conversations": len(conversations)})
        loss = metrics.get("train/loss/train", metrics.get("loss/train", float("nan")))
        print(f"sft epoch {epochs_done}/{plan.epochs} (step {step}): loss {loss:.4f}, "
              f"{metrics.get('sft/seconds', 0):.1f}s", flush=True)

    trained = await run_sft_stage(the_run.model, conversations, plan, commit)
    if trained and the_run.val:
        await the_run.evaluate(await the_run.model.get_step(), "after SFT")


def _check_sft_lengths(conversations: list[dict[str, Any]], base_model: str, context: int) -> None:
    """Conversations longer than the context are dropped by the backend (as ART's are): say so up front, and stop
    before training when none would be left."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_model)
    lengths = [len(tokenizer.apply_chat_template(c["messages"], tokenize=True, return_dict=True)["input_ids"])
               for c in conversations]
    too_long = sum(n > context for n in lengths)
    if too_long == len(lengths):
        raise ConfigError(f"--max-context-tokens {context}: every SFT conversation is longer (shortest "
                          f"{min(lengths)} tokens), so SFT would learn nothing; raise it")
    if too_long:
        print(f"sft: {too_long} of {len(lengths)} conversation(s) are longer than --max-context-tokens {context} "
              "and are left out", flush=True)


async def _env_demonstrations(env: EnvSpec, config: ExperimentConfig, model_dir: Path) -> list[dict[str, Any]]:
    """The env's own demonstrations of its train split, written once beside the model (reused on resume)."""
    from trainer.sft_stage import load_sft_conversations

    path = model_dir / "sft_demos.jsonl"
    if not path.exists():
        model_dir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        await asyncio.to_thread(env.write_demos, config, path)
        print(f"sft: wrote the {config.env} demonstrations to {path} ({time.monotonic() - started:.0f}s)", flush=True)
    conversations = load_sft_conversations([str(path)])
    print(f"sft: {len(conversations)} demonstration(s) of the {config.env} train split (--sft-demos off to skip)",
          flush=True)
    return conversations


async def _check_rewards(config: ExperimentConfig) -> dict[str, Any]:
    """Each env's services started as training starts them, its probes scored, a table printed; raises
    RewardCheckFailed (exit 1) when the reward does not separate them."""
    from envs.registry import get_env
    from trainer.reward_check import check_standalone, report_results, state_record

    if get_env(config.env, config.mix).runs_model_code:
        _require_sandbox(config)
    results = await check_standalone(config)
    report_results(results)
    return {"reward_check": state_record(results)}


def _require_sandbox(config: ExperimentConfig) -> None:
    """Model-written code runs only in a sandbox that works here, or with the user's explicit opt-out."""
    from sandbox.run import ENV_ALLOW, check_sandbox

    if config.allow_unsandboxed:
        os.environ[ENV_ALLOW] = "1"  # the services this run starts inherit the opt-out
    status = check_sandbox(config.allow_unsandboxed)
    print(status.describe(), flush=True)


def _write_report(config: ExperimentConfig, model_dir: Path) -> Path | None:
    """The HTML report is a convenience: a failure to draw it is logged, never a failed run; a full disk is the
    run's one line (train.py), as anywhere else. Returns its path, None when it could not be drawn."""
    from backends.atomic import is_disk_full

    try:
        from monitor.report import write_report

        path = write_report(Path(config.log_dir) / config.experiment_name, model_dir / "history.jsonl")
        print(f"report: {path}", flush=True)
        return path
    except Exception as exc:
        if is_disk_full(exc):
            raise
        log.exception("could not write the HTML report")
        return None


async def _load_checkpoint(backend: art.Backend, model: TrainerModel, model_dir: Path, step: int) -> None:
    from backends.cpu import CPUBackend

    checkpoint = model_dir / "checkpoints" / f"{step:04d}"
    if not checkpoint.is_dir():
        raise ConfigError(f"--checkpoint {step}: no checkpoint at {checkpoint}")
    if not isinstance(backend, CPUBackend):
        raise ConfigError("--checkpoint: evaluating an older checkpoint is supported on the CPU backend only")
    await asyncio.to_thread(backend.policy(model).load, checkpoint)


def _token_counters(base_model: str, *, server_shortens: bool) -> dict[str, Callable[..., int]]:
    """Exact token counts from the policy's own tokenizer (a local directory): of a text, for context budgets, and
    of a rendered prompt where the server does not shorten `max_tokens` to its context itself (rollouts.context)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_model)
    counters: dict[str, Callable[..., int]] = {
        "count_tokens": lambda text: len(tokenizer.encode(text, add_special_tokens=False))}
    if not server_shortens:
        from backends.token_check import sampler_prompt  # the prompt ids as a server renders the messages

        counters["count_prompt_tokens"] = lambda messages: len(sampler_prompt(tokenizer, messages))
    return counters


def _configure_wandb(model: TrainerModel, config: ExperimentConfig) -> None:
    mode = config.wandb
    if mode == "auto":
        mode = os.environ.get("WANDB_MODE") or ("online" if "WANDB_API_KEY" in os.environ else "offline")
    if mode == "disabled":
        os.environ["WANDB_MODE"] = "disabled"
        model.report_metrics = []
    elif mode == "online" and "WANDB_API_KEY" not in os.environ:
        raise ConfigError("--wandb online needs WANDB_API_KEY in the environment")
    else:
        if config.wandb != "auto":  # the flag wins over the environment: --wandb offline with a key stays offline
            os.environ["WANDB_MODE"] = mode
        model.report_metrics = ["wandb"]

