"""Supervised fine-tuning for the CPU backend: what `CPUBackend._train_sft` runs under ART's `model.train_sft()`.

Conversations are rendered with ART's own chat-template helpers (`art.preprocessing.tokenize`), the same
rendering the RL step and the policy server use, so SFT teaches exactly the tokens the agent later sees. The
loss covers assistant turns only: each assistant message's span is found by rendering the conversation up to it
(with the generation prompt) and through it; everything else (system, user, observations, the assistant header)
is masked with -100. ART's GPU path does the same with unsloth's `train_on_responses_only`, which needs CUDA.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from backends.bf16_head import head_logprobs
from backends.micro_batches import micro_batches

IGNORE = -100


@dataclass
class SFTExample:
    input_ids: list[int]
    labels: list[int]

    @property
    def trainable_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE)


def tokenize_conversation(tokenizer: Any, trajectory: Any, max_seq_length: int) -> SFTExample | None:
    """Token ids and labels of one conversation; None when it is longer than `max_seq_length` (ART drops those too)."""
    from art.preprocessing.tokenize import (
        _apply_chat_template_token_ids,
        _chat_template_kwargs,
        _messages_for_chat_template,
        _normalize_tools_for_chat_template,
    )

    messages = _messages_for_chat_template(tokenizer, trajectory.messages_and_choices)
    kwargs: dict[str, Any] = _chat_template_kwargs(tokenizer, None)
    tools = _normalize_tools_for_chat_template(trajectory.tools)
    if tools:
        kwargs["tools"] = tools

    def render(upto: int, generation_prompt: bool) -> list[int]:
        return _apply_chat_template_token_ids(tokenizer, messages[:upto], tokenize=True,
                                              add_generation_prompt=generation_prompt, **kwargs)

    input_ids = render(len(messages), False)
    if len(input_ids) > max_seq_length:
        return None
    labels = [IGNORE] * len(input_ids)
    for index, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        start, end = len(render(index, True)), len(render(index + 1, False))
        for position in range(start, min(end, len(input_ids))):
            labels[position] = input_ids[position]
    return SFTExample(input_ids, labels)


def assistant_token_loss(model: Any, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled positions only.

    The output head runs on those positions alone: the full logits are one float per vocabulary entry for every
    position, kept again by cross-entropy and by the gradient (bench/cpu_policy.py prints one copy's size), while
    fewer than half the positions are trained."""
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = causal_lm.model(input_ids=ids, attention_mask=mask).last_hidden_state
    targets = labels[:, 1:]
    chosen = targets != IGNORE
    return -head_logprobs(causal_lm.get_output_embeddings(), hidden[:, :-1][chosen], targets[chosen]).mean()


def padded(examples: list[SFTExample]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Input ids, attention mask and labels of `examples` as one right-padded batch (padding is masked from
    attention and labelled IGNORE, so each row computes what it would alone)."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.zeros((len(examples), width), dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    for row, e in enumerate(examples):
        ids[row, : len(e.input_ids)] = torch.tensor(e.input_ids)
        mask[row, : len(e.input_ids)] = 1
        labels[row, : len(e.labels)] = torch.tensor(e.labels)
    return ids, mask, labels


def sft_step(model: Any, optimizer: torch.optim.Optimizer, examples: list[SFTExample], learning_rate: float,
             max_grad_norm: float = 1.0) -> dict[str, float]:
    """One gradient step on a batch: mean cross-entropy over the batch's assistant tokens.

    The gradient is accumulated over micro-batches of conversations (backends/micro_batches.py), each weighted by
    its share of the batch's trained tokens (the same gradient as the whole batch at once), so only about one long
    sequence's activations are held."""
    for group in optimizer.param_groups:
        group["lr"] = learning_rate
    total = sum(e.trainable_tokens for e in examples)
    optimizer.zero_grad(set_to_none=True)
    if total == 0:  # nothing to learn in this batch, nothing to step
        return {"loss/train": 0.0, "loss/learning_rate": learning_rate, "loss/grad_norm": 0.0}
    loss_value = 0.0
    lengths = [len(e.input_ids) if e.trainable_tokens else 0 for e in examples]
    for rows in micro_batches(lengths):
        ids, mask, labels = padded([examples[i] for i in rows])
        loss = assistant_token_loss(model, ids, mask, labels)
        share = sum(examples[i].trainable_tokens for i in rows) / total
        (loss * share).backward()
        loss_value += loss.item() * share
    params = [p for p in model.parameters() if p.requires_grad]
    norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    return {"loss/train": loss_value, "loss/learning_rate": learning_rate, "loss/grad_norm": float(norm)}
