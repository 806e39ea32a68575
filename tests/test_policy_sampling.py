"""The CPU sampler (`LoraPolicy.sample`, backends/decoding.py) against plain transformers on the tiny random model.

What it must keep while it batches, caches and drops finished rows: greedy output equal to HF `generate` per
prompt (left padding is invisible), logprobs equal to a fresh forward pass's log-softmax at the sampled tokens,
per-row `max_tokens`, `finish_reason` and end-of-turn ids, `n` samples per request, and draws that follow
softmax(logits / T).
"""

import pytest
import torch
from transformers import AutoModelForCausalLM

from backends.cpu_dtype import torch_dtype, use_float32_head
from backends.decoding import categorical
from backends.policy import LoraPolicy, LoraSettings, SampleRequest
from backends.tiny_random_model import LORA_TARGETS, ensure_tiny_model

PROMPTS = [[5, 17, 99], [40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51], [7], [200, 3, 3, 3, 3, 9]]


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory) -> str:
    return ensure_tiny_model(tmp_path_factory.mktemp("sampling"))


# Both float types the CPU backend computes in. The logprob tolerance is what a different summation order costs:
# the sampler's batched decode steps and a fresh full-sequence forward add the same terms in another order, which
# moves an fp32 logprob by ~1e-6 and a bf16-base one by up to a few 1e-3 (bf16 keeps 8 bits of mantissa).
LOGPROB_TOLERANCE = {"fp32": 1e-4, "bf16": 1e-2}


@pytest.fixture(scope="module", params=["fp32", "bf16"])
def dtype(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def policy(tiny_path, dtype) -> LoraPolicy:
    return LoraPolicy(tiny_path, LoraSettings(target_modules=LORA_TARGETS), dtype=dtype)


@pytest.fixture(scope="module")
def reference(tiny_path, dtype):
    """The base model as transformers ships it (stock SDPA attention, stock cache), in the policy's float type with
    its fp32 output head: a fresh LoRA adds zero."""
    model = AutoModelForCausalLM.from_pretrained(tiny_path, dtype=torch_dtype(dtype)).eval()
    use_float32_head(model)
    return model


def hf_greedy(model, prompt: list[int], max_new: int, eos_ids: set[int]) -> list[int]:
    out = model.generate(input_ids=torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                         max_new_tokens=max_new, do_sample=False, eos_token_id=sorted(eos_ids) or None,
                         pad_token_id=0)
    return out[0, len(prompt):].tolist()


def until_eos(tokens: list[int], eos_ids: set[int]) -> list[int]:
    for k, t in enumerate(tokens):
        if t in eos_ids:
            return tokens[: k + 1]
    return tokens


def recomputed_logprobs(policy: LoraPolicy, prompt: list[int], completion: list[int]) -> torch.Tensor:
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = policy.model(input_ids=ids).logits[0, len(prompt) - 1 : -1]
    return torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(completion).unsqueeze(-1)).squeeze(-1)


def test_greedy_batch_equals_hf_generate_per_prompt(policy, reference):
    requests = [SampleRequest(p, 10, temperature=0.0) for p in PROMPTS]
    samples = policy.sample(requests)
    for prompt, (sample,) in zip(PROMPTS, samples, strict=True):
        assert sample.token_ids == hf_greedy(reference, prompt, 10, policy.eos_ids)


def test_rows_that_end_early_leave_the_others_unchanged(policy, reference, monkeypatch):
    solo = [hf_greedy(reference, p, 12, set()) for p in PROMPTS]
    stop_ids = {solo[0][2], solo[2][5]}  # two rows end early on "end-of-turn" ids; the batch is compacted
    monkeypatch.setattr(policy, "eos_ids", stop_ids)
    limits = [12, 12, 8, 3]
    samples = policy.sample([SampleRequest(p, m, temperature=0.0) for p, m in zip(PROMPTS, limits, strict=True)])
    for expected_full, limit, (sample,) in zip(solo, limits, samples, strict=True):
        expected = until_eos(expected_full[:limit], stop_ids)
        assert sample.token_ids == expected
        assert sample.finish_reason == ("stop" if expected[-1] in stop_ids else "length")
        assert len(sample.token_ids) == len(sample.logprobs) <= limit
    reasons = [sample.finish_reason for (sample,) in samples]
    assert "stop" in reasons and "length" in reasons and len(samples[0][0].token_ids) < 12


