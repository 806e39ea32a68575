"""A transformers model with a peft LoRA adapter that can both sample (with logprobs) and take GRPO steps.

One object owns the weights so that generation always sees the adapter as it is after the latest step: the
CPU backend's whole point is that rollouts sample from the policy being trained, as vLLM does on GPU.
A lock keeps sampling and training from touching the weights at the same time.
"""

from __future__ import annotations

import contextlib
import math
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from backends.batch_decoder import Poll, decode
from backends.bf16_head import SplitPrecisionHead, head_logprobs, use_split_precision_head
from backends.checkpoint_files import ADAPTER_FILE, OPTIMIZER_FILE, CheckpointError, checkpoint_problem
from backends.cpu_dtype import resolve_cpu_dtype, torch_dtype, use_float32_head
from backends.decoding import (
    Sample,
    SampleRequest,
    lean_lora_layers,
    store_frozen_linears_transposed,
    use_grouped_decode_attention,
)
from backends.micro_batches import micro_batches
from backends.sample_threads import AdaptiveThreads, fixed_sample_threads
from backends.token_check import LogprobMismatch, exact_groups
from backends.train_options import TrainSettings

__all__ = ["CheckpointError", "LoraPolicy", "LoraSettings", "Sample", "SampleRequest", "TrainSettings",
           "checkpoint_problem"]

LOGPROB_CHUNK = 512  # positions per output-head chunk when training (memory, see _token_logprobs)


@dataclass
class LoraSettings:
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"


def lora_targets_head(target_modules: str | list[str], init_adapter: str | None = None) -> bool:
    """Whether the adapter (ours, or the warm start's own config) wraps the output head `lm_head`: peft's
    `all-linear` leaves it out, a name list or a regex (matched against the module's name) may put it in."""
    if init_adapter:
        from peft import PeftConfig

        target_modules = PeftConfig.from_pretrained(init_adapter).target_modules or []
    if isinstance(target_modules, str):
        return target_modules != "all-linear" and re.fullmatch(target_modules, "lm_head") is not None
    return "lm_head" in target_modules


def real_lengths(tensors: dict[str, torch.Tensor]) -> list[int]:
    """Each packed row's length up to its last real token (`group_ids` -1 marks padding; 0 for padding only)."""
    group_ids = tensors["group_ids"]
    positions = torch.arange(1, group_ids.shape[1] + 1)
    return torch.where(group_ids != -1, positions, 0).amax(dim=1).tolist()


