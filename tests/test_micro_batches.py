"""The CPU trainer runs a few short rows through the model together (backends/micro_batches.py): the same loss and
gradient as one row at a time, for the RL step and for SFT, and rows grouped only within the token budget."""

import pytest
import torch

import backends.micro_batches
from backends.cpu_sft import SFTExample, sft_step
from backends.micro_batches import micro_batches
from backends.policy import LoraPolicy, LoraSettings
from backends.tiny_random_model import LORA_TARGETS, ensure_tiny_model


def test_consecutive_rows_are_grouped_within_the_padded_budget():
    assert micro_batches([100, 120, 90, 300, 50], budget=400) == [[0, 1, 2], [3], [4]]
    assert micro_batches([500, 10, 10], budget=400) == [[0], [1, 2]]  # a long row runs alone
    assert micro_batches([0, 30, 0, 30], budget=400) == [[1, 3]]  # rows with nothing to compute are left out
    assert micro_batches([30] * 5, budget=30) == [[0], [1], [2], [3], [4]]
    assert micro_batches([]) == []


@pytest.fixture(scope="module")
def policy(tmp_path_factory) -> LoraPolicy:
    return LoraPolicy(ensure_tiny_model(tmp_path_factory.mktemp("micro")), LoraSettings(target_modules=LORA_TARGETS))


def _packed_rows(lengths: list[int], width: int) -> dict[str, torch.Tensor]:
    """Packed rows as ART lays them out: each row's real tokens first, then padding (`group_ids` -1)."""
    generator = torch.Generator().manual_seed(0)
    rows = len(lengths)
    tokens = torch.randint(0, 200, (rows, width), generator=generator)
    group_ids = torch.full((rows, width), -1)
    assistant = torch.zeros((rows, width), dtype=torch.bool)
    for row, length in enumerate(lengths):
        group_ids[row, :length] = row // 2
        assistant[row, 10:length] = True
    advantages = torch.where(assistant, torch.randn((rows, width), generator=generator), 0.0)
    return {"tokens": tokens, "group_ids": group_ids, "parent_ids": group_ids.clone(),
            "input_pos": torch.arange(width).expand(rows, width), "assistant_mask": assistant,
            "logprobs": torch.where(assistant, -1.0, float("nan")), "advantages": advantages,
            "weights": assistant.float()}


def _grads(policy: LoraPolicy) -> list[torch.Tensor]:
    return [p.grad.clone() for p in policy.model.parameters() if p.requires_grad]


def test_rl_rows_together_give_one_row_at_a_times_loss_and_gradient(policy, monkeypatch):
    batch = _packed_rows([60, 45, 80, 30], width=96)
    config = {"epsilon": 0.2, "epsilon_high": 0.2}
    calls: list[int] = []
    forward = policy._token_logprobs
    monkeypatch.setattr(policy, "_token_logprobs", lambda t, *rest: calls.append(t.shape[0]) or forward(t, *rest))
    together_loss, _, _ = policy._accumulate_gradients(batch, config)
    together = _grads(policy)
    assert calls == [4]  # all four rows in one forward
    monkeypatch.setattr(backends.micro_batches, "TOKEN_BUDGET", 1)
    alone_loss, _, _ = policy._accumulate_gradients(batch, config)
    assert calls == [4, 1, 1, 1, 1]
    assert together_loss == pytest.approx(alone_loss, abs=1e-6)
    for a, b in zip(together, _grads(policy), strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    no_grad_together = policy._logprobs_without_grad(batch)
    monkeypatch.setattr(backends.micro_batches, "TOKEN_BUDGET", 1024)
    assert torch.allclose(no_grad_together, policy._logprobs_without_grad(batch), atol=1e-6)


def test_sft_conversations_together_give_one_at_a_times_loss_and_gradient(policy, monkeypatch):
    generator = torch.Generator().manual_seed(1)
    examples = []
    for length in (40, 70, 25):
        ids = torch.randint(0, 200, (length,), generator=generator).tolist()
        examples.append(SFTExample(ids, [-100] * 12 + ids[12:]))
    weights = {n: p.detach().clone() for n, p in policy.model.named_parameters() if p.requires_grad}
    results = []
    for budget in (1024, 1):
        monkeypatch.setattr(backends.micro_batches, "TOKEN_BUDGET", budget)
        for name, p in policy.model.named_parameters():
            if p.requires_grad:
                p.data.copy_(weights[name])
        optimizer = torch.optim.SGD([p for p in policy.model.parameters() if p.requires_grad], lr=0.0)
        metrics = sft_step(policy.model, optimizer, examples, learning_rate=0.0)
        results.append((metrics["loss/train"], _grads(policy)))
    assert results[0][0] == pytest.approx(results[1][0], abs=1e-6)
    for a, b in zip(results[0][1], results[1][1], strict=True):
        assert torch.allclose(a, b, atol=1e-6)
