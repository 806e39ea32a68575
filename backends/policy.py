"""A transformers model with a peft LoRA adapter that can both sample (with logprobs) and take GRPO steps.

One object owns the weights so that generation always sees the adapter as it is after the latest step: the
CPU backend's whole point is that rollouts sample from the policy being trained, as vLLM does on GPU.
A lock keeps sampling and training from touching the weights at the same time.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

ADAPTER_FILE = "adapter_model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"


@dataclass
class SampleRequest:
    """One prompt to complete; `n` samples of it are drawn."""

    prompt_ids: list[int]
    max_tokens: int
    temperature: float = 1.0
    n: int = 1


@dataclass
class Sample:
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str  # "stop" when the model ended the turn, "length" when max_tokens cut it


@dataclass
class LoraSettings:
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"


@dataclass
class TrainSettings:
    """The `backend.train()` keywords the CPU backend honours (names and meanings as in ART's LocalBackend)."""

    learning_rate: float
    advantage_balance: float = 0.0
    scale_rewards: bool = True
    loss_fn: str = "cispo"
    epsilon: float | None = None
    epsilon_high: float | None = None
    importance_sampling_level: str = "token"
    allow_training_without_logprobs: bool = False
    max_grad_norm: float = 1.0
    rows_per_gradient_step: int = 8
    extra: dict[str, Any] = field(default_factory=dict)


class LoraPolicy:
    def __init__(self, base_model: str, lora: LoraSettings, *, seed: int = 0, max_seq_length: int = 2048,
                 init_adapter: str | None = None):
        from peft import LoraConfig, PeftModel, get_peft_model
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.manual_seed(seed)
        self.tokenizer = AutoTokenizer.from_pretrained(base_model)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        base = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
        config = LoraConfig(
            r=lora.rank,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=lora.target_modules,
            task_type="CAUSAL_LM",
        )
        if init_adapter:  # warm start: the adapter's own config (rank, targets) replaces ours
            self.model = PeftModel.from_pretrained(base, init_adapter, is_trainable=True)
        else:
            self.model = get_peft_model(base, config)
        self.model.eval()
        self.max_seq_length = max_seq_length
        self.lock = threading.Lock()
        self.generator = torch.Generator().manual_seed(seed)
        self.optimizer = torch.optim.AdamW(
            [p for p in self.model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.0
        )
        self.eos_ids = self._stop_token_ids()

    def _stop_token_ids(self) -> set[int]:
        ids = {self.tokenizer.eos_token_id}
        gen_eos = getattr(self.model.generation_config, "eos_token_id", None)
        if isinstance(gen_eos, int):
            ids.add(gen_eos)
        elif isinstance(gen_eos, list):
            ids.update(gen_eos)
        return {i for i in ids if i is not None}

    # ---- adapter files -------------------------------------------------------------------------------------

    def save(self, directory: Path) -> None:
        self.model.save_pretrained(str(directory), save_embedding_layers=False)
        self.tokenizer.save_pretrained(str(directory))
        torch.save(self.optimizer.state_dict(), directory / OPTIMIZER_FILE)

    def load(self, directory: Path) -> None:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        with self.lock:
            set_peft_model_state_dict(self.model, load_file(str(directory / ADAPTER_FILE)))
            if (directory / OPTIMIZER_FILE).exists():
                self.optimizer.load_state_dict(torch.load(directory / OPTIMIZER_FILE, weights_only=True))

    # ---- sampling ------------------------------------------------------------------------------------------

    @torch.no_grad()
    def sample(self, requests: list[SampleRequest]) -> list[list[Sample]]:
        """Sample every request in one left-padded batch with a KV cache; per-row temperature and length."""
        rows: list[tuple[int, SampleRequest]] = [(i, r) for i, r in enumerate(requests) for _ in range(r.n)]
        if not rows:
            return []
        pad = self.tokenizer.pad_token_id
        width = max(len(r.prompt_ids) for _, r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, (_, r) in enumerate(rows):
            ids[j, width - len(r.prompt_ids) :] = torch.tensor(r.prompt_ids)
            mask[j, width - len(r.prompt_ids) :] = 1
        temps = torch.tensor([max(r.temperature, 0.0) for _, r in rows])
        limits = torch.tensor([r.max_tokens for _, r in rows])
        out_ids: list[list[int]] = [[] for _ in rows]
        out_lp: list[list[float]] = [[] for _ in rows]
        done = torch.zeros(len(rows), dtype=torch.bool)
        stopped = torch.zeros(len(rows), dtype=torch.bool)
        eos = torch.tensor(sorted(self.eos_ids))
        with self.lock:
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
            for t in range(int(limits.max())):
                logits = out.logits[:, -1, :].float()
                logprobs = torch.log_softmax(logits, dim=-1)
                greedy = logits.argmax(-1)
                scaled = logits / temps.clamp(min=1e-5).unsqueeze(-1)
                drawn = torch.multinomial(torch.softmax(scaled, -1), 1, generator=self.generator).squeeze(-1)
                token = torch.where(temps > 0, drawn, greedy)
                for j in range(len(rows)):
                    if not done[j]:
                        out_ids[j].append(int(token[j]))
                        out_lp[j].append(float(logprobs[j, token[j]]))
                hit_eos = torch.isin(token, eos)
                stopped |= hit_eos & ~done
                done |= hit_eos | (limits <= t + 1)
                if bool(done.all()):
                    break
                mask = torch.cat([mask, (~done).long().unsqueeze(-1)], dim=-1)
                positions = positions[:, -1:] + 1
                out = self.model(
                    input_ids=token.unsqueeze(-1),
                    attention_mask=mask,
                    position_ids=positions,
                    past_key_values=out.past_key_values,
                    use_cache=True,
                )
        grouped: list[list[Sample]] = [[] for _ in requests]
        for j, (i, _) in enumerate(rows):
            reason = "stop" if stopped[j] else "length"
            grouped[i].append(Sample(out_ids[j], out_lp[j], reason))
        return grouped

    # ---- training ------------------------------------------------------------------------------------------

    def train_step(self, trajectory_groups: list[Any], settings: TrainSettings) -> dict[str, float]:
        """One GRPO update: ART's tokenisation and packing, ART's loss, a peft forward/backward on CPU."""
        from art import dev
        from art.loss import loss_fn
        from art.preprocessing.pack import packed_tensors_from_tokenized_results
        from art.preprocessing.tokenize import tokenize_trajectory_groups

        results = list(
            tokenize_trajectory_groups(
                self.tokenizer,
                trajectory_groups,
                allow_training_without_logprobs=settings.allow_training_without_logprobs,
                scale_rewards=settings.scale_rewards,
            )
        )
        too_long = [r for r in results if len(r.token_ids) > self.max_seq_length]
        results = [r for r in results if len(r.token_ids) <= self.max_seq_length]
        metrics: dict[str, float] = {"dropped_too_long": float(len(too_long))}
        if not results:
            return metrics | {"num_gradient_steps": 0.0}
        packed = packed_tensors_from_tokenized_results(
            results,
            max(len(r.token_ids) for r in results),
            pad_token_id=self.tokenizer.pad_token_id,
            truncate_long_results=False,
            advantage_balance=settings.advantage_balance,
            pack_results=False,
        )
        config: dev.TrainConfig = {
            "ppo": settings.loss_fn == "ppo",
            "importance_sampling_level": settings.importance_sampling_level,  # type: ignore[typeddict-item]
        }
        if settings.epsilon is not None:
            config["epsilon"] = settings.epsilon
        if settings.epsilon_high is not None:
            config["epsilon_high"] = settings.epsilon_high
        for group in self.optimizer.param_groups:
            group["lr"] = settings.learning_rate
        tensors = {k: v for k, v in packed.items() if isinstance(v, torch.Tensor)}
        rows = tensors["tokens"].shape[0]
        losses, norms, corrs, tokens = [], [], [], 0
        with self.lock:
            self.model.train()
            try:
                for start in range(0, rows, settings.rows_per_gradient_step):
                    batch = {k: v[start : start + settings.rows_per_gradient_step] for k, v in tensors.items()}
                    if not bool(batch["assistant_mask"].any()):
                        continue
                    new_logprobs = self._token_logprobs(batch["tokens"], batch["group_ids"] != -1)
                    loss = loss_fn(batch, new_logprobs, None, None, config)  # type: ignore[arg-type]
                    self.optimizer.zero_grad(set_to_none=True)
                    loss.policy_loss.backward()
                    params = [p for p in self.model.parameters() if p.requires_grad]
                    norm = torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
                    self.optimizer.step()
                    losses.append(loss.policy_loss.item())
                    norms.append(float(norm))
                    if not math.isnan(loss.probs_corr.item()):
                        corrs.append(loss.probs_corr.item())
                    tokens += int(batch["assistant_mask"].sum())
            finally:
                self.model.eval()
        metrics.update(
            {
                "loss": sum(losses) / max(len(losses), 1),
                "grad_norm": sum(norms) / max(len(norms), 1),
                "num_gradient_steps": float(len(losses)),
                "trained_tokens": float(tokens),
                "trained_sequences": float(rows),
            }
        )
        if corrs:
            metrics["probs_corr"] = sum(corrs) / len(corrs)
        return metrics

    def _token_logprobs(self, tokens: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        """logprob of token t+1 at position t (ART's loss shifts its inputs the same way); last position 0."""
        logits = self.model(input_ids=tokens, attention_mask=attention.long()).logits.float()
        logprobs = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, tokens[:, 1:].unsqueeze(-1)).squeeze(-1)
        return torch.nn.functional.pad(logprobs, (0, 1), value=0.0)
