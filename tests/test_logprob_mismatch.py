"""Sampler and trainer agree: each sampled token is trained in the exact context it was sampled in, and its logprob
under the pre-update weights is the one the server returned (`train/logprob_mismatch`, backends/token_check.py).

Rollouts go through the CPU backend's real OpenAI-compatible server; multi-turn ones sample every assistant turn
there, with REPL observations between, as the r2e agent does. Tolerances (measured): fp32 ~1e-7 on the tiny
model, ~1e-5 on SmolLM2; a bf16 base ~1e-4 on the tiny model, ~0.03 on SmolLM2 (the sampler's cached decode and
the trainer's full forward round differently).
"""

import art
import pytest
from art.preprocessing.tokenize import tokenize_trajectory
from art.trajectories import History, get_messages
from openai.types.chat.chat_completion import Choice

import backends.policy
from backends.cpu import CPUBackend, CPUBackendSettings
from backends.policy import LoraSettings
from backends.tiny_random_model import LORA_TARGETS, ensure_tiny_model
from backends.token_check import exact_groups

FP32_TOLERANCE = 1e-4
SMOLLM2_BF16_TOLERANCE = 0.05


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    return ensure_tiny_model(tmp_path_factory.mktemp("base"))


@pytest.fixture(scope="session")
def smollm2(pytestconfig):
    """Converted once into pytest's cache (about 30 s the first time), reused by later runs."""
    from backends.smollm2 import ensure_pretrained

    return ensure_pretrained("smollm2-135m", pytestconfig.cache.mkdir("smollm2"))


async def _backend(base: str, path, dtype: str = "fp32", lora: LoraSettings | None = None):
    backend = CPUBackend(path=str(path), settings=CPUBackendSettings(
        lora=lora or LoraSettings(target_modules=LORA_TARGETS), dtype=dtype))
    model = art.TrainableModel(name="m", project="p", base_model=base, base_path=str(path))
    await model.register(backend)
    return backend, model


async def _rollout(model, turns: int, reward: float, max_tokens: int = 12, edit=None) -> art.Trajectory:
    """A REPL-agent-like conversation: every assistant turn sampled by the server, an observation after each.
    `edit` rewrites each reply before it is recorded and sent back (an agent that reformats its own replies)."""
    trajectory = art.Trajectory(messages_and_choices=[
        {"role": "system", "content": "You fix bugs in a Python REPL."},
        {"role": "user", "content": "The test in test_utils.py fails. Fix utils.py."}], reward=reward)
    client = model.openai_client()
    for turn in range(turns):
        response = await client.chat.completions.create(model=model.get_inference_name(), max_tokens=max_tokens,
                                                        messages=trajectory.messages(), logprobs=True)
        choice = response.choices[0]
        if edit is not None:
            choice.message.content = edit(choice.message.content or "")
        trajectory.messages_and_choices.append(choice)
        if turn < turns - 1:
            role = "tool" if turn % 2 else "user"
            trajectory.messages_and_choices.append({"role": role, "content": f"Out[{turn}]: 'ok'\n>>> "})
    return trajectory


async def _group(model, n: int, turns: int, **options) -> art.TrajectoryGroup:
    return art.TrajectoryGroup([await _rollout(model, turns, float(i), **options) for i in range(n)])


def _ids(choice: Choice) -> list[int]:
    return [int(e.token.removeprefix("token_id:")) for e in choice.logprobs.content]


def _assert_trained_as_sampled(tokenizer, original: art.Trajectory, trained: art.Trajectory) -> None:
    """Every sampled turn is trained exactly once, token for token, after exactly the prompt the server rendered."""
    sampled = [m for m in original.messages_and_choices if isinstance(m, Choice)]
    found = []
    for history in [History(messages_and_choices=trained.messages_and_choices), *trained.additional_histories]:
        items = history.messages_and_choices
        result = tokenize_trajectory(tokenizer, None, history, 1.0, False, trained)
        turns = [(i, m) for i, m in enumerate(items) if isinstance(m, Choice)]
        assert len(turns) == len(result.choice_offsets)
        for (i, choice), offset in zip(turns, result.choice_offsets, strict=True):
            prompt = tokenizer.apply_chat_template(get_messages(items[:i]), add_generation_prompt=True, tokenize=True)
            prompt = list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)
            ids = _ids(choice)
            assert result.token_ids[:offset] == prompt
            assert result.token_ids[offset : offset + len(ids)] == ids
            assert result.assistant_mask[offset : offset + len(ids)] == [1] * len(ids)
            found.append(choice)
    assert [id(c) for c in found] == [id(c) for c in sampled]


