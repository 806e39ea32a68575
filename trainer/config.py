"""The experiment's settings: `ExperimentConfig`, plain data hashed for resume.

Each field carries its flag's help and its concern (`group`) in its metadata, so one declaration makes the field,
its `train.py` flag (trainer/cli.py), its `--help` group and its config-file section; attribute access stays flat
(`cfg.seed`). Nothing here checks a value or knows an env: the checks that span layers live in trainer/checks.py,
and each env's own settings arrive as its typed options object in `env_options` (envs/options.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import MISSING, dataclass, field
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

# The concerns, in --help order: group key -> its title (the config file's sections use the keys).
GROUPS: dict[str, str] = {
    "run": "run: the experiment's name, its files and how long it trains",
    "data": "data: the env and the scenarios it loads",
    "model": "model: the base model, the LoRA adapter and the engine that trains it",
    "sampling": "sampling: how rollouts sample from the policy",
    "rl": "RL: the GRPO steps",
    "sft": "SFT: the supervised stage before RL",
    "eval": "eval: held-out evaluation and the checkpoints kept",
    "infra": "infra: concurrency, services, health limits, sandbox",
}


def default_rollout_root() -> str:
    """Memory-backed when possible: a rollout copies a repo into its work dir, which is much faster into /dev/shm
    than into a disk-backed /tmp (bench/r2e.py), and a rollout's files live only as long as the rollout."""
    shm = Path("/dev/shm")
    base = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else os.environ.get("TMPDIR", "/tmp")
    return os.path.join(base, "art-rollouts")


def model_kind(base_model: str) -> str:
    """The key of DEFAULT_LR / DEFAULT_SFT_LR for a base model."""
    return TINY_RANDOM_MODEL if base_model == TINY_RANDOM_MODEL else "pretrained"


class ConfigError(ValueError):
    """A flag has an unusable value; the message starts with the flag's name."""


