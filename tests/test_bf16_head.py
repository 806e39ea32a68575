"""The split-precision output head (backends/bf16_head.py): bf16 products, logprobs and gradients as an fp32 head
gives them, in training and in the sampler, and only where no adapter wraps the head."""

import pytest
import torch

import backends.bf16_head
from backends.bf16_head import SplitPrecisionHead, head_logprobs
from backends.policy import LoraPolicy, LoraSettings, SampleRequest, lora_targets_head
from backends.tiny_random_model import LORA_TARGETS, ensure_tiny_model

NOT_THE_HEAD = [t for t in LORA_TARGETS if t != "lm_head"]


@pytest.fixture(scope="module")
def smollm2_states(pytestconfig):
    """SmolLM2's bf16 head weight, and its last hidden states and next tokens along a stretch of this repository's
    README (the same text every run)."""
    from pathlib import Path

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from backends.smollm2 import ensure_pretrained

    path = ensure_pretrained("smollm2-135m", pytestconfig.cache.mkdir("smollm2"))
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()[:4000]
    ids = tokenizer(text, return_tensors="pt").input_ids[:, :300]
    with torch.no_grad():
        hidden = model.model(input_ids=ids).last_hidden_state[0, :-1]
    return model.lm_head.weight.detach(), hidden, ids[0, 1:]


def fp32_logprobs(weight: torch.Tensor, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = hidden.float() @ weight.float().T
    return logits.gather(-1, targets[:, None])[:, 0] - torch.logsumexp(logits, -1)


def test_logprobs_match_an_fp32_head_on_the_real_model(smollm2_states):
    """Measured: about 3e-4 on average, 3e-3 at most; a plain bf16 head is off by about 0.02 on average."""
    weight, hidden, targets = smollm2_states
    exact = fp32_logprobs(weight, hidden, targets)
    with torch.no_grad():
        split = head_logprobs(SplitPrecisionHead(weight), hidden, targets)
    rounded = (hidden @ weight.T).float()
    plain = rounded.gather(-1, targets[:, None])[:, 0] - torch.logsumexp(rounded, -1)
    error, plain_error = (split - exact).abs(), (plain - exact).abs()
    assert float(error.mean()) <= 1e-3 and float(error.max()) <= 1e-2
    assert float(plain_error.mean()) >= 10 * float(error.mean())  # the exact top and target are what makes it


def test_gradient_matches_fp32_autograd_on_the_real_model(smollm2_states):
    weight, hidden, targets = smollm2_states
    reference = hidden[:128].float().requires_grad_(True)
    fp32_logprobs(weight, reference, targets[:128]).sum().backward()
    ours = hidden[:128].clone().requires_grad_(True)
    head_logprobs(SplitPrecisionHead(weight), ours, targets[:128]).sum().backward()
    assert ours.grad.dtype == torch.bfloat16
    relative = (ours.grad.float() - reference.grad).norm() / reference.grad.norm()
    assert float(relative) <= 1e-2


def test_forward_gives_exact_logits_for_each_rows_top():
    torch.manual_seed(0)
    weight = (torch.randn(500, 32) * 2).bfloat16()
    hidden = torch.randn(4, 3, 32).bfloat16()
    logits = SplitPrecisionHead(weight)(hidden)
    exact = hidden.float() @ weight.float().T
    assert logits.shape == (4, 3, 500) and logits.dtype == torch.float32
    top = exact.topk(backends.bf16_head.TOP_EXACT // 4, dim=-1).indices  # clear of ties at the top's edge
    assert torch.allclose(logits.gather(-1, top), exact.gather(-1, top), atol=1e-5)
    assert not torch.allclose(logits, exact, atol=1e-5)  # the tail keeps the bf16 product's rounding


def test_the_policy_splits_the_head_only_where_no_adapter_wraps_it(tmp_path):
    tiny = ensure_tiny_model(tmp_path)
    assert not lora_targets_head("all-linear") and lora_targets_head(LORA_TARGETS)
    assert lora_targets_head("lm_head|q_proj") and not lora_targets_head(".*_proj")
    split = LoraPolicy(tiny, LoraSettings(target_modules=NOT_THE_HEAD), dtype="bf16")
    assert isinstance(split.model.get_base_model().get_output_embeddings(), SplitPrecisionHead)
    wrapped = LoraPolicy(tiny, LoraSettings(target_modules=LORA_TARGETS), dtype="bf16")
    assert wrapped.model.get_base_model().lm_head.base_layer.weight.dtype == torch.float32
    fp32 = LoraPolicy(tiny, LoraSettings(target_modules=NOT_THE_HEAD), dtype="fp32")
    assert type(fp32.model.get_base_model().get_output_embeddings()) is torch.nn.Linear


def test_a_sampled_token_outside_the_exact_top_gets_its_exact_logprob(tmp_path, monkeypatch):
    """With only each row's top logit exact, nearly every token a flat random model draws at temperature 1 is
    outside it: its returned logprob must still be what the trainer computes from the same hidden state, whose
    target logit is exact (the sampler takes the drawn token's logit again after the draw)."""
    monkeypatch.setattr(backends.bf16_head, "TOP_EXACT", 1)
    policy = LoraPolicy(ensure_tiny_model(tmp_path), LoraSettings(target_modules=NOT_THE_HEAD), dtype="bf16")
    head = policy.model.get_base_model().get_output_embeddings()
    with torch.no_grad():
        head.weight.mul_(16)  # logits of ~10, whose bf16 rounding is ~0.03
    seen: list[torch.Tensor] = []
    real_forward = head.forward
    monkeypatch.setattr(head, "forward", lambda hidden: seen.append(hidden.clone()) or real_forward(hidden))
    (sample,) = policy.sample([SampleRequest([5, 17, 99, 3], 12, temperature=1.0)])[0]
    hidden = torch.cat(seen)[: len(sample.token_ids)]  # the hidden state each token was drawn after
    with torch.no_grad():
        trained = head_logprobs(head, hidden, torch.tensor(sample.token_ids))
    assert torch.allclose(torch.tensor(sample.logprobs), trained, atol=1e-4)
