"""The checks that span layers, run before any work starts: `check_config(cfg)` raises ConfigError with one line
naming the flag (train.py: exit 2), or returns.

It holds what a flag's value alone cannot say: ranges and combinations of the settings, the env (or mix) named, the
engine (`--backend`: keys, extras, GPUs, what it can honour), pipelining against the engine, and which check each
flag that names a path gets (trainer/path_checks.py: the checks themselves, which only look, so a refused run leaves
no trace). An env's own options are checked by the env (envs/options.py) as the command line is read.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from pathlib import Path

from trainer.config import NAMED_MODELS, TINY_RANDOM_MODEL, ConfigError, ExperimentConfig
from trainer.path_checks import data_file, readable_dir, readable_file, writable_dir

# What `--dataset` may be for the envs that read one (suffix -> format); other envs' datasets get the generic checks.
LOCK_FILE = ".run.lock"  # in the model's folder: held by the run that trains it (trainer.resume.ExperimentLock)
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
MODEL_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")


def _run_envs(c: ExperimentConfig) -> set[str]:
    """The envs a run loads: its own, or each env of its mix (the mix is checked before any path is)."""
    if c.mix is None:
        return {c.env}
    from envs.mix.mix import parse_mix

    return set(parse_mix(c.mix))


def path_problems(c: ExperimentConfig) -> list[str]:
    """Every path flag of `config` (an ExperimentConfig) checked; the first problem is what the user sees."""
    found: list[str | None] = [
        writable_dir("--art-path", c.art_path),
        writable_dir("--log-dir", c.log_dir),
        writable_dir("--rollout-root", c.rollout_root),
    ]
    from envs.registry import load_spec

    specs = [load_spec(env) for env in sorted(_run_envs(c))]
    if c.dataset is not None:  # --dataset names one env's file (a mix refuses it)
        suffixes = specs[0].dataset_suffixes if len(specs) == 1 else ()
        found.append(data_file("--dataset", c.dataset, suffixes) if suffixes else readable_file("--dataset", c.dataset))
    if c.cache_dir is not None:  # an env reading a built cache and one writing there may share the folder
        for marker, what in sorted({spec.reads_cache for spec in specs if spec.reads_cache}):
            found.append(readable_dir("--cache-dir", c.cache_dir, marker, what))
        if any(spec.reads_cache is None for spec in specs):
            found.append(writable_dir("--cache-dir", c.cache_dir))
    for path in c.sft_data:
        found.append(data_file("--sft-data", path, (".jsonl", ".parquet")))
    if c.init_adapter is not None:
        found.append(readable_dir("--init-adapter", c.init_adapter, "adapter_config.json",
                                  "a PEFT adapter directory", ADAPTER_WEIGHTS))
    return [p for p in found if p is not None]


def base_model_problem(base_model: str, named: tuple[str, ...]) -> str | None:
    """`--base-model` is a named embedded model or a local Hugging Face model folder (nothing is downloaded)."""
    if base_model in named:
        return None
    hint = f" (nothing is downloaded at run time; pass a Hugging Face model folder, or one of: {', '.join(named)})"
    p = Path(base_model)
    if not p.exists():
        return f"--base-model {base_model!r} is not a local model directory{hint}"
    problem = readable_dir("--base-model", base_model, "config.json", "a Hugging Face model folder", MODEL_WEIGHTS)
    return None if problem is None else problem + (hint if "no config.json" in problem else "")


def checkpoint_problem(c: ExperimentConfig) -> str | None:
    """`--checkpoint N` (with --eval-only) names a saved step of this experiment."""
    if c.checkpoint is None:
        return None
    folder = (Path(c.art_path) / c.project / "models" / str(c.model_name)
              / "checkpoints" / f"{c.checkpoint:04d}")
    if not folder.is_dir():
        return f"--checkpoint {c.checkpoint}: no checkpoint at {folder}"
    return readable_dir("--checkpoint", str(folder))


def busy_message(experiment: str, holder: str, lock: Path) -> str:
    return (f"--experiment-name {experiment}: another run (pid {holder}) is training this experiment ({lock} is "
            "locked); wait for it to end, or choose another --experiment-name")


def experiment_busy(c: ExperimentConfig) -> str | None:
    """A live run holds this experiment's lock: said here, before the trainer's heavy imports, so a second run
    stops at once. Only looks (no file is created); the run takes the lock itself later (`ExperimentLock`)."""
    lock = Path(c.art_path) / c.project / "models" / str(c.model_name) / LOCK_FILE
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        return busy_message(c.experiment_name, os.read(fd, 64).decode(errors="replace").strip() or "unknown", lock)
    finally:
        os.close(fd)


# ---- the settings and the layers they reach -----------------------------------------------------------------------


def _range_problems(c: ExperimentConfig) -> list[tuple[bool, str]]:
    """(holds, the line when it does not) for each setting whose flag alone says what is wrong."""
    return [
        (bool(c.experiment_name.strip()), "--experiment-name must not be empty"),
        (all(ch.isalnum() or ch in "-_." for ch in c.model_name or ""),
         "--model-name may hold only letters, digits, '-', '_' and '.'"),
        (c.num_epochs >= 1, "--num-epochs must be at least 1"),
        (c.groups_per_step >= 1, "--groups-per-step must be at least 1"),
        (c.rollouts_per_group >= 2, "--rollouts-per-group must be at least 2 (GRPO compares rollouts)"),
        (c.max_concurrent >= 1, "--max-concurrent must be at least 1"),
        (c.max_rollouts_per_second > 0, "--max-rollouts-per-second must be positive"),
        (0 <= c.max_failed_share <= 1, "--max-failed-share must be between 0 and 1"),
        (c.max_steps is None or c.max_steps >= 1, "--max-steps must be at least 1"),
        (c.max_context_tokens >= 64, "--max-context-tokens must be at least 64"),
        (c.max_tokens >= 1, "--max-tokens must be at least 1"),
        (0 <= c.temperature <= 10, "--temperature must be between 0 and 10"),
        (c.eval_temperature is None or 0 <= c.eval_temperature <= 10, "--eval-temperature must be between 0 and 10"),
        (c.learning_rate is not None and 0 < c.learning_rate < 1, "--learning-rate must be in (0, 1)"),
        (c.dataset_size is None or c.dataset_size >= 1, "--dataset-size must be at least 1"),
        (0 <= c.log_sample_rate <= 1, "--log-sample-rate must be between 0 and 1"),
        (c.max_training_steps is None or c.max_training_steps >= 1, "--max-training-steps must be at least 1"),
        (-1 <= c.advantage_balance <= 1, "--advantage-balance must be between -1 and 1"),
        (0 <= c.kl_penalty_coef <= 1e3, "--kl-penalty-coef must be between 0 (off) and 1000"),
        (c.kl_reference == "base" or c.kl_penalty_coef > 0,
         f"--kl-reference {c.kl_reference} needs a KL term: give --kl-penalty-coef above 0"),
        (c.max_steps_off_policy >= 0, "--max-steps-off-policy must be 0 (synchronous) or more"),
        (c.max_refill is None or c.max_refill >= 0, "--max-refill must be 0 (no refills) or more"),
        (c.refill_ahead >= 0, "--refill-ahead must be 0 (draw only what is missing) or more"),
        (c.lora_rank >= 1, "--lora-rank must be at least 1"),
        (c.gpu_memory_utilization is None or 0 < c.gpu_memory_utilization <= 1,
         "--gpu-memory-utilization must be in (0, 1]"),
        (c.health_check_interval > 0, "--health-check-interval must be positive"),
        (c.eval_every >= 0, "--eval-every must be 0 (off) or more"),
        (c.eval_rollouts >= 1, "--eval-rollouts must be at least 1"),
        (c.keep_checkpoints >= 0, "--keep-checkpoints must be 0 (keep all) or more"),
        (c.save_every >= 1, "--save-every must be at least 1"),
        (c.checkpoint is None or c.eval_only, "--checkpoint goes with --eval-only"),
        (c.sft_epochs >= 1, "--sft-epochs must be at least 1"),
        (c.sft_batch_size >= 1, "--sft-batch-size must be at least 1"),
        (c.sft_learning_rate is not None and 0 < c.sft_learning_rate < 1, "--sft-learning-rate must be in (0, 1)"),
        (not c.sft_only or bool(c.sft_data) or c.sft_demos != "off",
         "--sft-only needs SFT data: --sft-data FILE, or the env's demonstrations (--sft-demos)"),
        (c.vllm_url is None or c.vllm_url.startswith(("http://", "https://")),
         "--vllm-url must start with http:// or https://"),
        (not (c.check_rewards and c.skip_reward_check),
         "--check-rewards runs the reward check that --skip-reward-check skips; give one of them"),
        (not (c.check_rewards and c.eval_only), "--check-rewards trains and evaluates nothing; leave --eval-only out"),
    ]


def options_problem(c: ExperimentConfig) -> str | None:
    """The env's own checks of its options (a config built in code gets them as one from flags does)."""
    from envs.options import EnvFlagError, check_options

    try:
        check_options(c.env_options)
    except EnvFlagError as exc:
        return str(exc)
    return None