def setting(group: str, help: str, default: Any = MISSING, *, factory: Any = MISSING, hashed: bool = True,
            **flag: Any) -> Any:
    """A field with its flag's metadata: `group` (a GROUPS key), `help`, and optionally `flag` (None: no flag),
    `choices`, `metavar`, `action` for trainer/cli.py. `hashed=False`: the field steers how a run executes, not
    what it learns (RUN_CONTROL), so changing it between a stop and a resume is normal."""
    metadata = {"group": group, "help": help, "hashed": hashed, **flag}
    if factory is not MISSING:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class ExperimentConfig:
    """Everything one run is asked to do. Built by trainer/cli.py (flags, config file, env defaults), or in code."""

    # run
    experiment_name: str = setting("run", "names the run, its logs and (by default) the model")
    model_name: str | None = setting("run", "ART model name (default: the experiment name)", None)
    project: str = setting("run", "ART project: the folder under --art-path that holds the model",
                           "art-agent-trainer")
    art_path: str = setting("run", "where ART keeps models, checkpoints and state.json", ".art", hashed=False)
    log_dir: str = setting("run", "where the per-step logs and the HTML report go", "logs", hashed=False)
    log_sample_rate: float = setting("run", "share of each step's rollouts written to the step logs", 0.1,
                                     hashed=False)
    seed: int = setting("run", "seeds the data order, the scenarios and the adapter's initialisation", 0)
    num_epochs: int = setting("run", "RL passes over the train scenarios", 3, hashed=False)
    # RL steps only, as a user reads the flag. It once counted the model's step, SFT epochs included; it was never
    # hashed, so runs made then resume under the same hash and count RL steps from then on (docs/TRAINING.md).
    max_training_steps: int | None = setting(
        "run", "RL (GRPO) steps to train, after the SFT epochs (--sft-epochs), which it does not count; a resumed "
               "run counts the RL steps it already trained, so the same command continues up to N", None,
        hashed=False, metavar="N")
    allow_config_change: bool = setting("run", "resume even if the config hash changed", False, hashed=False)
    wandb: str = setting("run", "auto: online when WANDB_API_KEY is set, else offline", "auto", hashed=False,
                         choices=("auto", "online", "offline", "disabled"))
    check_rewards: bool = setting(
        "run", "the reward preflight alone: score the env's oracle, a do-nothing reply and each cheat on a few "
               "scenarios through its real services, print a table, exit 0 when the reward separates them, else 1 "
               "(no model is loaded, nothing is trained)", False, hashed=False)
    skip_reward_check: bool = setting(
        "run", "train without the reward preflight that otherwise runs before the first RL step (see "
               "--check-rewards)", False, hashed=False)
    # data
    env: str = setting("data", "the environment: its own flags are in its group below, its defaults for the "
                               "other flags show as 'per env'", "gmsh")
    mix: str | None = setting(
        "data", "a mixed-domain run instead of --env: each step's groups drawn from these envs by ratio (summing "
                "to 1), e.g. gmsh=0.3,r2e=0.4,openspiel=0.3; metrics per env (envs/mix/mix.py)", None,
        metavar="ENV=RATIO,...")
    dataset: str | None = setting("data", "the env's own dataset file (gmsh: task parquet; r2e: rows "
                                          ".jsonl/.parquet), or verl's parquet layout for every env (`python -m "
                                          "envs.<env> tasks`)", None, metavar="FILE")
    dataset_size: int | None = setting("data", "scenarios to load (default: the env's)", None, metavar="N")
    cache_dir: str | None = setting("data", "the env's cache folder (r2e: a built repo cache, read only; gmsh: "
                                            "where generated tasks are stored)", None, metavar="DIR")
    # The chosen env's typed options (an instance of its spec's `options` dataclass; for --mix, the mix's options
    # object), or None for an env without options. Filled from the env's own flags (envs/options.py).
    env_options: Any = setting("data", "the env's typed options", None, flag=None)
    # model
    base_model: str = setting(
        "model", f"a local Hugging Face model folder, or a named embedded model: {', '.join(NAMED_MODELS)}",
        PRETRAINED_MODEL)
    backend: str = setting(
        "model", "auto: local on a CUDA GPU with the gpu extra, else cpu; serverless, tinker, megatron: ART's "
                 "engines (keys from WANDB_API_KEY / TINKER_API_KEY; see docs/SCALING.md)", "auto", hashed=False)
    serverless_url: str | None = setting("model", "--backend serverless: the training API (default: ART's, W&B's)",
                                         None, hashed=False, metavar="URL")
    lora_rank: int = setting("model", "LoRA rank (alpha is twice the rank)", 8)
    init_adapter: str | None = setting("model", "warm-start from a Hugging Face LoRA adapter folder (CPU backend)",
                                       None, metavar="DIR")
    cpu_dtype: str = setting("model", "CPU backend: the frozen base model's float type; auto = bf16 where the CPU "
                                      "has avx512_bf16 or AMX and the model is not test-sized, else fp32 (the LoRA "
                                      "and every logprob stay fp32)", "auto",
                             hashed=False, choices=("auto", "bf16", "fp32"))
    load_in_4bit: bool = setting("model", "GPU: train QLoRA on a 4-bit base (default: full precision)", False)
    gpu_memory_utilization: float | None = setting("model", "GPU: vLLM's share of GPU memory (default: ART's 0.9)",
                                                   None, hashed=False)
    enforce_eager: bool = setting("model", "GPU: run vLLM without CUDA graphs (slower, less memory)", False,
                                  hashed=False)
    # sampling
    max_steps: int | None = setting("sampling", "agent turns per rollout (default: the env's)", None, metavar="N")
    max_context_tokens: int = setting("sampling", "the context budget of a rollout, prompt included", 2048)
    max_tokens: int = setting("sampling", "tokens per model turn", 1024)
    temperature: float = setting("sampling", "sampling temperature of rollouts and evaluations", 1.0)
    temperature_schedule: str | None = setting(
        "sampling", "RL sampling temperature: linear from INITIAL to FINAL over the first WARMUP_STEPS RL steps, "
                    "then FINAL (e.g. 0.5:0.15:150); evaluations keep --temperature", None,
        metavar="INITIAL:FINAL:WARMUP_STEPS")
    # RL
    groups_per_step: int = setting("rl", "scenarios per RL step (one group of rollouts each)", 4)
    rollouts_per_group: int = setting("rl", "rollouts per scenario; GRPO compares them within the group", 8)
    learning_rate: float | None = setting(
        "rl", f"RL step size (default {DEFAULT_LR['pretrained']}; {DEFAULT_LR[TINY_RANDOM_MODEL]} for "
              f"{TINY_RANDOM_MODEL})", None)
    advantage_balance: float = setting("rl", "ART's weight between positive and negative advantages (-1 to 1)", 0.0)
    scale_rewards: bool = setting("rl", "divide each group's advantages by its reward spread", True)
    loss_fn: str = setting("rl", "ART's policy loss", "cispo", choices=("cispo", "ppo"))
    kl_penalty_coef: float = setting(
        "rl", "keep the policy near --kl-reference: ART's KL-penalised advantages (0: off)", 0.0)
    kl_reference: str = setting(
        "rl", "what the KL term keeps the policy near: base: the base model (adapter off); sft: the policy RL "
              "started from (the last SFT epoch's checkpoint, kept from pruning; step 0's where no SFT ran)",
        "base", choices=("base", "sft"))
    max_steps_off_policy: int = setting(
        "rl", "gather later steps' rollouts while a step trains, each at most K policy steps older than the policy "
              "it trains (0: synchronous); see docs/TRAINING.md", 0, metavar="K")
    # Run control, not what a run learns (hashed=False): a run resumes under the same hash with refills on or off.
    refill: str = setting(
        "rl", "what a step draws when a group's rewards are all equal (no GRPO signal): scenarios: new groups of "
              "other train scenarios; rollouts: more rollouts of that group's scenario; off: train fewer groups",
        "scenarios", hashed=False, choices=("scenarios", "rollouts", "off"))
    max_refill: int | None = setting(
        "rl", "extra rollouts a step may spend on refills (default: 2 x groups-per-step x rollouts-per-group; "
              "0: none)", None, hashed=False, metavar="N")
    refill_ahead: int = setting(
        "rl", "refill groups each gather round draws beyond the missing ones: the first round gathers N beside the "
              "batch, each refill round N more than it needs, within --max-refill (--refill scenarios only)", 0,
        hashed=False, metavar="N")
    # SFT
    sft_data: list[str] = setting(
        "sft", "SFT before RL: a .jsonl of OpenAI chat `messages` (optional `tools`), or a .jsonl/.parquet of "
               "`prompt`/`response` columns (repeatable)", factory=list, metavar="FILE")
    sft_demos: str = setting(
        "sft", "SFT on the env's own demonstrations of its train split before RL; auto: on for a pretrained base "
               "model when the env writes demonstrations", "auto", choices=("auto", "on", "off"))
    sft_only: bool = setting("sft", "stop after the SFT stage", False, hashed=False)
    sft_epochs: int = setting("sft", "passes over the SFT conversations", 3)
    sft_learning_rate: float | None = setting(
        "sft", f"peak SFT step size, decaying linearly (default {DEFAULT_SFT_LR['pretrained']}; "
               f"{DEFAULT_SFT_LR[TINY_RANDOM_MODEL]} for {TINY_RANDOM_MODEL})", None)
    sft_batch_size: int = setting("sft", "conversations per SFT gradient step", 2)
    # eval
    eval_every: int = setting("eval", "evaluate on the held-out split every N steps of the model, SFT epochs "
                                      "included (0: never)", 0, hashed=False, metavar="N")
    eval_before_after: bool = setting(
        "eval", "evaluate on the held-out split before any training, after SFT and after the last step", True,
        hashed=False)
    eval_only: bool = setting("eval", "evaluate the current (or --checkpoint) model and exit", False, hashed=False)
    checkpoint: int | None = setting("eval", "with --eval-only: the step to evaluate", None, hashed=False,
                                     metavar="STEP")
    eval_rollouts: int = setting("eval", "rollouts per held-out scenario", 1, hashed=False)
    eval_temperature: float | None = setting(
        "eval", "sampling temperature of held-out evaluations, the same at every one (0: greedy, one rollout per "
                "task says it all; default: --temperature)", None, hashed=False)
    keep_checkpoints: int = setting("eval", "keep the K newest saved checkpoints (+latest, +best eval; 0: all)", 0,
                                    hashed=False, metavar="K")
    save_every: int = setting("eval", "checkpoints kept by --keep-checkpoints fall on every N steps", 1,
                              hashed=False, metavar="N")
    # infra
    max_concurrent: int = setting("infra", "rollouts in flight at once", 32, hashed=False)
    max_rollouts_per_second: float = setting("infra", "rollout start rate limit", 100.0, hashed=False)
    max_failed_share: float = setting("infra", "share of a step's rollouts that may raise before the step fails",
                                      0.25, hashed=False)
    vllm_url: str | None = setting("infra", "external OpenAI-compatible server for rollouts (it must serve the "
                                            "adapter)", None, hashed=False, metavar="URL")
    rollout_root: str = setting("infra", "where per-rollout work dirs live (default: under /dev/shm when writable)",
                                factory=default_rollout_root, hashed=False, metavar="DIR")
    health_check_interval: float = setting("infra", "seconds between health checks of the run's child processes "
                                                    "and temp usage", 30.0, hashed=False)
    max_child_processes: int = setting("infra", "child processes a health check tolerates before it warns", 64,
                                       hashed=False)
    max_tmp_usage_gb: float = setting("infra", "GB under --rollout-root a health check tolerates before it warns",
                                      10.0, hashed=False)
    allow_unsandboxed: bool = setting(
        "infra", "run model-written code without bubblewrap when none can run here (weak isolation: you accept the "
                 "risk)", False, hashed=False)

    def __post_init__(self) -> None:
        # The defaults that depend on other fields, filled here so a config built in code (tests, bench) holds the
        # same values, and so the same hash, as one built from flags.
        self.model_name = self.model_name or self.experiment_name
        if self.learning_rate is None:
            self.learning_rate = DEFAULT_LR[model_kind(self.base_model)]
        if self.sft_learning_rate is None:
            self.sft_learning_rate = DEFAULT_SFT_LR[model_kind(self.base_model)]

    def hashed_fields(self) -> dict[str, Any]:
        """The fields that define the experiment, flat, as runs made before the env options existed hashed them:
        the env's old top-level settings at the top, its other options under env_options (envs/options.py)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                  if f.metadata["hashed"] and f.name != "env_options"}
        top, own = _options_hash_view(self.env_options)
        fields |= LEGACY_TOP_LEVEL | top | ({"env_options": own} if own else {})
        for name, off in OMITTED_WHEN_OFF.items():  # added later: runs that leave them off keep their old hash
            if name in fields and fields[name] == off:
                del fields[name]
        return json.loads(json.dumps(fields, default=str))  # as state.json holds them (tuples are lists there)

    def config_hash(self) -> str:
        """Short stable hash of what defines the experiment; a resume with a different one is refused."""
        blob = json.dumps(self.hashed_fields(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


# Fields that steer how a run is executed, not what it learns: changing them between a stop and a resume is normal
# (run longer, more concurrency, another service node), so they stay out of the hash.
RUN_CONTROL = frozenset(f.name for f in dataclasses.fields(ExperimentConfig) if not f.metadata["hashed"])

# Fields that joined the hash after runs were made: left out of it at these values, so older runs keep their hash.
OMITTED_WHEN_OFF: dict[str, Any] = {"kl_penalty_coef": 0.0, "temperature_schedule": None, "mix": None,
                                    "max_steps_off_policy": 0, "load_in_4bit": False, "kl_reference": "base"}

# r2e's and toy's settings were config fields before each env declared its options, and so were hashed for EVERY run
# with these defaults; they stay in every run's hash, overridden by the run's own env (its `hash: top` options).
# Frozen history, not the envs' current defaults: a toy run's hash must not move when r2e changes a default.
LEGACY_TOP_LEVEL: dict[str, Any] = {"split": "train", "reward": "binary", "system_prompt": "r2e_system_prompt",
                                    "bash_timeout": 60.0, "toy_target": "a"}


def _options_hash_view(options: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the options hashed at the top level, those hashed under env_options): each options field says where."""
    if options is None:
        return {}, {}
    from envs.options import hash_view  # the env side owns what its options' `hash` metadata means

    return hash_view(options)
