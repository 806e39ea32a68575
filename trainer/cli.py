"""The command line that fills `ExperimentConfig`: the flags, which of them the user typed, and the env's own
defaults for the ones left out. A bad flag is one line naming it (exit 2), before any work.
"""

from __future__ import annotations

import argparse
import copy

from backends import BACKEND_KINDS
from trainer.config import DEFAULT_LR, DEFAULT_SFT_LR, NAMED_MODELS, TINY_RANDOM_MODEL, ConfigError, ExperimentConfig


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line naming it (the usage text buries the reason)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    d = ExperimentConfig(experiment_name="x")
    p = OneLineParser(prog="train.py", description="Train an agent with SFT and GRPO on LoRA adapters (ART)",
                      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a("--experiment-name", required=True, help="names the run, its logs and (by default) the model")
    a("--model-name", default=None, help="ART model name (default: the experiment name)")
    a("--project", default=d.project)
    a("--base-model", default=d.base_model,
      help=f"a local HF model directory, or a named embedded model: {', '.join(NAMED_MODELS)}")
    a("--backend", choices=BACKEND_KINDS, default=d.backend,
      help="auto: local on a CUDA GPU with the gpu extra, else cpu; serverless, tinker, megatron: ART's engines "
           "(keys from WANDB_API_KEY / TINKER_API_KEY; see docs/SCALING.md)")
    a("--serverless-url", default=None, help="--backend serverless: the training API (default: ART's, W&B's)")
    a("--env", default=d.env, help="environment (see rollouts/registry.py)")
    a("--mix", default=None, metavar="ENV=RATIO,...",
      help="a mixed-domain run instead of --env: each step's groups drawn from these envs by ratio (summing to 1), "
           "e.g. gmsh=0.3,r2e=0.4,openspiel=0.3; metrics per env (envs/mix/mix.py)")
    a("--vllm-url", default=None, help="external OpenAI-compatible server for rollouts (it must serve the adapter)")
    a("--docker-url", action="append", default=[],
      help="test service URL, or @FILE of URLs one a line (repeat for several nodes; token from TEST_SERVICE_TOKEN)")
    a("--gmsh-url", action="append", default=[],
      help="gmsh service URL, or @FILE of URLs one a line (repeat for several nodes; token from GMSH_SERVICE_TOKEN); "
           "default: start one locally")
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
      help=f"RL step size: default {DEFAULT_LR['pretrained']}, {DEFAULT_LR[TINY_RANDOM_MODEL]} for {TINY_RANDOM_MODEL}")
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
    a("--kl-penalty-coef", type=float, default=d.kl_penalty_coef,
      help="keep the policy near the base model (adapter off): ART's KL-penalised advantages (0: off)")
    a("--temperature-schedule", default=None, metavar="INITIAL:FINAL:WARMUP_STEPS",
      help="RL sampling temperature: linear from INITIAL to FINAL over the first WARMUP_STEPS RL steps, then FINAL "
           "(e.g. 0.5:0.15:150); evaluations keep --temperature")
    a("--max-steps-off-policy", type=int, default=d.max_steps_off_policy, metavar="K",
      help="gather later steps' rollouts while a step trains, each at most K policy steps older than the policy it "
           "trains (0: synchronous); see README 'Pipelined async training'")
    a("--lora-rank", type=int, default=d.lora_rank)
    a("--load-in-4bit", action="store_true", help="GPU: train QLoRA on a 4-bit base (default: full precision)")
    a("--gpu-memory-utilization", type=float, default=None, help="GPU: vLLM's share of GPU memory (default: ART's 0.9)")
    a("--enforce-eager", action="store_true", help="GPU: run vLLM without CUDA graphs (slower, less memory)")
    a("--allow-config-change", action="store_true", help="resume even if the config hash changed")
    a("--eval-every", type=int, default=0, help="evaluate on the val split every N steps (0: never)")
    a("--eval-before-after", action=argparse.BooleanOptionalAction, default=d.eval_before_after,
      help="evaluate on the held-out split before any training, after SFT and after the last step")
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
    a("--sft-data", action="append", default=[],
      help="SFT before RL: a .jsonl of OpenAI chat `messages` (optional `tools`), or a .jsonl/.parquet of "
           "`prompt`/`response` columns (repeatable)")
    a("--sft-demos", choices=["auto", "on", "off"], default=d.sft_demos,
      help="SFT on the env's own demonstrations of its train split (gmsh, r2e samples) before RL; auto: on for "
           "a pretrained base model")
    a("--sft-only", action="store_true", help="stop after the SFT stage")
    a("--sft-epochs", type=int, default=d.sft_epochs)
    a("--sft-learning-rate", type=float, default=None,
      help=f"peak SFT step size (linear decay): default {DEFAULT_SFT_LR['pretrained']}, "
           f"{DEFAULT_SFT_LR[TINY_RANDOM_MODEL]} for {TINY_RANDOM_MODEL}")
    a("--sft-batch-size", type=int, default=d.sft_batch_size, help="conversations per SFT gradient step")
    a("--check-rewards", action="store_true",
      help="the reward preflight alone: score the env's oracle, a do-nothing reply and each cheat on a few "
           "scenarios through its real services, print a table, exit 0 when the reward separates them, else 1 "
           "(no model is loaded, nothing is trained)")
    a("--skip-reward-check", action="store_true",
      help="train without the reward preflight that otherwise runs before the first RL step (see --check-rewards)")
    a("--allow-unsandboxed", action="store_true",
      help="run model-written code without bubblewrap when none can run here (weak isolation: you accept the risk)")
    from rollouts.registry import add_env_flags

    add_env_flags(p)
    return p


_UNSET = object()


def explicit_flags(parser: argparse.ArgumentParser, argv: list[str] | None) -> set[str]:
    """The settings the user typed (argparse cannot tell a given value from its default)."""
    probe = copy.deepcopy(parser)
    for action in probe._actions:  # an append action needs a list or None to append to
        action.default = None if isinstance(action, argparse._AppendAction) else _UNSET
    return {k for k, v in vars(probe.parse_args(argv)).items() if v is not _UNSET and v is not None}


def config_from_args(argv: list[str] | None = None) -> ExperimentConfig:
    """Flags -> config. Settings the user left out take the env's own defaults first (`ENV_DEFAULTS`: sizes that
    suit the env on the embedded model), then the global ones."""
    from rollouts.registry import ENV_DEFAULTS, EnvFlagError, split_env_options

    parser = build_parser()
    args = parser.parse_args(argv)
    given = explicit_flags(parser, argv)
    for key, value in ENV_DEFAULTS.get(args.env, {}).items():
        if key not in given and args.mix is None:  # a mixed run's defaults: envs/mix/mix.py
            setattr(args, key, value)
    try:
        if args.mix is not None:
            from envs.mix.mix import mix_config_values

            common, env_options = mix_config_values(vars(args), given)
        else:
            common, env_options = split_env_options(vars(args), args.env, given)
    except EnvFlagError as exc:
        raise ConfigError(str(exc)) from None
    config = ExperimentConfig(**common, env_options=env_options)
    config.validate()
    return config


