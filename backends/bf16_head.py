"""The output head of a bf16 model at bf16 speed, with the logprobs of an fp32 head.

The head is the largest single product of a small model (SmolLM2-135M: 576 x 49,152, a fifth of its weights) and
in fp32 it runs at a third of the bf16 speed (bench/serving.py and bench/train_step.py time both). A plain bf16 head
is not enough: its logits come out rounded to bf16, which moves a logprob by up to half a bf16 step of the logit
(0.06 at a logit of 20), the same for sampler and trainer only by luck of summation order. Here the bf16 product
gives every logit to within that rounding, and the logits that decide a logprob are then taken again exactly:
the `TOP_EXACT` largest of each row (most of the log-normaliser) and the token whose logprob is asked for. Hidden
states and weights are bf16 numbers, so a float32 dot product of the two is what an fp32 head computes (the
products are exact; only the order of the sum differs). The tail's rounding errors have both signs and weigh
each by its small probability, so the log-normaliser moves by far less than the rounding of one logit
(tests/test_bf16_head.py bounds it against an fp32 head).

Training uses `HeadLogprob`: the gradient of logprob(t) with respect to the hidden state is W[t] - E_p[W], a
vector per position computed in the forward pass (one more bf16 product), so neither the logits nor a recomputed
forward are kept for the backward pass.
"""

from __future__ import annotations

from typing import Any

import torch

TOP_EXACT = 32  # logits per row taken again in fp32: the head of the distribution, most of its normaliser


class SplitPrecisionHead(torch.nn.Module):
    """A bias-free output head over a bf16 weight (tied to the embedding where the model ties them) whose `forward`
    returns float32 logits: the bf16 product, with each row's `TOP_EXACT` largest logits taken exactly."""

    def __init__(self, weight: torch.nn.Parameter):
        super().__init__()
        self.weight = weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        flat = hidden.reshape(-1, hidden.shape[-1])
        logits = torch.nn.functional.linear(flat.to(self.weight.dtype), self.weight).float()
        top = torch.topk(logits, min(TOP_EXACT, logits.shape[-1]), dim=-1).indices
        logits.scatter_(-1, top, self.exact(flat, top))
        return logits.view(*hidden.shape[:-1], -1)

    def exact(self, hidden: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """The float32 logits of `tokens` ([rows] or [rows, k]) for `hidden` ([rows, dim]), as an fp32 head."""
        single = tokens.dim() == 1
        index = tokens.unsqueeze(-1) if single else tokens
        rows = self.weight[index].float()  # [rows, k, dim]
        logits = torch.bmm(rows, hidden.detach().float().unsqueeze(-1)).squeeze(-1)
        return logits.squeeze(-1) if single else logits


class HeadLogprob(torch.autograd.Function):
    """logprob of `targets` under `head` at each of `hidden`'s rows, differentiable in `hidden` only (the head is
    frozen). The backward pass needs only the per-row direction W[t] - E_p[W], computed here."""

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, targets: torch.Tensor, head: SplitPrecisionHead) -> torch.Tensor:
        logits = head(hidden)
        normaliser = torch.logsumexp(logits, dim=-1)
        target_rows = head.weight[targets]
        chosen = torch.bmm(target_rows.float().unsqueeze(1), hidden.detach().float().unsqueeze(-1)).view(-1)
        if ctx.needs_input_grad[0]:
            probs = (logits - normaliser.unsqueeze(-1)).exp_().to(head.weight.dtype)
            expected = (probs @ head.weight).float()
            ctx.save_for_backward(target_rows.float() - expected)
            ctx.hidden_dtype = hidden.dtype
        return chosen - normaliser

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (direction,) = ctx.saved_tensors
        return (grad.unsqueeze(-1) * direction).to(ctx.hidden_dtype), None, None


def head_logprobs(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """logprob of `targets` ([rows]) after `hidden` ([rows, dim]) in float32, differentiable in `hidden`."""
    if isinstance(head, SplitPrecisionHead):
        return HeadLogprob.apply(hidden, targets, head)
    logits = head(hidden).float()
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def use_split_precision_head(model: torch.nn.Module) -> bool:
    """Give a bf16 causal LM a `SplitPrecisionHead` over its own head weight (still tied to the embedding where it
    was); False, and nothing changed, where the head is not a plain bias-free bf16 linear layer."""
    head = model.get_output_embeddings()
    plain = type(head) is torch.nn.Linear and head.bias is None
    if not plain or head.weight.dtype != torch.bfloat16:
        return False
    model.set_output_embeddings(SplitPrecisionHead(head.weight))
    return True
