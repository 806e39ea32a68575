"""The CPU backend behind ART's own Model API: serving with logprobs, auth, GRPO steps, checkpoints."""


import art
import httpx
import pytest

from backends.cpu import CPUBackend, CPUBackendSettings
from backends.policy import LoraSettings
from backends.tiny_random_model import LORA_TARGETS, build_tokenizer, ensure_tiny_model


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


async def test_a_step_with_nothing_to_train_renames_the_latest_checkpoint(registered, tmp_path):
    """As ART's LocalBackend (and its test_step_skipping): the step advances, the unchanged weights move along."""
    backend, model = registered
    checkpoints = tmp_path / "p" / "models" / "m" / "checkpoints"
    result = await backend.train(model, [], learning_rate=1e-2)
    assert result.step == 1 and await model.get_step() == 1
    assert result.metrics["train/num_gradient_steps"] == 0
    assert sorted(p.name for p in checkpoints.iterdir()) == ["0001"]


async def test_a_renamed_step_killed_before_its_commit_is_rolled_back_to_the_committed_checkpoint(registered, tmp_path):
    from trainer.resume import rollback_uncommitted

    backend, model = registered
    await backend.train(model, [], learning_rate=1e-2)  # renames 0000 -> 0001; the run dies before committing 1
    model_dir = tmp_path / "p" / "models" / "m"
    assert rollback_uncommitted(model_dir, committed_step=0)
    assert sorted(p.name for p in (model_dir / "checkpoints").iterdir()) == ["0000"]


async def test_train_options_that_cannot_change_learning_here_are_refused_with_the_reason(registered):
    backend, model = registered
    with pytest.raises(NotImplementedError, match="num_trajectories_learning_rate_multiplier_power.*one trajectory"):
        await backend.train(model, [], num_trajectories_learning_rate_multiplier_power=1.0)
    with pytest.raises(ValueError, match="clip_low_threshold must be between 0.0 and 1.0"):
        await backend.train(model, [], loss_fn_config={"clip_low_threshold": 1.5})
    with pytest.raises(ValueError, match="unknown key"):
        await backend.train(model, [], loss_fn_config={"beta": 0.1})
    with pytest.raises(TypeError, match="unexpected keyword"):
        await backend.train(model, [], kl_coef=0.1)
    assert await model.get_step() == 0  # refused before any work


async def test_grpo_raises_the_reward_of_rewarded_tokens(registered):
    """Reward replies by their share of 'a': a few steps must raise it clearly. (The first token's probability of
    'a' is no measure: the policy may as well learn to place its 'a's later in the reply.) The best step from the
    fourth on counts: at this step size the tiny random model sometimes collapses later onto one reply, with or
    without 'a's (measured: the share rose to 0.06-0.10 by step 5 in every run, then went to 1.0, stayed, or fell
    to 0)."""
    backend, model = registered

    def reward(text: str) -> float:
        return text.count("a") / max(len(text), 1)

    means = []
    for _ in range(12):  # requests one at a time: the sampler's random draws do not depend on batching
        groups = [art.TrajectoryGroup([await _trajectory(model, reward) for _ in range(8)]) for _ in range(4)]
        means.append(sum(t.reward for g in groups for t in g.trajectories) / 32)
        await backend.train(model, groups, learning_rate=1e-2)
    assert max(means[3:]) > 2 * means[0] and max(means[3:]) > means[0] + 0.02, means  # without learning: ~flat


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