def without_padding(row: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Packed rows (ART pads every row to the batch's longest) cut after their last real token (`group_ids` -1
    marks padding). Padding is masked out of the loss but not out of the compute: every padded position goes
    through every layer, and attention grows with the square of the width (bench/train_step.py times the step)."""
    width, end = row["group_ids"].shape[1], max(real_lengths(row), default=0) or 1
    if end == width:
        return row
    return {k: v[:, :end] if v.dim() >= 2 and v.shape[1] == width else v for k, v in row.items()}


class LoraPolicy:
    def __init__(self, base_model: str, lora: LoraSettings, *, seed: int = 0, max_seq_length: int = 2048,
                 init_adapter: str | None = None, dtype: str = "auto"):
        from peft import LoraConfig, PeftModel, get_peft_model
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        torch.manual_seed(seed)
        self.tokenizer = AutoTokenizer.from_pretrained(base_model)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        model_config = AutoConfig.from_pretrained(base_model)  # read once: it decides the dtype, then builds the model
        self.dtype = resolve_cpu_dtype(dtype, hidden_size=getattr(model_config, "hidden_size", None))
        base = AutoModelForCausalLM.from_pretrained(base_model, config=model_config, dtype=torch_dtype(self.dtype))
        if self.dtype == "fp32" or lora_targets_head(lora.target_modules, init_adapter) \
                or not use_split_precision_head(base):
            use_float32_head(base)  # an adapter on the head needs a plain linear layer to wrap
        use_grouped_decode_attention(base)
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
        store_frozen_linears_transposed(self.model)
        self.max_seq_length = max_seq_length
        self.lock = threading.Lock()
        self._writers_waiting = 0  # training or loading waits for the lock: sampling stops taking in requests
        self._waiting_guard = threading.Lock()
        self.generator = torch.Generator().manual_seed(seed)
        self.optimizer = torch.optim.AdamW(
            [p for p in self.model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.0
        )
        self.eos_ids = self._stop_token_ids()
        self.sample_threads = fixed_sample_threads()  # None: `AdaptiveThreads` chooses between tokens
        self._threads = AdaptiveThreads()

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
        """Load a checkpoint's adapter and optimizer; `CheckpointError` (one line) when its files are damaged."""
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        if (problem := checkpoint_problem(directory)) is not None:
            raise CheckpointError(f"checkpoint {directory} is unusable: {problem}")
        with self.exclusive():
            set_peft_model_state_dict(self.model, load_file(str(directory / ADAPTER_FILE)))
            if (directory / OPTIMIZER_FILE).exists():
                self.optimizer.load_state_dict(torch.load(directory / OPTIMIZER_FILE, weights_only=True))

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """The lock, for changing the weights: a batch that is decoding stops taking in new requests meanwhile, so
        that a stream of arrivals cannot hold a training step off for ever."""
        with self._waiting_guard:
            self._writers_waiting += 1
        try:
            self.lock.acquire()
        finally:
            with self._waiting_guard:
                self._writers_waiting -= 1
        try:
            yield
        finally:
            self.lock.release()

    # ---- sampling ------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def sample(self, requests: list[SampleRequest],
               on_done: Callable[[int, list[Sample]], None] | None = None, *,
               adapter: bool = True, poll: Poll | None = None) -> list[list[Sample]]:
        """Sample every request in one batch with a KV cache (backends/batch_decoder.py); per-row temperature and
        length.

        `on_done(i, samples)` hands over request `i` as soon as all its rows have ended; `poll()` is asked between
        tokens for requests that join the batch (continuous batching), except while training waits for the
        weights. The sampler runs on `sample_threads` intra-op threads if set (`ART_SAMPLE_THREADS`), else on as
        many as backends/sample_threads.py finds free between tokens; torch's count is restored afterwards.
        `adapter=False` samples the base model (the adapter off, as the KL reference does): the frozen executor of
        the planner and workflow envs.
        """
        threads = torch.get_num_threads()
        choose = (lambda: self.sample_threads) if self.sample_threads else self._threads.choose

        def between_tokens() -> list:
            if (wanted := choose()) != torch.get_num_threads():
                torch.set_num_threads(wanted)
            return [] if poll is None or self._writers_waiting else poll()

        try:
            with self.lock, (contextlib.nullcontext() if adapter else self.model.disable_adapter()), \
                    lean_lora_layers(self.model):
                torch.set_num_threads(choose())
                return decode(self.model, requests, pad_id=self.tokenizer.pad_token_id, eos_ids=self.eos_ids,
                              generator=self.generator, on_done=on_done, poll=between_tokens)
        finally:
            torch.set_num_threads(threads)

    # ---- training ------------------------------------------------------------------------------------------

    def train_step(self, trajectory_groups: list[Any], settings: TrainSettings) -> dict[str, float]:
        """One GRPO update: ART's tokenisation and packing, ART's loss, a peft forward/backward on CPU.

        With `precalculate_logprobs` the old logprobs are the trainer's own, computed before the first gradient step
        (the sampler's stay as `original_logprobs`, which truncated importance sampling weighs against); with a KL
        coefficient the reference logprobs come from the base model (adapter off) or `kl_reference`'s adapter.
        Both are computed once, up front, without gradients, as ART's unsloth service does.

        Before tokenising, trajectories whose later turns would be trained in a context their sampler never saw are
        split (backends/token_check.py); `logprob_mismatch` compares sampler and trainer logprobs before the
        update: on the first gradient step's rows (`logprob_mismatch_tokens` says how many), on all with
        `precalculate_logprobs`."""
        from art.preprocessing.pack import packed_tensors_from_tokenized_results
        from art.preprocessing.tokenize import tokenize_trajectory_groups

        groups, check = exact_groups(self.tokenizer, trajectory_groups,
                                     allow_without_logprobs=settings.allow_training_without_logprobs)
        results = list(
            tokenize_trajectory_groups(
                self.tokenizer,
                groups,
                allow_training_without_logprobs=settings.allow_training_without_logprobs,
                scale_rewards=settings.scale_rewards,
            )
        )
        limit = min(self.max_seq_length, settings.max_sequence_length or self.max_seq_length)
        too_long = [r for r in results if len(r.token_ids) > limit]
        results = [r for r in results if len(r.token_ids) <= limit]
        metrics: dict[str, float] = {"dropped_too_long": float(len(too_long))} | check.metrics()
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
        for group in self.optimizer.param_groups:
            group["lr"] = settings.learning_rate
        tensors = {k: v for k, v in packed.items() if isinstance(v, torch.Tensor)}
        rows = tensors["tokens"].shape[0]
        losses, norms, corrs, kls, tokens = [], [], [], [], 0
        mismatch = LogprobMismatch()
        with self.exclusive():
            if settings.precalculate_logprobs:
                tensors["original_logprobs"] = tensors["logprobs"]
                tensors["logprobs"] = self._precalculated_logprobs(tensors)
                mismatch.add(tensors["logprobs"], tensors["original_logprobs"], tensors["assistant_mask"],
                             shifted=False)
            if settings.kl_penalty_coef > 0:
                with self._reference_weights(settings.kl_reference):
                    tensors["ref_logprobs"] = self._logprobs_without_grad(tensors)
            self.model.train()
            try:
                for start in range(0, rows, settings.rows_per_gradient_step):
                    batch = {k: v[start : start + settings.rows_per_gradient_step] for k, v in tensors.items()}
                    if not bool(batch["assistant_mask"].any()):
                        continue
                    # Before the first update the loss's forward is the pre-update policy: it measures the
                    # mismatch of these rows for free (all rows when precalculated above).
                    first = not losses and not settings.precalculate_logprobs
                    loss_value, corr, kl = self._accumulate_gradients(batch, settings.loss,
                                                                      mismatch if first else None)
                    params = [p for p in self.model.parameters() if p.requires_grad]
                    norm = torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
                    self.optimizer.step()
                    losses.append(loss_value)
                    norms.append(float(norm))
                    corrs += [corr] if corr is not None else []
                    kls += [kl] if kl is not None else []
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
        metrics.update(mismatch.metrics())
        if corrs:
            metrics["probs_corr"] = sum(corrs) / len(corrs)
        if kls:
            metrics["kl_policy_ref"] = sum(kls) / len(kls)
        return metrics

    def _accumulate_gradients(self, batch: dict[str, torch.Tensor], config: Any,
                              mismatch: LogprobMismatch | None = None) -> tuple[float, float | None, float | None]:
        """The gradient of ART's loss over `batch`, a few rows at a time (gradient accumulation).

        ART's loss is a mean over the batch's weighed tokens, so each micro-batch's loss is scaled by its share of
        them and the sum of their gradients is the batch gradient. Micro-batches (backends/micro_batches.py) keep
        the activations of about one long sequence in memory: those of a whole batch through every layer (attention
        probabilities included) can run the machine out of memory. Returns the loss, the mean probs_corr and the
        mean KL to the reference."""
        from art.loss import loss_fn

        weighed = batch["assistant_mask"][:, 1:].sum(dim=1).float()  # ART's loss shifts the mask by one
        total = float(weighed.sum())
        self.optimizer.zero_grad(set_to_none=True)
        loss_value, corrs, kls = 0.0, [], []
        lengths = [length if w > 0 else 0 for length, w in zip(real_lengths(batch), weighed.tolist(), strict=True)]
        for rows in micro_batches(lengths):
            micro = without_padding({k: v[rows] for k, v in batch.items()})
            ref = micro.pop("ref_logprobs", None)
            new_logprobs = self._token_logprobs(micro["tokens"], micro["group_ids"] != -1, micro["assistant_mask"])
            if mismatch is not None:
                mismatch.add(new_logprobs, micro["logprobs"], micro["assistant_mask"], shifted=True)
            loss = loss_fn(micro, new_logprobs, ref, None, config)  # type: ignore[arg-type]
            share = float(weighed[rows].sum()) / total
            (loss.policy_loss * share).backward()
            loss_value += loss.policy_loss.item() * share
            if not math.isnan(loss.probs_corr.item()):
                corrs.append(loss.probs_corr.item())
            if loss.kl_policy_ref is not None:
                kls.append(loss.kl_policy_ref.item() * share)
        return (loss_value, (sum(corrs) / len(corrs) if corrs else None), (sum(kls) if kls else None))

    @torch.no_grad()
    def _logprobs_without_grad(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        """`_token_logprobs` of every row (shifted as ART's loss expects), in micro-batches, with no graph."""
        width = tensors["tokens"].shape[1]
        out = torch.zeros(tensors["tokens"].shape, dtype=torch.float32)
        for rows in micro_batches(real_lengths(tensors)):
            micro = without_padding({k: tensors[k][rows] for k in ("tokens", "group_ids", "assistant_mask")})
            logprobs = self._token_logprobs(micro["tokens"], micro["group_ids"] != -1, micro["assistant_mask"])
            out[rows] = torch.nn.functional.pad(logprobs, (0, width - logprobs.shape[1]))
        return out

    def _precalculated_logprobs(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        """The policy's own logprob of each assistant token, in the packed layout (logprob of token t at t, NaN
        elsewhere), as ART's unsloth service puts it in place of the sampler's before the first gradient step."""
        shifted = self._logprobs_without_grad(tensors)
        unshifted = torch.nn.functional.pad(shifted[:, :-1], (1, 0), value=0.0)
        return torch.where(tensors["assistant_mask"].bool(), unshifted, torch.full_like(unshifted, float("nan")))

    @contextlib.contextmanager
    def _reference_weights(self, adapter_dir: str | None) -> Iterator[None]:
        """The KL reference in place of the policy: the base model (adapter off), or another adapter's weights
        (e.g. an earlier checkpoint) loaded into the LoRA layers and swapped back afterwards."""
        if adapter_dir is None:
            with self.model.disable_adapter():
                yield
            return
        from peft import get_peft_model_state_dict, set_peft_model_state_dict
        from safetensors.torch import load_file

        path = Path(adapter_dir) / ADAPTER_FILE
        if not path.exists():
            raise FileNotFoundError(f"KL reference: no adapter at {path}")
        own = {k: v.detach().clone() for k, v in get_peft_model_state_dict(self.model).items()}
        set_peft_model_state_dict(self.model, load_file(str(path)))
        try:
            yield
        finally:
            set_peft_model_state_dict(self.model, own)

    def _token_logprobs(self, tokens: torch.Tensor, attention: torch.Tensor,
                        assistant: torch.Tensor | None = None) -> torch.Tensor:
        """logprob of token t+1 at position t (ART's loss shifts its inputs the same way); 0 where not needed.

        Only positions whose next token is an assistant token are computed (the loss weighs nothing else), and the
        output head runs on them in chunks whose logits are not kept for the backward pass (the split-precision
        head keeps one vector per position instead; an fp32 head is recomputed): the full float logits of a
        batch (one float per vocabulary entry for every position, several times over with log-softmax and
        autograd; bench/cpu_policy.py prints one copy's size) can run the machine out of memory."""
        from torch.utils.checkpoint import checkpoint

        causal_lm = self.model.get_base_model()
        hidden = causal_lm.model(input_ids=tokens, attention_mask=attention.long()).last_hidden_state[:, :-1]
        wanted = attention[:, 1:].bool() if assistant is None else assistant[:, 1:].bool()
        targets = tokens[:, 1:][wanted]
        chosen = hidden[wanted]
        head = causal_lm.get_output_embeddings()
        chunks = range(0, len(targets), LOGPROB_CHUNK)
        if isinstance(head, SplitPrecisionHead):  # keeps no logits for the backward pass (backends/bf16_head.py)
            pieces = [head_logprobs(head, chosen[i : i + LOGPROB_CHUNK], targets[i : i + LOGPROB_CHUNK])
                      for i in chunks]
        else:
            pieces = [checkpoint(head_logprobs, head, chosen[i : i + LOGPROB_CHUNK], targets[i : i + LOGPROB_CHUNK],
                                 use_reentrant=False) for i in chunks]
        logprobs = torch.zeros(tokens.shape, dtype=torch.float32)
        if pieces:
            logprobs[:, :-1][wanted] = torch.cat(pieces)
        return logprobs
