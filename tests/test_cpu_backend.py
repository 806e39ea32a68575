"""The CPU backend behind ART's own Model API: serving with logprobs, auth, GRPO steps, checkpoints."""

import art
import httpx
import pytest

from backends.cpu import CPUBackend, CPUBackendSettings
from backends.policy import LoraSettings
from backends.tiny_model import LORA_TARGETS, build_tokenizer, ensure_tiny_model


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    return ensure_tiny_model(tmp_path_factory.mktemp("base"))


@pytest.fixture
async def registered(tiny_model, tmp_path):
    settings = CPUBackendSettings(lora=LoraSettings(target_modules=LORA_TARGETS))
    backend = CPUBackend(path=str(tmp_path), settings=settings)
    model = art.TrainableModel(name="m", project="p", base_model=tiny_model, base_path=str(tmp_path))
    await model.register(backend)
    yield backend, model
    await backend.close()


MESSAGES = [{"role": "user", "content": "Say a."}]


async def _trajectory(model, reward_fn):
    response = await model.openai_client().chat.completions.create(
        model=model.get_inference_name(), messages=MESSAGES, max_tokens=8, logprobs=True)
    choice = response.choices[0]
    return art.Trajectory(messages_and_choices=[*MESSAGES, choice], reward=reward_fn(choice.message.content))


def test_tokenizer_round_trips_any_text_and_keeps_reserved_tokens_whole():
    tok = build_tokenizer()
    text = "héllo\n\tworld ✓ {}"
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    top = tok.vocab_size - 1  # ART's sentinel comes from the top of the vocabulary
    assert tok.encode(tok.decode(top), add_special_tokens=False) == [top]


async def test_chat_completion_returns_sampled_token_ids_with_logprobs(registered):
    _, model = registered
    response = await model.openai_client().chat.completions.create(
        model=model.get_inference_name(), messages=MESSAGES, max_tokens=5, logprobs=True, n=3)
    assert len(response.choices) == 3
    for choice in response.choices:
        entries = choice.logprobs.content
        assert 1 <= len(entries) <= 5
        assert all(e.token.startswith("token_id:") and e.logprob <= 0 for e in entries)
        assert choice.finish_reason in {"stop", "length"}


async def test_endpoint_refuses_requests_without_the_key(registered):
    _, model = registered
    async with httpx.AsyncClient() as client:
        body = {"model": model.get_inference_name(), "messages": MESSAGES}
        no_key = await client.post(f"{model.inference_base_url}/chat/completions", json=body)
        wrong = await client.post(f"{model.inference_base_url}/chat/completions", json=body,
                                  headers={"Authorization": "Bearer nope"})
    assert no_key.status_code == 401 and wrong.status_code == 401


async def test_train_advances_the_step_and_writes_a_peft_checkpoint(registered, tmp_path):
    backend, model = registered
    assert await model.get_step() == 0
    groups = await art.gather_trajectory_groups(
        [art.TrajectoryGroup(_trajectory(model, lambda text: sum(map(ord, text)) % 7) for _ in range(6))],
        pbar_desc=None)
    result = await backend.train(model, groups, learning_rate=1e-2)
    assert result.step == 1 and await model.get_step() == 1
    assert result.metrics["train/num_gradient_steps"] >= 1
    assert 0.9 < result.metrics["train/probs_corr"] <= 1.0  # served logprobs match the trained policy's
    checkpoint = tmp_path / "p" / "models" / "m" / "checkpoints" / "0001"
    assert (checkpoint / "adapter_model.safetensors").exists() and (checkpoint / "adapter_config.json").exists()
    assert model.get_inference_name() == "m@1"


async def test_train_with_no_signal_still_advances_the_step(registered):
    backend, model = registered
    result = await backend.train(model, [], learning_rate=1e-2)
    assert result.step == 1
    assert result.metrics["train/num_gradient_steps"] == 0


async def test_unsupported_train_keyword_is_refused(registered):
    backend, model = registered
    with pytest.raises(NotImplementedError, match="kl_penalty_coef"):
        await backend.train(model, [], learning_rate=1e-2, kl_penalty_coef=0.5)


async def test_grpo_raises_the_reward_of_rewarded_tokens(registered):
    """Reward replies by their share of 'a': a few steps must raise it clearly. (The first token's probability of
    'a' is no measure: the policy may as well learn to place its 'a's later in the reply.)"""
    backend, model = registered

    def reward(text: str) -> float:
        return text.count("a") / max(len(text), 1)

    means = []
    for _ in range(12):  # requests one at a time: the sampler's random draws do not depend on batching
        groups = [art.TrajectoryGroup([await _trajectory(model, reward) for _ in range(8)]) for _ in range(4)]
        means.append(sum(t.reward for g in groups for t in g.trajectories) / 32)
        await backend.train(model, groups, learning_rate=1e-2)
    assert max(means[6:]) > 2 * means[0] and max(means[6:]) > means[0] + 0.02, means  # without learning: ~flat


async def test_a_new_backend_resumes_from_the_newest_checkpoint(tiny_model, tmp_path):
    settings = CPUBackendSettings(lora=LoraSettings(target_modules=LORA_TARGETS))
    first = CPUBackend(path=str(tmp_path), settings=settings)
    model = art.TrainableModel(name="m", project="p", base_model=tiny_model, base_path=str(tmp_path))
    await model.register(first)
    groups = await art.gather_trajectory_groups(
        [art.TrajectoryGroup(_trajectory(model, lambda t: len(t) % 2) for _ in range(6))], pbar_desc=None)
    await first.train(model, groups, learning_rate=5e-2)
    trained = {k: v.clone() for k, v in first.policy(model).model.state_dict().items() if "lora" in k}
    await first.close()
    second = CPUBackend(path=str(tmp_path), settings=settings)
    again = art.TrainableModel(name="m", project="p", base_model=tiny_model, base_path=str(tmp_path))
    await again.register(second)
    reloaded = {k: v for k, v in second.policy(again).model.state_dict().items() if "lora" in k}
    assert await again.get_step() == 1
    assert all((trained[k] == reloaded[k]).all() for k in trained)
    await second.close()


def test_training_logprobs_match_a_full_forward_at_the_positions_the_loss_weighs(tiny_model):
    """The chunked, checkpointed output head gives the same logprobs (and gradients) as full logits would."""
    import torch

    from backends.policy import LoraPolicy

    policy = LoraPolicy(tiny_model, LoraSettings(target_modules=LORA_TARGETS))
    tokens = torch.randint(0, 200, (2, 1200))
    attention = torch.ones_like(tokens, dtype=torch.bool)
    assistant = torch.zeros_like(tokens, dtype=torch.bool)
    assistant[:, 300:900] = True  # more than one chunk of positions
    ours = policy._token_logprobs(tokens, attention, assistant)
    ours.sum().backward()
    grad_ours = [p.grad.clone() for p in policy.model.parameters() if p.requires_grad]
    policy.model.zero_grad()
    logits = policy.model(input_ids=tokens, attention_mask=attention.long()).logits.float()
    full = torch.log_softmax(logits[:, :-1], -1).gather(-1, tokens[:, 1:, None]).squeeze(-1)
    weighed = assistant[:, 1:]
    assert torch.allclose(ours[:, :-1][weighed], full[weighed], atol=1e-5)
    assert bool((ours[:, :-1][~weighed] == 0).all())
    (full * weighed).sum().backward()
    for ours_grad, p in zip(grad_ours, [p for p in policy.model.parameters() if p.requires_grad], strict=True):
        assert torch.allclose(ours_grad, p.grad, atol=1e-4)