def test_padding_is_cut_before_the_forward_and_changes_neither_loss_nor_gradient(tiny_model):
    """ART pads every packed row to the batch's longest; the trainer cuts each row after its last real token (the
    forward costs what the row holds, not the longest row), and the loss and its gradient stay what they were."""
    import torch

    from backends.policy import LoraPolicy, without_padding

    policy = LoraPolicy(tiny_model, LoraSettings(target_modules=LORA_TARGETS))
    config = {"epsilon": 0.2, "epsilon_high": 0.2}
    width, real = 96, 60
    tokens = torch.randint(0, 200, (1, width))
    group_ids = torch.full((1, width), -1)
    group_ids[:, :real] = 0
    assistant = torch.zeros((1, width), dtype=torch.bool)
    assistant[:, 20:real] = True
    batch = {"tokens": tokens, "group_ids": group_ids, "parent_ids": group_ids.clone(),
             "input_pos": torch.arange(width)[None], "assistant_mask": assistant,
             "logprobs": torch.where(assistant, -1.0, float("nan")), "advantages": assistant.float() * 0.5,
             "weights": assistant.float()}
    cut = without_padding(batch)
    assert cut["tokens"].shape == (1, real) and bool((cut["group_ids"] != -1).all())
    calls: list[int] = []
    forward = policy._token_logprobs
    policy._token_logprobs = lambda t, *rest: calls.append(t.shape[1]) or forward(t, *rest)
    results = []
    for rows in (batch, {k: v[:, :real] for k, v in batch.items()}):
        loss, _, _ = policy._accumulate_gradients(rows, config)
        results.append((loss, [p.grad.clone() for p in policy.model.parameters() if p.requires_grad]))
    assert calls == [real, real]  # the padded batch ran no wider than its real tokens
    assert results[0][0] == pytest.approx(results[1][0], abs=1e-6)
    for padded, unpadded in zip(results[0][1], results[1][1], strict=True):
        assert torch.allclose(padded, unpadded, atol=1e-6)


# ---- train() options that change learning -------------------------------------------------------------------------
# Offline groups (sampled once, then edited) so that runs with and without an option see the same data and start from
# the same weights; each test states what the option is for and checks the policy moved (or not) accordingly.


def _share_of_a(text: str) -> float:
    return text.count("a") / max(len(text), 1)


async def _fresh(tiny_model, path):
    backend = CPUBackend(path=str(path), settings=CPUBackendSettings(lora=LoraSettings(target_modules=LORA_TARGETS)))
    model = art.TrainableModel(name="m", project="p", base_model=tiny_model, base_path=str(path))
    await model.register(backend)
    return backend, model


def _completion_logprob(policy, trajectory) -> float:
    """The policy's log-probability of the trajectory's sampled completion after its prompt."""
    import torch

    text = policy.tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    prompt = policy.tokenizer.encode(text, add_special_tokens=False)
    completion = [int(e.token.removeprefix("token_id:")) for e in trajectory.messages_and_choices[-1].logprobs.content]
    tokens = torch.tensor([prompt + completion])
    with torch.no_grad():
        logprobs = torch.log_softmax(policy.model(input_ids=tokens).logits[0, :-1].float(), -1)
    return float(logprobs[len(prompt) - 1 :].gather(-1, tokens[0, len(prompt) :, None]).sum())


def _with_logprobs_shifted(trajectory, delta: float, reward: float):
    """A copy whose sampler logprobs are `delta` above the ones it was sampled with (a stale or mismatched sampler)."""
    copy = trajectory.model_copy(deep=True, update={"reward": reward})
    for entry in copy.messages_and_choices[-1].logprobs.content:
        entry.logprob += delta
    return copy


async def _two_completions(model):
    """Two different sampled completions of the same prompt."""
    first = await _trajectory(model, _share_of_a)
    for _ in range(20):
        second = await _trajectory(model, _share_of_a)
        if second.messages_and_choices[-1].message.content != first.messages_and_choices[-1].message.content:
            return first, second
    raise AssertionError("the sampler repeated one completion 20 times")


async def _one_step_change(tiny_model, tmp_path, name, groups_of, **options) -> tuple[float, float]:
    """Train one step on `groups_of(model)` from the fresh initial weights; the change in log-probability of the
    rewarded (first) and the unrewarded (second) completion of the first group."""
    backend, model = await _fresh(tiny_model, tmp_path / name)
    try:
        groups = await groups_of(model)
        good, bad = groups[0].trajectories
        policy = backend.policy(model)
        before = _completion_logprob(policy, good), _completion_logprob(policy, bad)
        await backend.train(model, groups, learning_rate=1e-2, **options)
        return _completion_logprob(policy, good) - before[0], _completion_logprob(policy, bad) - before[1]
    finally:
        await backend.close()