def env_problem(c: ExperimentConfig) -> str | None:
    """The env is a registered one, or the run is a well-formed mix."""
    if c.mix is not None:
        from envs.mix.mix import mix_problem

        return mix_problem(c.env, c.mix)
    from envs.registry import env_names

    names = env_names()
    return None if c.env in names else f"--env: unknown env {c.env!r}; choose from {', '.join(sorted(names))}"


def schedule_problem(c: ExperimentConfig) -> str | None:
    if c.temperature_schedule is None:
        return None
    from trainer.schedule import TemperatureSchedule

    try:
        TemperatureSchedule.parse(c.temperature_schedule)
    except ValueError as exc:
        return str(exc)
    return None


def wants_demos(c: ExperimentConfig, env_has_demos: bool) -> bool:
    """SFT on the env's own demonstrations: `on`, `off`, or `auto` = when the env writes demonstrations and the
    base model is a real one (the random tiny model is for fast tests, where a warm start only costs time)."""
    if c.sft_demos == "auto":
        return env_has_demos and c.base_model != TINY_RANDOM_MODEL
    return c.sft_demos == "on"


def wants_sft(c: ExperimentConfig) -> bool:
    """The run has an SFT stage (an engine without one refuses it up front); the env is known by now."""
    if c.sft_data:
        return True
    from envs.registry import get_env

    return wants_demos(c, get_env(c.env, c.mix).write_demos is not None)


