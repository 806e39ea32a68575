"""`LocalBackend.train()`'s keywords, read the way LocalBackend reads them, into the CPU policy's `TrainSettings`.

The loss itself is ART's (`art.loss.loss_fn`) with ART's own config (`build_rl_train_configs`), so an option that
only changes that loss (KL penalty, truncated importance sampling, PPO clipping) means on CPU exactly what it means
on a GPU. What the CPU backend adds is what the loss needs from the trainer: reference logprobs (the base model
with the adapter off, or a checkpoint's adapter) and precalculated old logprobs. An option that cannot change
learning here is refused with the reason, never silently ignored (see `UNSUPPORTED`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from art._backend_training import build_rl_train_configs

# Tinker's loss_fn_config for ppo/cispo: the bounds of the clipped importance ratio (its documented keys and ranges).
LOSS_FN_CONFIG_RANGES = {"clip_low_threshold": (0.0, 1.0), "clip_high_threshold": (1.0, 10.0)}

# Keywords that keep their default here, with the reason; docs/BACKENDS.md lists the same.
UNSUPPORTED: dict[str, tuple[Any, str]] = {
    "adam_params": (None, "a Tinker AdamParams; LocalBackend refuses it too (the optimizer is AdamW, lr per call)"),
    "plot_tensors": (False, "a matplotlib debug plot of packed GPU batches; the CPU backend does not pack rows"),
    "scale_learning_rate_by_reward_std_dev": (
        False, "ART takes it but nothing applies it (LocalBackend trains as without); set learning_rate instead"),
    "num_trajectories_learning_rate_multiplier_power": (
        0.0, "scales the rate by trajectories per packed sequence; the CPU backend trains one trajectory per row"),
}


@dataclass
class TrainSettings:
    """What one `train()` call asks of the policy: ART's loss config plus what the trainer must compute for it."""

    learning_rate: float
    advantage_balance: float = 0.0
    scale_rewards: bool = True
    allow_training_without_logprobs: bool = False
    loss: dict[str, Any] = field(default_factory=dict)  # ART's dev.TrainConfig, handed to art.loss.loss_fn
    kl_reference: str | None = None  # adapter folder for the KL reference; None: the base model (adapter off)
    precalculate_logprobs: bool = False
    max_sequence_length: int | None = None  # packed_sequence_length: longer trajectories are dropped, as ART does
    max_grad_norm: float = 1.0
    rows_per_gradient_step: int = 8

    @property
    def kl_penalty_coef(self) -> float:
        return float(self.loss.get("kl_penalty_coef", 0.0))


def clip_bounds(loss_fn_config: dict[str, Any] | None, epsilon: float | None,
                epsilon_high: float | None) -> tuple[float | None, float | None]:
    """Tinker's `{"clip_low_threshold": l, "clip_high_threshold": h}` as ART's `epsilon = 1 - l`,
    `epsilon_high = h - 1`: the importance ratio is clipped to [l, h] either way."""
    if loss_fn_config is None:
        return epsilon, epsilon_high
    unknown = set(loss_fn_config) - set(LOSS_FN_CONFIG_RANGES)
    if unknown:
        raise ValueError(f"loss_fn_config: unknown key(s) {sorted(unknown)}; supported: "
                         f"{sorted(LOSS_FN_CONFIG_RANGES)} (the importance-ratio clip bounds)")
    for key, (low, high) in LOSS_FN_CONFIG_RANGES.items():
        value = loss_fn_config.get(key)
        if value is not None and not low <= float(value) <= high:
            raise ValueError(f"loss_fn_config: {key} must be between {low} and {high}, got {value!r}")
    if "clip_low_threshold" in loss_fn_config:
        if epsilon is not None:
            raise ValueError("give the lower clip bound once: epsilon or loss_fn_config['clip_low_threshold']")
        epsilon = 1.0 - float(loss_fn_config["clip_low_threshold"])
    if "clip_high_threshold" in loss_fn_config:
        if epsilon_high is not None:
            raise ValueError("give the upper clip bound once: epsilon_high or loss_fn_config['clip_high_threshold']")
        epsilon_high = float(loss_fn_config["clip_high_threshold"]) - 1.0
    return epsilon, epsilon_high


def train_settings(*, learning_rate: float, loss_fn: str, loss_fn_config: dict[str, Any] | None,
                   normalize_advantages: bool, epsilon: float | None, epsilon_high: float | None,
                   advantage_balance: float, scale_rewards: bool, importance_sampling_level: str,
                   max_negative_advantage_importance_sampling_weight: float | None, mask_prob_ratio: bool,
                   kimi_k2_tau: float | None, kl_penalty_coef: float, kl_reference: str | None,
                   precalculate_logprobs: bool, truncated_importance_sampling: float | None,
                   allow_training_without_logprobs: bool, logprob_calculation_chunk_size: int,
                   packed_sequence_length: int | None, rows_per_gradient_step: int,
                   **unsupported: Any) -> TrainSettings:
    """Validate the keywords as LocalBackend does, refuse the unsupported ones, build ART's loss config."""
    for key, value in unsupported.items():
        if key not in UNSUPPORTED:
            raise TypeError(f"CPUBackend.train() got an unexpected keyword argument {key!r}")
        default, reason = UNSUPPORTED[key]
        if value != default:
            raise NotImplementedError(f"CPUBackend.train() does not support {key}={value!r}: {reason}")
    if loss_fn not in {"cispo", "ppo"}:
        raise ValueError("CPUBackend supports loss_fn='cispo' or 'ppo' (as LocalBackend does)")
    if kl_penalty_coef < 0:
        raise ValueError(f"kl_penalty_coef must be >= 0, got {kl_penalty_coef}")
    if truncated_importance_sampling is not None and truncated_importance_sampling <= 0:
        raise ValueError(f"truncated_importance_sampling must be > 0, got {truncated_importance_sampling}")
    if logprob_calculation_chunk_size < 1:  # a memory knob only: the CPU output head is chunked at LOGPROB_CHUNK
        raise ValueError(f"logprob_calculation_chunk_size must be >= 1, got {logprob_calculation_chunk_size}")
    if packed_sequence_length is not None and packed_sequence_length < 1:
        raise ValueError(f"packed_sequence_length must be >= 1, got {packed_sequence_length}")
    epsilon, epsilon_high = clip_bounds(loss_fn_config, epsilon, epsilon_high)
    scale_rewards = scale_rewards and normalize_advantages
    _, loss = build_rl_train_configs(
        learning_rate=learning_rate, advantage_balance=advantage_balance, scale_rewards=scale_rewards,
        importance_sampling_level=importance_sampling_level,  # type: ignore[arg-type]
        mask_prob_ratio=mask_prob_ratio, ppo=loss_fn == "ppo", precalculate_logprobs=precalculate_logprobs,
        epsilon=epsilon, epsilon_high=epsilon_high,
        max_negative_advantage_importance_sampling_weight=max_negative_advantage_importance_sampling_weight,
        kimi_k2_tau=kimi_k2_tau, kl_penalty_coef=kl_penalty_coef,
        allow_training_without_logprobs=allow_training_without_logprobs,
        truncated_importance_sampling=truncated_importance_sampling,
        kl_ref_adapter_path=kl_reference,
    )
    return TrainSettings(
        learning_rate=learning_rate, advantage_balance=advantage_balance, scale_rewards=scale_rewards,
        allow_training_without_logprobs=allow_training_without_logprobs, loss=dict(loss),
        kl_reference=kl_reference, precalculate_logprobs=precalculate_logprobs,
        max_sequence_length=packed_sequence_length,
        rows_per_gradient_step=rows_per_gradient_step,
    )