def _stale(delta_good: float, delta_bad: float):
    """A group of a rewarded and an unrewarded completion whose sampler logprobs are off by the given deltas."""
    async def groups_of(model):
        first, second = await _two_completions(model)
        return [art.TrajectoryGroup([_with_logprobs_shifted(first, delta_good, 1.0),
                                     _with_logprobs_shifted(second, delta_bad, 0.0)])]
    return groups_of


async def test_loss_fn_config_sets_the_clip_bounds_of_the_importance_ratio(tiny_model, tmp_path):
    """PPO clips the ratio to [0.8, 1.2] by default: with sampler logprobs off by a factor 2 either way (ratio 2 for
    the rewarded, 0.5 for the unrewarded completion) both sit outside and nothing is learned. Tinker's
    `loss_fn_config` bounds [0.4, 2.5] take both in, and the step raises one and lowers the other."""
    data = _stale(-0.7, +0.7)
    clipped = await _one_step_change(tiny_model, tmp_path, "default", data, loss_fn="ppo")
    widened = await _one_step_change(tiny_model, tmp_path, "wide", data, loss_fn="ppo",
                                     loss_fn_config={"clip_low_threshold": 0.4, "clip_high_threshold": 2.5})
    assert max(map(abs, clipped)) < 1e-4, clipped
    assert widened[0] > 0.05 and widened[1] < -0.05, widened


async def test_precalculated_logprobs_replace_stale_sampler_logprobs(tiny_model, tmp_path):
    """The same stale data: with `precalculate_logprobs` the ratio is taken against the trainer's own logprobs
    before the step (1, inside PPO's clip), so the step learns from data whose sampler logprobs were off."""
    data = _stale(-0.7, +0.7)
    fresh = await _one_step_change(tiny_model, tmp_path, "precalc", data, loss_fn="ppo", precalculate_logprobs=True)
    assert fresh[0] > 0.05 and fresh[1] < -0.05, fresh


async def test_truncated_importance_sampling_discounts_tokens_the_sampler_overrated(tiny_model, tmp_path):
    """TIS weighs each token by trainer/sampler probability (capped at the bound): a rewarded completion whose
    sampler logprobs were e^5 above the trainer's barely moves, while the unrewarded one is still pushed down."""
    data = _stale(+5.0, 0.0)
    plain = await _one_step_change(tiny_model, tmp_path, "plain", data, precalculate_logprobs=True)
    tis = await _one_step_change(tiny_model, tmp_path, "tis", data, precalculate_logprobs=True,
                                 truncated_importance_sampling=2.0)
    assert plain[0] > 1.0 and tis[0] < 0.25 * plain[0], (plain, tis)
    assert tis[1] < -1.0, tis


def _kl_to_reference(policy, groups, reference: str | None = None) -> float:
    """Mean KL(policy || reference) of the next-token distributions at the groups' completion tokens; the reference is
    the base model (adapter off) or an adapter folder."""
    import torch
    from art.preprocessing.tokenize import tokenize_trajectory_groups

    results = tokenize_trajectory_groups(policy.tokenizer, groups, allow_training_without_logprobs=True,
                                         scale_rewards=True)
    kls = []
    with torch.no_grad():
        for result in results:
            tokens = torch.tensor([result.token_ids])
            completion = torch.tensor(result.assistant_mask[1:], dtype=torch.bool)
            p = torch.log_softmax(policy.model(input_ids=tokens).logits[0, :-1].float(), -1)[completion]
            with policy._reference_weights(reference):
                q = torch.log_softmax(policy.model(input_ids=tokens).logits[0, :-1].float(), -1)[completion]
            kls.append((p.exp() * (p - q)).sum(-1).mean())
    return float(torch.stack(kls).mean())


async def _sampled_groups(model) -> list:
    return [art.TrajectoryGroup([await _trajectory(model, _share_of_a) for _ in range(8)]) for _ in range(4)]


async def _kl_after_training(tiny_model, path, groups, steps: int, reference: str | None = None,
                             **options) -> tuple[float, dict]:
    backend, model = await _fresh(tiny_model, path)
    try:
        for _ in range(steps):
            result = await backend.train(model, groups, learning_rate=3e-3, **options)
        return _kl_to_reference(backend.policy(model), groups, reference), result.metrics
    finally:
        await backend.close()


