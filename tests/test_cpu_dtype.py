"""The CPU backend's float type (backends/cpu_dtype.py): chosen from the CPU's flags, bf16 for the frozen base only,
the adapter, its optimizer and every logprob in fp32, and bf16 outputs close to fp32's on the real model."""

import pytest
import torch

from backends.cpu_dtype import cpu_flags, cpu_has_bf16, resolve_cpu_dtype
from backends.policy import LoraPolicy, LoraSettings, SampleRequest, TrainSettings
from backends.tiny_random_model import LORA_TARGETS, ensure_tiny_model
from tests.helpers import run_train


@pytest.mark.parametrize(("flags", "expected"), [
    ({"avx512f", "avx512_bf16"}, "bf16"), ({"amx_bf16", "amx_tile"}, "bf16"), ({"avx512f", "avx2"}, "fp32"),
    (set(), "fp32")])
def test_auto_picks_bf16_only_where_the_cpu_has_it(flags, expected):
    assert resolve_cpu_dtype("auto", frozenset(flags)) == expected
    assert resolve_cpu_dtype("fp32", frozenset({"avx512_bf16"})) == "fp32"
    assert resolve_cpu_dtype("bf16", frozenset()) == "bf16"


def test_auto_keeps_test_sized_models_in_fp32():
    assert resolve_cpu_dtype("auto", frozenset({"avx512_bf16"}), hidden_size=64) == "fp32"
    assert resolve_cpu_dtype("auto", frozenset({"avx512_bf16"}), hidden_size=576) == "bf16"
    assert resolve_cpu_dtype("bf16", frozenset({"avx512_bf16"}), hidden_size=64) == "bf16"


def test_unknown_dtype_is_refused():
    with pytest.raises(ValueError, match="fp16"):
        resolve_cpu_dtype("fp16")


def test_cpu_flags_read_the_flags_line(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse avx512f avx512_bf16\n\n")
    assert cpu_flags(str(info)) == frozenset({"fpu", "sse", "avx512f", "avx512_bf16"})
    assert cpu_has_bf16(cpu_flags(str(info)))
    assert cpu_flags(str(tmp_path / "missing")) == frozenset()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    return ensure_tiny_model(tmp_path_factory.mktemp("dtype"))


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_only_the_frozen_base_takes_the_dtype(tiny, dtype):
    policy = LoraPolicy(tiny, LoraSettings(target_modules=LORA_TARGETS), dtype=dtype)
    base = policy.model.get_base_model()
    assert policy.dtype == dtype
    wanted = torch.bfloat16 if dtype == "bf16" else torch.float32
    assert base.model.layers[0].mlp.up_proj.base_layer.weight.dtype == wanted
    assert base.lm_head.base_layer.weight.dtype == torch.float32  # logprobs come out of an fp32 head
    trainable = [p for p in policy.model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    before = [p.detach().clone() for p in trainable]
    samples = policy.sample([SampleRequest([5, 17, 99, 3], 6, temperature=1.0, n=2)])[0]
    assert all(torch.isfinite(torch.tensor(s.logprobs)).all() for s in samples)
    import art
    from openai.types.chat.chat_completion import Choice

    def trajectory(sample, reward: float) -> art.Trajectory:
        content = [{"token": f"token_id:{t}", "logprob": lp, "bytes": None, "top_logprobs": []}
                   for t, lp in zip(sample.token_ids, sample.logprobs, strict=True)]
        choice = Choice(index=0, finish_reason="length", logprobs={"content": content},
                        message={"role": "assistant", "content": policy.tokenizer.decode(sample.token_ids)})
        return art.Trajectory(messages_and_choices=[{"role": "user", "content": "hi"}, choice], reward=reward)

    trajectories = [trajectory(samples[0], 1.0), trajectory(samples[1], 0.0)]
    metrics = policy.train_step([art.TrajectoryGroup(trajectories)], TrainSettings(learning_rate=1e-2))
    assert metrics["num_gradient_steps"] >= 1 and torch.isfinite(torch.tensor(metrics["loss"]))
    assert any(not torch.equal(a, b) for a, b in zip(before, trainable, strict=True))
    assert all(p.dtype == torch.float32 for p in trainable)
    states = [s for s in policy.optimizer.state.values() if "exp_avg" in s]
    assert states and all(s["exp_avg"].dtype == torch.float32 for s in states)


@pytest.mark.slow
def test_bf16_greedy_follows_fp32_on_the_real_model(tmp_path_factory):
    """Tolerance: along fp32's greedy completions of fixed prompts, the bf16 model's argmax agrees at >= 90% of the
    positions and its logprob of fp32's token differs by <= 0.05 on average (a different model by the rounding of
    its weights and activations, not a different policy)."""
    from backends.smollm2 import ensure_pretrained

    path = ensure_pretrained("smollm2-135m", tmp_path_factory.mktemp("art"))
    policies = {d: LoraPolicy(path, LoraSettings(target_modules="all-linear"), dtype=d) for d in ("fp32", "bf16")}
    tokenizer = policies["fp32"].tokenizer
    questions = ["Write a Python function that reverses a string.", "What is the capital of France?",
                 "Explain recursion in one sentence.", "List three prime numbers.", "What is 12 times 7?",
                 "Give a gmsh command that creates a point."]
    prompts = [list(tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                                  tokenize=True)["input_ids"]) for q in questions]
    greedy = policies["fp32"].sample([SampleRequest(p, 24, temperature=0.0) for p in prompts])
    agree, total, differences = 0, 0, []
    for prompt, (sample,) in zip(prompts, greedy, strict=True):
        ids = torch.tensor([prompt + sample.token_ids])
        with torch.no_grad():
            logits = policies["bf16"].model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()
        logprobs = torch.log_softmax(logits, -1)
        chosen = torch.tensor(sample.token_ids)
        agree += int((logprobs.argmax(-1) == chosen).sum())
        total += len(chosen)
        differences += (logprobs.gather(-1, chosen[:, None]).squeeze(-1) - torch.tensor(sample.logprobs)).abs().tolist()
    assert agree / total >= 0.9
    assert sum(differences) / len(differences) <= 0.05


def test_cpu_dtype_on_another_backend_is_one_line_exit_2(tmp_path):
    result = run_train(tmp_path, "dt", "--env", "toy", "--backend", "serverless", "--cpu-dtype", "bf16", timeout=180)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: --cpu-dtype applies to the CPU backend only, not "
                                                  "--backend serverless"]
