"""The experiment's settings: `ExperimentConfig` (one dataclass, hashed for resume) and the checks that turn a bad
setting into one line naming its flag (exit 2) before any work starts. The flags that fill it: trainer/cli.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Named base models that need no download: a real pretrained one (the default) and a random tiny one for fast
# tests. Anything else given to --base-model must be a local Hugging Face model folder.
PRETRAINED_MODEL = "smollm2-135m"
TINY_RANDOM_MODEL = "tiny-random"
NAMED_MODELS = (PRETRAINED_MODEL, TINY_RANDOM_MODEL)
# The randomly initialised tiny model is far from any optimum and learns the toy task within minutes only with a
# much larger step; a LoRA on a pretrained model wants a small one.
DEFAULT_LR = {TINY_RANDOM_MODEL: 1e-2, "pretrained": 5e-5}
DEFAULT_SFT_LR = {TINY_RANDOM_MODEL: 1e-2, "pretrained": 2e-4}


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
    base_model: str = PRETRAINED_MODEL
    backend: str = "auto"
    serverless_url: str | None = None  # --backend serverless: ART's default endpoint unless given
    env: str = "gmsh"
    mix: str | None = None  # --mix ENV=RATIO,...: a mixed-domain run (envs/mix/mix.py); env is then "mix"
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
    kl_penalty_coef: float = 0.0  # KL to the base model (adapter off), ART's advantage shaping
    temperature_schedule: str | None = None  # INITIAL:FINAL:WARMUP_STEPS for RL rollouts (trainer/schedule.py)
    max_steps_off_policy: int = 0  # 0: synchronous steps; K: gather ahead while training (trainer/pipeline.py)
    lora_rank: int = 8
    load_in_4bit: bool = False  # GPU (ART's unsloth): QLoRA on a 4-bit base; backends/local_config.py
    gpu_memory_utilization: float | None = None  # GPU: vLLM's share of the GPU (None: ART's 0.9)
    enforce_eager: bool = False  # GPU: vLLM without CUDA graphs
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
    sft_data: list[str] = field(default_factory=list)
    sft_demos: str = "auto"
    eval_before_after: bool = True
    sft_only: bool = False
    sft_epochs: int = 3
    sft_learning_rate: float | None = None
    sft_batch_size: int = 2
    allow_unsandboxed: bool = False
    check_rewards: bool = False  # --check-rewards: the reward preflight alone (rollouts/preflight.py), then exit
    skip_reward_check: bool = False  # --skip-reward-check: no preflight before the first RL step
    # Flags that belong to one env (declared by its flags module, `rollouts.registry.ENV_FLAGS`): dest -> value,
    # only for the env this run uses, so adding an env's flags never changes another env's config hash.
    env_options: dict[str, Any] = field(default_factory=dict)

    # Fields that steer how a run is executed, not what it learns: changing them between a stop and a resume
    # is normal (run longer, more concurrency, another service node), so they stay out of the hash.
    RUN_CONTROL = frozenset({
        "max_training_steps", "num_epochs", "allow_config_change", "max_concurrent", "max_rollouts_per_second",
        "max_failed_share", "vllm_url", "docker_url", "gmsh_url", "log_dir", "log_sample_rate", "backend",
        "serverless_url", "check_rewards", "skip_reward_check",
        "rollout_root", "health_check_interval", "max_child_processes", "max_tmp_usage_gb", "wandb", "art_path",
        "eval_every", "eval_only", "checkpoint", "eval_rollouts", "keep_checkpoints", "save_every",
        "sft_only", "allow_unsandboxed", "eval_before_after", "gpu_memory_utilization", "enforce_eager",
    })

    def __post_init__(self) -> None:
        self.model_name = self.model_name or self.experiment_name
        if self.learning_rate is None:
            self.learning_rate = DEFAULT_LR[self._model_kind()]
        if self.sft_learning_rate is None:
            self.sft_learning_rate = DEFAULT_SFT_LR[self._model_kind()]

    def wants_demos(self, env_has_demos: bool) -> bool:
        """SFT on the env's own demonstrations: `on`, `off`, or `auto` = when the env writes demonstrations and the
        base model is a real one (the random tiny model is for fast tests, where a warm start only costs time)."""
        if self.sft_demos == "auto":
            return env_has_demos and self.base_model != TINY_RANDOM_MODEL
        return self.sft_demos == "on"

    def _model_kind(self) -> str:
        return TINY_RANDOM_MODEL if self.base_model == TINY_RANDOM_MODEL else "pretrained"

    def hashed_fields(self) -> dict[str, Any]:
        fields = {k: v for k, v in dataclasses.asdict(self).items() if k not in self.RUN_CONTROL}
        if not fields["env_options"]:  # runs of envs without own flags keep the hash they had before the field
            del fields["env_options"]
        if not fields["kl_penalty_coef"]:  # likewise: runs without a KL term keep their hash
            del fields["kl_penalty_coef"]
        if fields["temperature_schedule"] is None:  # and runs without a schedule
            del fields["temperature_schedule"]
        if fields["mix"] is None:  # and single-env runs
            del fields["mix"]
        if not fields["max_steps_off_policy"]:  # and synchronous runs
            del fields["max_steps_off_policy"]
        if not fields["load_in_4bit"]:  # and runs on a full-precision base
            del fields["load_in_4bit"]
        return fields

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
            (0 <= self.kl_penalty_coef <= 1e3, "--kl-penalty-coef must be between 0 (off) and 1000"),
            (self.max_steps_off_policy >= 0, "--max-steps-off-policy must be 0 (synchronous) or more"),
            (self.lora_rank >= 1, "--lora-rank must be at least 1"),
            (self.gpu_memory_utilization is None or 0 < self.gpu_memory_utilization <= 1,
             "--gpu-memory-utilization must be in (0, 1]"),
            (self.health_check_interval > 0, "--health-check-interval must be positive"),
            (self.bash_timeout > 0, "--bash-timeout must be positive"),
            (self.eval_every >= 0, "--eval-every must be 0 (off) or more"),
            (self.eval_rollouts >= 1, "--eval-rollouts must be at least 1"),
            (self.keep_checkpoints >= 0, "--keep-checkpoints must be 0 (keep all) or more"),
            (self.save_every >= 1, "--save-every must be at least 1"),
            (self.checkpoint is None or self.eval_only, "--checkpoint goes with --eval-only"),
            (len(self.toy_target) == 1, "--toy-target must be exactly one character"),
            (self.sft_epochs >= 1, "--sft-epochs must be at least 1"),
            (self.sft_batch_size >= 1, "--sft-batch-size must be at least 1"),
            (self.sft_learning_rate is not None and 0 < self.sft_learning_rate < 1,
             "--sft-learning-rate must be in (0, 1)"),
            (not self.sft_only or bool(self.sft_data) or self.sft_demos != "off",
             "--sft-only needs SFT data: --sft-data FILE, or the env's demonstrations (--sft-demos)"),
            (self.vllm_url is None or self.vllm_url.startswith(("http://", "https://")),
             "--vllm-url must start with http:// or https://"),
            (not (self.check_rewards and self.skip_reward_check),
             "--check-rewards runs the reward check that --skip-reward-check skips; give one of them"),
            (not (self.check_rewards and self.eval_only),
             "--check-rewards trains and evaluates nothing; leave --eval-only out"),
        ]
        from rollouts.registry import ENVS

        checks.append((self.env in ENVS or self.mix is not None,
                       f"--env: unknown env {self.env!r}; choose from {', '.join(sorted(ENVS))}"))
        if self.mix is not None:
            from envs.mix.mix import mix_problem

            problem = mix_problem(self.env, self.mix)
            checks.append((problem is None, str(problem)))
        from services.client import NodeListError, expand_urls

        for flag, urls in (("--docker-url", self.docker_url), ("--gmsh-url", self.gmsh_url)):
            try:  # URLs, or @FILE: a file of URLs, one a line
                urls = expand_urls(urls)
            except NodeListError as exc:
                checks.append((False, f"{flag} {exc}"))
            for url in urls:
                checks.append((url.startswith(("http://", "https://")), f"{flag} {url!r} must start with http://"))
        if self.temperature_schedule is not None:
            from trainer.schedule import TemperatureSchedule

            try:
                TemperatureSchedule.parse(self.temperature_schedule)
            except ValueError as exc:
                checks.append((False, str(exc)))
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        # Every flag that names a path: kind, existence, readability, writability, encoding, format (one line).
        from trainer.checks import checkpoint_problem, experiment_busy, path_problems

        problems = [self._backend_problem(), self._pipeline_problem(), *path_problems(self), checkpoint_problem(self),
                    experiment_busy(self)]
        if found := [p for p in problems if p is not None]:
            raise ConfigError(found[0])

    def _backend_problem(self) -> str | None:
        """The base model, and for ART's remote engines: keys, extras and GPUs first, then the flags the engine
        cannot honour, then the base model it can train (hosted engines: a hub name)."""
        from backends.remote import REMOTE_KINDS, RunNeeds, requirements_problem, run_problem
        from backends.remote import base_model_problem as remote_model_problem
        from trainer.checks import base_model_problem

        local_model = self.base_model in NAMED_MODELS or Path(self.base_model).exists()
        if self.backend == "local" and (problem := run_problem("local", RunNeeds(
                init_adapter=self.init_adapter, checkpoint=self.checkpoint, vllm_url=self.vllm_url))):
            return problem
        if self.backend not in REMOTE_KINDS:
            return base_model_problem(self.base_model, NAMED_MODELS)
        if self.serverless_url is not None and not self.serverless_url.startswith(("http://", "https://")):
            return "--serverless-url must start with http:// or https://"
        needs = RunNeeds(sft=self._wants_sft(), keep_checkpoints=self.keep_checkpoints,
                         kl_penalty_coef=self.kl_penalty_coef, init_adapter=self.init_adapter,
                         checkpoint=self.checkpoint, vllm_url=self.vllm_url)
        problem = (requirements_problem(self.backend) or run_problem(self.backend, needs)
                   or remote_model_problem(self.backend, self.base_model, NAMED_MODELS))
        if problem is None and local_model:  # megatron on a local or embedded model: the usual checks apply
            return base_model_problem(self.base_model, NAMED_MODELS)
        return problem

    def _pipeline_problem(self) -> str | None:
        """Overlap needs an engine that serves while it trains; ART's LocalBackend (and MegatronBackend) in shared
        mode pauses inference during train(), which ART's own PipelineTrainer refuses too."""
        if not self.max_steps_off_policy or self.backend not in ("auto", "local", "megatron"):
            return None
        from trainer.pipeline import backend_problem

        return backend_problem(self.backend, self.max_steps_off_policy)

    def _wants_sft(self) -> bool:
        if self.sft_data:
            return True
        from rollouts.registry import ENVS, get_env

        known = self.env in ENVS or self.mix is not None
        return known and self.wants_demos(get_env(self.env, self.mix).write_demos is not None)