async def test_kl_penalty_keeps_the_policy_near_the_base_model(tiny_model, tmp_path):
    """Ten steps on the same groups: with `kl_penalty_coef` (ART's KL-penalised advantages, the base model with the
    adapter off as reference) the policy ends measurably closer to the base model than without."""
    backend, model = await _fresh(tiny_model, tmp_path / "sampler")
    groups = await _sampled_groups(model)
    await backend.close()
    free, _ = await _kl_after_training(tiny_model, tmp_path / "free", groups, 10)
    held, metrics = await _kl_after_training(tiny_model, tmp_path / "kl", groups, 10, kl_penalty_coef=10.0)
    assert free > 0.5 and held < 0.5 * free, (free, held)
    assert "train/kl_policy_ref" in metrics


async def test_kl_penalty_against_a_checkpoint_keeps_the_policy_near_that_checkpoint(tiny_model, tmp_path):
    """`kl_penalty_reference_step` (or `kl_ref_adapter_path`) makes an earlier checkpoint the reference instead."""
    import shutil

    backend, model = await _fresh(tiny_model, tmp_path / "first")
    groups = await _sampled_groups(model)
    await backend.train(model, groups, learning_rate=3e-2)  # checkpoint 1: the reference, away from the base
    await backend.close()
    for name in ("free", "kl"):  # both resume from checkpoint 1
        shutil.copytree(tmp_path / "first", tmp_path / name)
    anchor = lambda name: str(tmp_path / name / "p" / "models" / "m" / "checkpoints" / "0001")  # noqa: E731
    free, _ = await _kl_after_training(tiny_model, tmp_path / "free", groups, 10, anchor("free"))
    held, _ = await _kl_after_training(tiny_model, tmp_path / "kl", groups, 10, anchor("kl"),
                                       kl_penalty_coef=10.0, kl_penalty_reference_step=1)
    assert free > 0.2 and held < 0.5 * free, (free, held)


@pytest.mark.parametrize("option", [{"mask_prob_ratio": True}, {"kimi_k2_tau": 1.0},
                                    {"max_negative_advantage_importance_sampling_weight": 1.0}])
async def test_art_loss_options_reach_the_loss(tiny_model, tmp_path, option):
    """Options that only change ART's loss are handed to it: on data whose sampler logprobs are e^2 off (ratios
    7.4 and 0.14, so masking, the Kimi K2 term and the weight cap all bite), the step differs from the default's."""
    data = _stale(-2.0, +2.0)
    default = await _one_step_change(tiny_model, tmp_path, "default", data)
    changed = await _one_step_change(tiny_model, tmp_path, "option", data, **option)
    assert max(abs(a - b) for a, b in zip(default, changed, strict=True)) > 0.1, (default, changed)


def test_kl_penalty_coef_flag_is_validated_and_kept_out_of_the_hash_when_off():
    from trainer.checks import check_config
    from trainer.cli import config_from_args
    from trainer.config import ConfigError, ExperimentConfig

    with pytest.raises(ConfigError, match="--kl-penalty-coef"):
        check_config(ExperimentConfig(experiment_name="e", kl_penalty_coef=-0.1))
    off = config_from_args(["--experiment-name", "e"])
    on = config_from_args(["--experiment-name", "e", "--kl-penalty-coef", "0.1"])
    assert on.kl_penalty_coef == 0.1 and "kl_penalty_coef" not in off.hashed_fields()
    assert on.config_hash() != off.config_hash()


@pytest.mark.slow
def test_train_py_with_kl_penalty_coef_trains_with_the_kl_term(tmp_path):
    from tests.helpers import history_rows, run_train

    result = run_train(tmp_path, "kl", "--env", "toy", "--max-training-steps", "1", "--groups-per-step", "2",
                       "--rollouts-per-group", "8", "--dataset-size", "8", "--kl-penalty-coef", "0.5")
    assert result.returncode == 0, result.stderr[-2000:]
    trained = [row for row in history_rows(tmp_path, "kl") if row.get("train/num_gradient_steps")]
    assert trained and all("train/kl_policy_ref" in row for row in trained), trained