async def test_single_turn_logprobs_match_the_trainer_before_the_update(tiny_model, tmp_path):
    backend, model = await _backend(tiny_model, tmp_path)
    try:
        group = await _group(model, 4, turns=1)
        sampled = sum(len(_ids(t.messages_and_choices[-1])) for t in group.trajectories)
        metrics = (await backend.train(model, [group], learning_rate=1e-2)).metrics
    finally:
        await backend.close()
    assert metrics["train/logprob_mismatch"] < FP32_TOLERANCE
    assert metrics["train/logprob_mismatch_tokens"] == sampled
    assert metrics["train/exact_token_share"] == 1.0 and metrics["train/split_trajectories"] == 0


async def test_every_turn_of_a_multi_turn_rollout_is_trained_as_sampled(tiny_model, tmp_path):
    backend, model = await _backend(tiny_model, tmp_path)
    try:
        group = await _group(model, 4, turns=3)
        tokenizer = backend.policy(model).tokenizer
        (checked,), check = exact_groups(tokenizer, [group])
        for original, trained in zip(group.trajectories, checked.trajectories, strict=True):
            _assert_trained_as_sampled(tokenizer, original, trained)
        assert check.exact_tokens == check.sampled_tokens > 0
        metrics = (await backend.train(model, [group], learning_rate=1e-2)).metrics
    finally:
        await backend.close()
    assert metrics["train/logprob_mismatch"] < FP32_TOLERANCE
    assert metrics["train/exact_token_share"] == 1.0


async def test_a_drifted_turn_is_split_off_instead_of_trained_in_a_context_its_sampler_never_saw(
        tiny_model, tmp_path, monkeypatch):
    """An agent that rewrites its replies: the next turn's sampler saw the rewritten text, not the sampled ids that
    ART splices in. Split, every turn is trained as sampled; trained unsplit, the mismatch shows the drift."""
    backend, model = await _backend(tiny_model, tmp_path)
    try:
        group = await _group(model, 4, turns=3, edit=lambda text: text + "\n# edited")
        split = (await backend.train(model, [group], learning_rate=1e-6)).metrics

        def unsplit(tokenizer, groups, allow_without_logprobs=False):  # the check counts, but splits nothing
            return exact_groups(tokenizer, groups, allow_without_logprobs=True)

        monkeypatch.setattr(backends.policy, "exact_groups", unsplit)
        drifted = (await backend.train(model, [group], learning_rate=1e-6)).metrics
    finally:
        await backend.close()
    assert split["train/split_trajectories"] == 4 and split["train/exact_token_share"] == 1.0
    assert split["train/logprob_mismatch"] < FP32_TOLERANCE
    assert drifted["train/exact_token_share"] < 0.6  # only the first turns keep their context
    assert drifted["train/logprob_mismatch"] > 10 * FP32_TOLERANCE


async def test_the_mismatch_is_measured_before_the_update_and_sees_a_corrupted_logprob(tiny_model, tmp_path):
    backend, model = await _backend(tiny_model, tmp_path)
    try:
        group = await _group(model, 4, turns=2)
        first = (await backend.train(model, [group], learning_rate=0.5)).metrics  # a large step
        stale = (await backend.train(model, [group], learning_rate=1e-6)).metrics  # the same rollouts, now stale
        fresh = await _group(model, 4, turns=2)
        corrupted = fresh.model_copy(deep=True)
        corrupted.trajectories[0].messages_and_choices[2].logprobs.content[0].logprob -= 3.0
        honest = (await backend.train(model, [fresh], learning_rate=1e-6)).metrics
        lied = (await backend.train(model, [corrupted], learning_rate=1e-6)).metrics
    finally:
        await backend.close()
    assert first["train/logprob_mismatch"] < FP32_TOLERANCE  # measured before the large step it then took
    assert stale["train/logprob_mismatch"] > 100 * FP32_TOLERANCE
    tokens = lied["train/logprob_mismatch_tokens"]
    assert lied["train/logprob_mismatch"] - honest["train/logprob_mismatch"] == pytest.approx(3.0 / tokens, rel=0.05)


async def test_smollm2_bf16_multi_turn_is_trained_as_sampled(smollm2, tmp_path):
    backend, model = await _backend(smollm2, tmp_path, dtype="bf16", lora=LoraSettings())
    try:
        group = await _group(model, 2, turns=3, max_tokens=8)
        tokenizer = backend.policy(model).tokenizer
        (checked,), _ = exact_groups(tokenizer, [group])
        for original, trained in zip(group.trajectories, checked.trajectories, strict=True):
            _assert_trained_as_sampled(tokenizer, original, trained)
        metrics = (await backend.train(model, [group], learning_rate=1e-4)).metrics
    finally:
        await backend.close()
    assert metrics["train/exact_token_share"] == 1.0
    assert 0 < metrics["train/logprob_mismatch"] < SMOLLM2_BF16_TOLERANCE