def test_logprobs_are_the_untempered_policy_at_the_sampled_tokens(policy, dtype):
    temps = [1.0, 0.5, 0.0, 2.0]
    samples = policy.sample([SampleRequest(p, 9, temperature=t) for p, t in zip(PROMPTS, temps, strict=True)])
    for prompt, (sample,) in zip(PROMPTS, samples, strict=True):
        expected = recomputed_logprobs(policy, prompt, sample.token_ids)
        assert torch.allclose(torch.tensor(sample.logprobs), expected, atol=LOGPROB_TOLERANCE[dtype])


def test_n_samples_per_request_share_the_prompt(policy, reference, dtype):
    greedy, sampled = policy.sample([SampleRequest(PROMPTS[1], 6, temperature=0.0, n=3),
                                     SampleRequest(PROMPTS[0], 5, temperature=1.0, n=4)])
    assert [s.token_ids for s in greedy] == [hf_greedy(reference, PROMPTS[1], 6, policy.eos_ids)] * 3
    assert len(sampled) == 4
    for sample in sampled:
        assert 1 <= len(sample.token_ids) <= 5
        expected = recomputed_logprobs(policy, PROMPTS[0], sample.token_ids)
        assert torch.allclose(torch.tensor(sample.logprobs), expected, atol=LOGPROB_TOLERANCE[dtype])


def test_on_done_hands_over_each_request_once_and_early(policy, monkeypatch):
    monkeypatch.setattr(policy, "eos_ids", set())
    seen: list[int] = []
    samples = policy.sample([SampleRequest(PROMPTS[0], 8, 1.0, n=2), SampleRequest(PROMPTS[1], 2, 1.0)],
                            on_done=lambda i, s: seen.append(i) or None)
    assert seen == [1, 0]  # the 2-token request is handed over before the 8-token one
    assert [len(s.token_ids) for s in samples[0]] == [8, 8] and len(samples[1][0].token_ids) == 2


def test_first_token_follows_softmax_of_logits_over_temperature(policy):
    prompt, draws = PROMPTS[1], 4000
    with torch.no_grad():
        logits = policy.model(input_ids=torch.tensor([prompt])).logits[0, -1].float()
    for temperature in (1.0, 0.7):
        (samples,) = policy.sample([SampleRequest(prompt, 1, temperature=temperature, n=draws)])
        counts = torch.bincount(torch.tensor([s.token_ids[0] for s in samples]), minlength=logits.numel()).double()
        expected = torch.softmax(logits.double() / temperature, -1) * draws
        common = expected >= 5  # a chi-square statistic over the tokens expected often enough to count
        chi2 = float(((counts[common] - expected[common]) ** 2 / expected[common]).sum())
        dof = int(common.sum()) - 1
        assert chi2 < dof + 5 * (2 * dof) ** 0.5, (temperature, chi2, dof)


def test_categorical_matches_the_probabilities_including_rare_and_zero_entries():
    probs = torch.tensor([0.5, 0.0, 1e-3, 0.25, 0.249, 0.0, 0.0] + [0.0] * 600)
    draws = categorical(probs.expand(200_000, -1), torch.Generator().manual_seed(1), block=4)
    frequency = torch.bincount(draws, minlength=probs.numel()).double() / draws.numel()
    assert frequency[probs == 0].sum() == 0
    assert torch.allclose(frequency[:5], probs[:5].double(), atol=4e-3)
    assert 0.5e-3 < float(frequency[2]) < 1.5e-3
