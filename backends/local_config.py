"""Our flags as ART's `_internal_config` for the GPU engines (`LocalBackend`: unsloth + vLLM, `MegatronBackend`).

Without it ART's defaults silently replace ours (art/dev/get_model_config.py): `max_seq_length=32768`,
`load_in_4bit=True`, LoRA rank 8 / alpha 16 on ART's own target list, `max_grad_norm=0.1`, vLLM's
`gpu_memory_utilization` 0.9. Two of those train something else than the flags say:
- unsloth applies linear RoPE scaling when `max_seq_length` exceeds the model's `max_position_embeddings`, while vLLM
  samples with unscaled positions: every importance ratio would compare two different models. So
  `max_seq_length` is the smaller of `--max-context-tokens` and the model's positions, and vLLM's `max_model_len`
  the same, so a rollout never samples what the trainer cannot score. vLLM refuses (HTTP 400) a request whose
  prompt plus `max_tokens` exceeds it where the CPU server shortens `max_tokens`, and rollouts rely on that (r2e
  keeps only a quarter of `max_tokens` free): rollouts.context shortens `max_tokens` before it asks vLLM.
- 4-bit loading turns a small model into QLoRA on an NF4 base; it is off unless `--load-in-4bit`.

`internal_config` is a pure function of `GpuSettings` (tested without a GPU); `gpu_settings` reads the one fact it
needs from the model folder (its positions). The resolved config travels in the model (`TrainableModel
(_internal_config=...)`), so ART writes it to the run's model.json at `register`, and the loop prints it at start.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The kinds that run ART's unsloth/vLLM or Megatron service on this machine and so read `_internal_config`.
GPU_KINDS = ("local", "megatron")
ALL_LINEAR = "all-linear"  # for Llama/Qwen2/Mistral-style models: DENSE_TARGET_MODULES, ART's dense default


@dataclass(frozen=True)
class GpuSettings:
    """What our flags ask of the GPU engine; `max_positions` is the model's (None: unknown, the flags decide)."""

    max_context_tokens: int
    lora_rank: int
    lora_targets: str | tuple[str, ...] = ALL_LINEAR
    seed: int = 0
    max_positions: int | None = None
    load_in_4bit: bool = False
    gpu_memory_utilization: float | None = None  # None: ART's (vLLM's) default
    enforce_eager: bool = False
    local_folder: bool = False  # the base model is a folder here (megatron then needs allow_unvalidated_arch)
    kind: str = "local"


def lora_alpha(rank: int) -> int:
    """alpha = 2 x rank, as the CPU backend's LoraSettings: the same flag means the same adapter on both."""
    return 2 * rank


def max_grad_norm() -> float:
    """The CPU trainer's clip (backends/train_options.TrainSettings), instead of ART's 0.1."""
    from backends.train_options import TrainSettings

    return float(TrainSettings.__dataclass_fields__["max_grad_norm"].default)


def max_seq_length(settings: GpuSettings) -> int:
    if settings.max_positions:
        return min(settings.max_context_tokens, settings.max_positions)
    return settings.max_context_tokens


def internal_config(settings: GpuSettings) -> dict[str, Any]:
    """ART's `dev.InternalModelConfig` (a TypedDict, so a plain dict) for these settings.

    "all-linear" leaves ART's per-architecture target list in place (every attention and MLP projection: the same
    modules peft's "all-linear" picks on CPU); an explicit list (the tiny test model's) is passed as is.
    """
    length = max_seq_length(settings)
    init_args: dict[str, Any] = {"max_seq_length": length, "load_in_4bit": settings.load_in_4bit,
                                 "random_state": settings.seed}
    peft_args: dict[str, Any] = {"r": settings.lora_rank, "lora_alpha": lora_alpha(settings.lora_rank),
                                 "random_state": settings.seed}
    if settings.lora_targets != ALL_LINEAR:
        peft_args["target_modules"] = list(settings.lora_targets)
    engine_args: dict[str, Any] = {"seed": settings.seed, "max_model_len": length}
    if settings.gpu_memory_utilization is not None:
        engine_args["gpu_memory_utilization"] = settings.gpu_memory_utilization
    if settings.enforce_eager:
        engine_args["enforce_eager"] = True
    config: dict[str, Any] = {"init_args": init_args, "peft_args": peft_args, "engine_args": engine_args,
                              "trainer_args": {"max_grad_norm": max_grad_norm()}}
    if settings.kind == "megatron" and settings.local_folder:
        config["allow_unvalidated_arch"] = True  # a folder is no name in ART's validated-model registry
    return config


def model_positions(base_model: str) -> int | None:
    """`max_position_embeddings` from the model's config.json (text config for multimodal ones): a local folder's,
    or a hub model's from the Hugging Face cache or hub; None where neither has it (--max-context-tokens decides)."""
    path = Path(base_model) / "config.json"
    if not path.is_file():
        try:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(base_model, "config.json"))
        except Exception:  # offline and not cached, no such repo: the flag alone sets the length
            return None
    config = json.loads(path.read_text())
    for section in (config, config.get("text_config") or {}):
        if isinstance(section.get("max_position_embeddings"), int):
            return int(section["max_position_embeddings"])
    return None


def gpu_settings(config: Any, base_model: str, lora_targets: str | list[str], kind: str) -> GpuSettings:
    """The settings of one run (`ExperimentConfig`) with the resolved base model folder."""
    targets = lora_targets if isinstance(lora_targets, str) else tuple(lora_targets)
    return GpuSettings(
        max_context_tokens=config.max_context_tokens, lora_rank=config.lora_rank, lora_targets=targets,
        seed=config.seed, max_positions=model_positions(base_model),
        load_in_4bit=bool(getattr(config, "load_in_4bit", False)),
        gpu_memory_utilization=getattr(config, "gpu_memory_utilization", None),
        enforce_eager=bool(getattr(config, "enforce_eager", False)),
        local_folder=Path(base_model).is_dir(), kind=kind)


def configure_model(model: Any, config: Any, base_model: str, lora_targets: str | list[str], kind: str) -> None:
    """Set the model's `_internal_config` for a GPU engine (before `register`, which stores it in model.json) and
    print it; other kinds keep none (the CPU backend reads its own settings). CPU-only flags are refused here
    for a run that `--backend auto` sent to the GPU (the config check saw only `auto`)."""
    if kind not in GPU_KINDS:
        return
    from backends import BackendUnavailable
    from backends.remote import RunNeeds, run_problem

    # `--backend auto` becomes `local` only here: CPU-only flags are refused now, before the model is registered
    needs = RunNeeds(init_adapter=config.init_adapter, checkpoint=config.checkpoint,
                     vllm_url=getattr(config, "vllm_url", None))
    if problem := run_problem(kind, needs):
        raise BackendUnavailable(problem)  # exit 2 in train.py, as a config error
    resolved = internal_config(gpu_settings(config, base_model, lora_targets, kind))
    object.__setattr__(model, "_internal_config", resolved)  # ART's own way past pydantic's private attribute
    print(f"gpu config: {json.dumps(resolved, sort_keys=True)}", flush=True)