def backend_problem(c: ExperimentConfig) -> str | None:
    """The base model, and for ART's remote engines: keys, extras and GPUs first, then the flags the engine
    cannot honour, then the base model it can train (hosted engines: a hub name)."""
    from backends.remote import REMOTE_KINDS, RunNeeds, requirements_problem, run_problem
    from backends.remote import base_model_problem as remote_model_problem

    local_model = c.base_model in NAMED_MODELS or Path(c.base_model).exists()
    if c.cpu_dtype != "auto" and c.backend not in ("auto", "cpu"):
        return f"--cpu-dtype applies to the CPU backend only, not --backend {c.backend}"
    if c.backend == "local" and (problem := run_problem("local", RunNeeds(
            init_adapter=c.init_adapter, checkpoint=c.checkpoint, vllm_url=c.vllm_url))):
        return problem
    if c.backend not in REMOTE_KINDS:
        return base_model_problem(c.base_model, NAMED_MODELS)
    if c.serverless_url is not None and not c.serverless_url.startswith(("http://", "https://")):
        return "--serverless-url must start with http:// or https://"
    needs = RunNeeds(sft=wants_sft(c), keep_checkpoints=c.keep_checkpoints, kl_penalty_coef=c.kl_penalty_coef,
                     init_adapter=c.init_adapter, checkpoint=c.checkpoint, vllm_url=c.vllm_url)
    problem = (requirements_problem(c.backend) or run_problem(c.backend, needs)
               or remote_model_problem(c.backend, c.base_model, NAMED_MODELS))
    if problem is None and local_model:  # megatron on a local or embedded model: the usual checks apply
        return base_model_problem(c.base_model, NAMED_MODELS)
    return problem


def pipeline_problem(c: ExperimentConfig) -> str | None:
    """Overlap needs an engine that serves while it trains; ART's LocalBackend (and MegatronBackend) in shared
    mode pauses inference during train(), which ART's own PipelineTrainer refuses too."""
    if not c.max_steps_off_policy or c.backend not in ("auto", "local", "megatron"):
        return None
    from trainer.pipeline import backend_problem as overlap_problem

    return overlap_problem(c.backend, c.max_steps_off_policy)


def check_config(c: ExperimentConfig, lock: bool = True) -> None:
    """Every check, cheapest first; the first problem is raised as the one line the user sees. `lock=False`
    leaves out the probe of the experiment's lock (printing a config needs no free experiment)."""
    for holds, line in _range_problems(c):
        if not holds:
            raise ConfigError(line)
    checks: list[Callable[[], str | list[str] | None]] = [
        lambda: env_problem(c), lambda: options_problem(c), lambda: schedule_problem(c), lambda: backend_problem(c),
        lambda: pipeline_problem(c), lambda: path_problems(c), lambda: checkpoint_problem(c),
        lambda: experiment_busy(c) if lock else None,
    ]
    for check in checks:
        found = check()
        if isinstance(found, list):
            found = found[0] if found else None
        if found is not None:
            raise ConfigError(found)
