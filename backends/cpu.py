"""`CPUBackend`: ART's `Backend` protocol on a CPU, with a real model that really learns.

It mirrors `art.local.LocalBackend`: the same directory layout (`<path>/<project>/models/<name>/`, checkpoints
as PEFT adapter folders under `checkpoints/NNNN`), the step = newest checkpoint, an OpenAI-compatible endpoint
for rollouts, a `train()` whose keywords mean what LocalBackend's mean (backends/train_options.py), and the
(async) context manager protocol. Every `train()` call advances the step by one, even when no group had a reward
spread to learn from (the latest checkpoint is renamed, as ART's own `test_step_skipping` expects), so the step
counter and the checkpoints never disagree. ART's test runs against this class in tests/test_art_backend_contract.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from art.backend import AnyModel, AnyTrainableModel
from art.local.checkpoints import delete_checkpoints
from art.types import LocalTrainResult
from art.utils.get_model_step import get_step_from_dir
from art.utils.output_dirs import get_model_dir, get_step_checkpoint_dir

from backends.atomic import atomic_dir, atomic_write_text, disk_full_guard, fsync_dir
from backends.openai_server import ServerThread, build_app, new_api_key
from backends.policy import LoraPolicy, LoraSettings
from backends.train_options import train_settings


@dataclass
class CPUBackendSettings:
    lora: LoraSettings = field(default_factory=LoraSettings)
    seed: int = 0
    max_seq_length: int = 2048
    host: str = "127.0.0.1"
    default_max_tokens: int = 256
    rows_per_gradient_step: int = 8
    init_adapter: str | None = None  # a PEFT adapter directory to start from instead of a fresh LoRA
    dtype: str = "auto"  # the frozen base's float type: auto, bf16 or fp32 (backends/cpu_dtype.py)
    # A local model folder served for every registered model, whatever base model it names: ART code written for a
    # GPU names a hub model (e.g. Qwen/Qwen2.5-0.5B-Instruct) that this offline CPU machine swaps for an embedded one.
    base_model: str | None = None


@dataclass
class _Served:
    policy: LoraPolicy
    server: ServerThread | None = None
    api_key: str = field(default_factory=new_api_key)


class CPUBackend:
    def __init__(self, *, path: str = ".art", settings: CPUBackendSettings | None = None):
        self._path = path
        self.settings = settings or CPUBackendSettings()
        self._models: dict[str, _Served] = {}
        os.makedirs(path, exist_ok=True)

    @classmethod
    def with_embedded_model(cls, path: str = ".art", name: str = "tiny-random", **settings: Any) -> CPUBackend:
        """A backend that serves the named embedded model (`tiny-random`, `smollm2-135m`) for every registered model,
        as `train.py --base-model NAME` does: ART code that names a hub model runs here unchanged, offline."""
        from backends.named_models import embedded_model

        folder, targets = embedded_model(name, path)
        lora = settings.pop("lora", None) or LoraSettings(target_modules=targets)
        return cls(path=path, settings=CPUBackendSettings(lora=lora, base_model=folder, **settings))

    # LocalBackend is a (sync or async) context manager that closes its services on exit; so is this one.
    def __enter__(self) -> CPUBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self._close()

    async def __aenter__(self) -> CPUBackend:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---- protocol ------------------------------------------------------------------------------------------

    async def register(self, model: AnyModel) -> None:
        model.base_path = self._path
        output_dir = Path(get_model_dir(model=model, art_path=self._path))
        output_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(output_dir / "model.json", json.dumps(model.safe_model_dump(mode="json")))
        if not model.trainable or model.name in self._models:
            return
        policy = await asyncio.to_thread(
            LoraPolicy,
            self.settings.base_model or model.base_model,  # type: ignore[attr-defined]
            self.settings.lora,
            seed=self.settings.seed,
            max_seq_length=self.settings.max_seq_length,
            init_adapter=self.settings.init_adapter,
            dtype=self.settings.dtype,
        )
        step = get_step_from_dir(str(output_dir))
        latest = Path(get_step_checkpoint_dir(str(output_dir), step))
        if latest.is_dir():  # a damaged one stops here (CheckpointError), never refilled with fresh weights
            await asyncio.to_thread(policy.load, latest)
        else:  # checkpoint 0 is the initial adapter, so a resume before step 1 starts from the same weights
            await asyncio.to_thread(self._save_checkpoint, policy, output_dir, step)
        self._models[model.name] = _Served(policy)

    def _model_inference_name(self, model: AnyModel, step: int | None = None) -> str:
        if step is None:
            step = get_step_from_dir(get_model_dir(model=model, art_path=self._path)) if model.trainable else 0
        return f"{model.name}@{step}"

    async def _get_step(self, model: AnyTrainableModel) -> int:
        return get_step_from_dir(get_model_dir(model=model, art_path=self._path))

    async def _prepare_backend_for_training(self, model: AnyTrainableModel, config: Any = None) -> tuple[str, str]:
        served = self._served(model)
        if served.server is None:
            # The live adapter also answers to the step before: a rollout running while a step trains (pipelined
            # steps, trainer/pipeline.py) may name `model@N` just before checkpoint N+1 lands and be checked after.
            def names() -> set[str]:
                step = get_step_from_dir(get_model_dir(model=model, art_path=self._path))
                return {model.name, f"{model.name}@{step}", f"{model.name}@{step - 1}"}

            # The base model's own name is the base model (the adapter off), as vLLM serves it under LocalBackend.
            app = build_app(served.policy, served.api_key, names, self.settings.default_max_tokens,
                            base_names=lambda: {model.base_model})
            port = ((config or {}).get("server_args") or {}).get("port")
            served.server = ServerThread(app, host=self.settings.host, port=port)
            served.server.start()
        return served.server.base_url, served.api_key

    async def train(  # the keywords, defaults and order of LocalBackend.train()
        self,
        model: AnyTrainableModel,
        trajectory_groups: Iterable[Any],
        *,
        learning_rate: float = 5e-6,
        loss_fn: str = "cispo",
        loss_fn_config: dict | None = None,
        normalize_advantages: bool = True,
        adam_params: object | None = None,
        kl_penalty_coef: float = 0.0,
        kl_penalty_reference_step: int | None = None,
        kl_ref_adapter_path: str | None = None,
        epsilon: float | None = None,
        epsilon_high: float | None = None,
        advantage_balance: float = 0.0,
        scale_rewards: bool = True,
        importance_sampling_level: str = "token",
        max_negative_advantage_importance_sampling_weight: float | None = None,
        mask_prob_ratio: bool = False,
        kimi_k2_tau: float | None = None,
        precalculate_logprobs: bool = False,
        allow_training_without_logprobs: bool = False,
        plot_tensors: bool = False,
        truncated_importance_sampling: float | None = None,
        scale_learning_rate_by_reward_std_dev: bool = False,
        logprob_calculation_chunk_size: int = 1024,
        packed_sequence_length: int | None = None,
        num_trajectories_learning_rate_multiplier_power: float = 0.0,
        save_checkpoint: bool = True,
        verbose: bool = False,
    ) -> LocalTrainResult:
        """One RL step. A call whose groups leave nothing to train on (every group's rewards equal) still advances
        the step: the latest checkpoint is renamed to the next step, as ART's LocalBackend does and its own
        `test_step_skipping` expects, so the step counter and the checkpoints never disagree."""
        output_dir = Path(get_model_dir(model=model, art_path=self._path))
        kl_reference = kl_ref_adapter_path
        if kl_reference is None and kl_penalty_reference_step is not None:
            kl_reference = get_step_checkpoint_dir(str(output_dir), kl_penalty_reference_step)
        settings = train_settings(
            learning_rate=learning_rate, loss_fn=loss_fn, loss_fn_config=loss_fn_config,
            normalize_advantages=normalize_advantages, epsilon=epsilon, epsilon_high=epsilon_high,
            advantage_balance=advantage_balance, scale_rewards=scale_rewards,
            importance_sampling_level=importance_sampling_level,
            max_negative_advantage_importance_sampling_weight=max_negative_advantage_importance_sampling_weight,
            mask_prob_ratio=mask_prob_ratio, kimi_k2_tau=kimi_k2_tau, kl_penalty_coef=kl_penalty_coef,
            kl_reference=kl_reference, precalculate_logprobs=precalculate_logprobs,
            truncated_importance_sampling=truncated_importance_sampling,
            allow_training_without_logprobs=allow_training_without_logprobs,
            logprob_calculation_chunk_size=logprob_calculation_chunk_size,
            packed_sequence_length=packed_sequence_length,
            rows_per_gradient_step=self.settings.rows_per_gradient_step,
            adam_params=adam_params, plot_tensors=plot_tensors,
            scale_learning_rate_by_reward_std_dev=scale_learning_rate_by_reward_std_dev,
            num_trajectories_learning_rate_multiplier_power=num_trajectories_learning_rate_multiplier_power,
        )
        served = self._served(model)
        groups = list(trajectory_groups)
        if verbose:
            print(f"CPUBackend.train: {len(groups)} group(s), {sum(len(g.trajectories) for g in groups)} "
                  f"trajectories, loss {loss_fn}, learning rate {learning_rate}", flush=True)
        metrics = await asyncio.to_thread(served.policy.train_step, groups, settings)
        current = get_step_from_dir(str(output_dir))
        step, checkpoint = current + 1, None
        if not metrics.get("num_gradient_steps"):
            print("Skipping tuning as there is no suitable data (every group's rewards are equal, or no "
                  "trajectory fits); the step advances with the weights unchanged.", flush=True)
            checkpoint = await asyncio.to_thread(self._advance_checkpoint, served.policy, output_dir, current)
        else:  # saved even without save_checkpoint, as LocalBackend does: the step is the newest checkpoint
            checkpoint = await asyncio.to_thread(self._save_checkpoint, served.policy, output_dir, step)
        if verbose:
            print(f"CPUBackend.train: step {step}, {metrics}", flush=True)
        return LocalTrainResult(step=step, metrics={f"train/{k}": v for k, v in metrics.items()},
                                checkpoint_path=str(checkpoint) if save_checkpoint else None)

    async def _delete_checkpoint_files(self, model: AnyTrainableModel, steps_to_keep: list[int]) -> None:
        delete_checkpoints(get_model_dir(model=model, art_path=self._path), steps_to_keep)

    async def close(self) -> None:
        self._close()

    def _close(self) -> None:
        for served in self._models.values():
            if served.server is not None:
                served.server.stop()
                served.server = None
        self._models.clear()

    async def _train_sft(self, model: AnyTrainableModel, trajectories: Iterable[Any], config: Any,
                         dev_config: Any, verbose: bool = False) -> AsyncIterator[dict[str, float]]:
        """ART's SFT contract, as LocalBackend keeps it: one metrics dict per batch, then one new checkpoint (the
        step advances by one per call). `config.learning_rate` is one value or one per batch."""
        from art.utils.sft import resolve_sft_batch_size

        from backends.cpu_sft import sft_step, tokenize_conversation

        policy = self._served(model).policy
        batch_size = resolve_sft_batch_size(batch_size=config.batch_size, default_batch_size=2)
        examples, dropped = [], 0
        for trajectory in trajectories:
            example = tokenize_conversation(policy.tokenizer, trajectory, policy.max_seq_length)
            if example is None:
                dropped += 1
            else:
                examples.append(example)
        batches = [examples[i : i + batch_size] for i in range(0, len(examples), batch_size)]
        rate = config.learning_rate
        rates = rate if isinstance(rate, list) else [rate] * len(batches)
        trainable = sum(e.trainable_tokens for e in examples)
        for batch, rate in zip(batches, rates, strict=False):
            def step(batch=batch, rate=rate) -> dict[str, float]:
                with policy.lock:
                    policy.model.train()
                    try:
                        return sft_step(policy.model, policy.optimizer, batch, rate)
                    finally:
                        policy.model.eval()

            metrics = await asyncio.to_thread(step)
            yield metrics | {"data/step_num_trajectories": float(len(examples) + dropped),
                             "data/step_trainer_tokens": float(trainable),
                             "data/step_num_dropped_trajectories": float(dropped),
                             "data/step_num_gradient_steps": float(len(batches))}
        output_dir = Path(get_model_dir(model=model, art_path=self._path))
        step = get_step_from_dir(str(output_dir)) + 1
        await asyncio.to_thread(self._save_checkpoint, policy, output_dir, step)

    # ---- helpers -------------------------------------------------------------------------------------------

    def _served(self, model: AnyModel) -> _Served:
        if model.name not in self._models:
            raise RuntimeError(f"model {model.name!r} is not registered with this CPUBackend")
        return self._models[model.name]

    def policy(self, model: AnyModel) -> LoraPolicy:
        return self._served(model).policy

    @classmethod
    def _advance_checkpoint(cls, policy: LoraPolicy, output_dir: Path, current: int) -> Path:
        """The unchanged weights become the next step's checkpoint by renaming the latest one (atomic, no copy)."""
        latest = Path(get_step_checkpoint_dir(str(output_dir), current))
        following = Path(get_step_checkpoint_dir(str(output_dir), current + 1))
        if not (latest / "adapter_model.safetensors").exists():
            return cls._save_checkpoint(policy, output_dir, current + 1)
        if following.exists():
            shutil.rmtree(following)
        os.rename(latest, following)
        fsync_dir(following.parent)
        return following

    @staticmethod
    def _save_checkpoint(policy: LoraPolicy, output_dir: Path, step: int) -> Path:
        """Write into `<step>.tmp-<pid>`, fsync, then rename: a kill or a full disk mid-save never leaves a half
        checkpoint (a full disk raises `DiskFull` naming the checkpoint)."""
        final = Path(get_step_checkpoint_dir(str(output_dir), step))
        with atomic_dir(final) as tmp, disk_full_guard(final):
            policy.save(tmp)
        return final
