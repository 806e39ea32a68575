"""The planner env: its reward, plan format, independence score, problems, the frozen executor's faults, the CPU
backend serving the base model (adapter off) under its own name, and two-step runs of train.py."""

from __future__ import annotations

import asyncio
import json
import subprocess
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from openai.types.chat.chat_completion import ChatCompletionMessage, Choice

from agent.executor import ExecutorError
from agent.openai_executor import OpenAIExecutor
from backends.openai_server import ServerThread
from envs.planner.options import PlannerOptions
from envs.planner.plan import PLANNER_SYSTEM_PROMPT, MalformedPlan, parse_plan
from envs.planner.problems import clean_answer, generate, load, rows_to_scenarios
from envs.planner.reward import (
    MALFORMED_REWARD,
    PlannerWeights,
    choose_embedder,
    independence,
    is_correct,
    planner_reward,
    tfidf_vectors,
)
from rollouts.context import RolloutSettings
from rollouts.scenario import DatasetError
from tests.fake_openai_server import completion_body, start_scripted_server
from tests.helpers import ROOT, history_steps, model_dir, read_state, run_train, subprocess_env, train_cmd

# ---- reward, plan format, independence ---------------------------------------------------------------------


def test_reward_is_the_weighted_sum_of_correct_thrift_and_independence():
    reward, parts = planner_reward(True, 50, 100, 0.5, PlannerWeights())
    assert reward == pytest.approx(1.0 + 0.2 * 0.5 + 0.3 * 0.5)
    assert parts == {"correct": 1.0, "token_thrift": 0.5, "independence": 0.5, "format_ok": 1.0}
    reward, parts = planner_reward(False, 300, 100, 0.9, PlannerWeights(2.0, 1.0, 0.0))
    assert reward == 0.0 and parts["token_thrift"] == 0.0  # over budget: the term is 0, never negative
    assert planner_reward(True, 0, 100, 0.0, PlannerWeights(1.0, 0.2, 0.3))[0] == pytest.approx(1.2)


def test_plans_parse_and_malformed_ones_name_their_reason():
    plan = parse_plan('Sure!\n```json\n{"subproblems": ["a b", " c "], "combine": "add"}\n```', 6)
    assert plan.subproblems == ("a b", "c") and plan.combine == "add" and not plan.atomic
    assert parse_plan('{"atomic": true}', 6).atomic
    for text, reason in (("no json here", "not_json"), ("{'single': quotes}", "not_json"),
                         ('{"subproblems": []}', "no_subproblems"), ('{"subproblems": ["x", 3]}', "bad_subproblem"),
                         ('{"subproblems": ["1", "2", "3"]}', "too_many_subproblems"),
                         ('{"subproblems": ["x"], "combine": 5}', "bad_combine"), ("[1, 2]", "not_json")):
        with pytest.raises(MalformedPlan) as caught:
            parse_plan(text, 2)
        assert caught.value.reason == reason, text


def test_independence_is_mean_pairwise_cosine_distance():
    vectors = {"x": [1.0, 0.0], "y": [0.0, 1.0], "z": [1.0, 1.0]}

    def embed(texts):
        return np.array([vectors[t] for t in texts])

    assert independence(["x", "y"], embed) == pytest.approx(1.0)
    assert independence(["x", "x"], embed) == pytest.approx(0.0)
    assert independence(["x", "x", "y"], embed) == pytest.approx(2 / 3)
    assert independence(["x", "z"], embed) == pytest.approx(1 - 1 / np.sqrt(2))
    assert independence(["x"], embed) == 0.0 and independence([], embed) == 0.0  # one subproblem: defined as 0


def test_tfidf_independence_ranks_different_questions_above_rewordings():
    same = ["How many apples are in 3 boxes of 12 apples?", "How many apples are in 3 boxes of 12 apples?"]
    apart = ["How many apples are in 3 boxes of 12 apples?", "What does a 40 mile trip at 20 mph take in hours?"]
    near = ["How many apples are in 3 boxes of 12 apples?", "How many apples are in 5 boxes of 12 apples?"]
    assert independence(same, tfidf_vectors) == pytest.approx(0.0, abs=1e-9)
    assert independence(near, tfidf_vectors) < 0.3 < 0.7 < independence(apart, tfidf_vectors) <= 1.0
    notices: list[str] = []
    assert choose_embedder(None, notices.append) is tfidf_vectors and len(notices) == 1 and "TF-IDF" in notices[0]


def test_answers_compare_by_their_last_number():
    assert is_correct("so the total is 1,200 dollars\n#### 1,200", "1200")
    assert is_correct("#### -3.0", "-3") and not is_correct("#### 12", "13") and not is_correct("no idea", "1")


# ---- problems ----------------------------------------------------------------------------------------------


def test_generated_problems_are_seeded_and_held_out_problems_differ():
    first, again = generate(40, 3), generate(40, 3)
    assert [(s.prompt, s.data) for s in first] == [(s.prompt, s.data) for s in again]
    assert [s.prompt for s in generate(10, 3)] == [s.prompt for s in first[:10]]  # a larger count keeps a prefix
    assert not {s.prompt for s in generate(40, 3, "val")} & {s.prompt for s in first}
    assert all(int(s.data["answer"]) >= 0 and s.data["answer"].isdigit() for s in first)
    assert len({s.prompt.split()[1] for s in first}) > 1  # several templates and names


def test_held_out_problems_are_a_third_as_many_and_never_repeat_a_train_problem():
    from envs.planner.problems import held_out

    train, val = load(None, 64, 0), load(None, 64, 0, "val")  # the defaults: --num-problems 64, --seed 0
    assert len(train) == 64 and len(val) == 21 and not {s.prompt for s in train} & {s.prompt for s in val}
    assert [len(load(None, n, 0, "val")) for n in (200, 8, 2)] == [66, 2, 1]
    assert [s.id for s in held_out(2, 0, generate(1, 0, "val"))] == ["gen-val-0-1", "gen-val-0-2"]  # a repeat skipped


def test_a_generated_shopping_problem_has_its_exact_answer():
    for s in generate(60, 0):
        if "packs of" in s.prompt:
            numbers = [int(w.strip("$.,")) for w in s.prompt.split() if w.strip("$.,").isdigit()]
            packs, per_pack, price, bag = numbers
            assert int(s.data["answer"]) == packs * per_pack * price + bag
            return
    pytest.fail("no shopping problem in 60")


def test_demonstrations_are_valid_plans_that_state_their_numbers(tmp_path):
    from envs.planner.problems import write_demos
    from trainer.sft_stage import load_sft_conversations

    out = tmp_path / "demos.jsonl"
    demos = write_demos(out, 30, 1)
    assert load_sft_conversations([str(out)]) and len(demos) == 30
    for demo, scenario in zip(demos, generate(30, 1), strict=True):
        system, user, reply = demo["messages"]
        assert system["content"] == PLANNER_SYSTEM_PROMPT and user["content"] == scenario.prompt
        plan = parse_plan(reply["content"], PlannerOptions().max_subproblems)
        numbers = {w.strip("$.,?") for w in scenario.prompt.split()}
        assert plan.subproblems and all(any(n in numbers for n in q.replace("$", "").split()) for q in plan.subproblems)
    two_part = [d for d in demos if len(json.loads(d["messages"][2]["content"])["subproblems"]) == 2]
    assert two_part  # some templates split in two


def test_dataset_rows_are_checked_and_gsm8k_answers_cleaned(tmp_path):
    rows = [{"question": "q1", "answer": "3 + 4 = 7\n#### 1,007"}, {"question": "q2", "answer": 5}]
    assert [s.data["answer"] for s in rows_to_scenarios(rows, "f")] == ["1007", "5"]
    assert clean_answer("no number") is None
    for bad, field_name in (({"question": "", "answer": "1"}, "question"), ({"question": "q"}, "answer"),
                            ({"question": "q", "answer": "none"}, "answer")):
        with pytest.raises(DatasetError, match=f"row 2: field '{field_name}'"):
            rows_to_scenarios([rows[0], bad], "f")
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps({"question": f"q{i}", "answer": str(i)}) for i in range(16)))
    train, val = load(str(path), 0, 0), load(str(path), 0, 0, "val")
    assert len(train) == 14 and [s.prompt for s in val] == ["q14", "q15"]


def test_a_bad_dataset_row_stops_train_py_with_one_line_and_exit_2(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "q", "answer": "4"}\n{"question": "q2"}\n')
    done = subprocess.run(train_cmd(tmp_path / "art", "bad", "--env", "planner", "--dataset", str(path)), cwd=ROOT,
                          env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "row 2: field 'answer'" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not model_dir(tmp_path / "art", "bad").exists()


def test_executor_flags_are_checked():
    from envs.options import EnvFlagError, resolve_env_options

    for given, message in (({"executor_url": "http://h/v1"}, "--executor-model"),
                           ({"executor_url": "ftp://h", "executor_model": "m"}, "--executor-url"),
                           ({"executor_model": "m"}, "--executor-url"), ({"token_weight": -1.0}, "--token-weight"),
                           ({"token_budget": 0}, "--token-budget")):
        with pytest.raises(EnvFlagError, match=message):
            resolve_env_options("planner", given, set(given))
    _, options = resolve_env_options("planner", {"executor_url": "http://h/v1", "executor_model": "m"},
                                     {"executor_url", "executor_model"})
    assert isinstance(options, PlannerOptions) and options.executor_url == "http://h/v1"


# ---- the frozen executor -----------------------------------------------------------------------------------


def faulty_app() -> FastAPI:
    """The executor's reply depends on the model name asked for: a fault to inject, or a plain answer."""
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        body = await request.json()
        model, text = body["model"], body["messages"][-1]["content"]
        if model == "slow" or "SLOW" in text:
            await asyncio.sleep(5)
        if model == "error" or "FAIL" in text:
            return JSONResponse({"error": {"message": "boom"}}, status_code=500)
        if model == "garbage":
            return PlainTextResponse("<html>not json</html>")
        if model == "odd":
            return JSONResponse({"hello": "world"})
        return completion_body(model, "so #### 7")

    return app


@pytest.fixture(scope="module")
def executor_server():
    server = ServerThread(faulty_app())
    server.start()
    yield server
    server.stop()


async def test_executor_faults_become_one_line_executor_errors(executor_server):
    for model, words in (("slow", "timed out"), ("error", "HTTP 500"), ("garbage", "executor"), ("odd", "usage")):
        timeout = 0.5 if model == "slow" else 60.0  # the server sleeps 5 s for "slow"; the rest answer at once
        executor = OpenAIExecutor(executor_server.base_url, model, timeout_s=timeout, max_retries=0)
        try:
            with pytest.raises(ExecutorError, match=words) as caught:
                await executor.complete([{"role": "user", "content": "hi"}], max_tokens=8)
            assert "\n" not in str(caught.value)
        finally:
            await executor.aclose()
    executor = OpenAIExecutor(executor_server.base_url, "fine", timeout_s=60)
    reply = await executor.complete([{"role": "user", "content": "hi"}], max_tokens=8)
    await executor.aclose()
    assert reply.text == "so #### 7" and reply.completion_tokens == len("so #### 7") and reply.prompt_tokens == 1


def _choice(text: str) -> Choice:
    return Choice(index=0, finish_reason="stop", message=ChatCompletionMessage(role="assistant", content=text))


@dataclass
class ScriptedContext:
    """A rollout context whose policy replies `plan`; the default executor is `base_url` asked for 'fine'."""

    plan: str
    base_url: str
    settings: RolloutSettings = field(default_factory=lambda: RolloutSettings(max_tokens_per_turn=256))
    services: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from envs.planner.rollout import PlannerRuntime

        self.model = SimpleNamespace(inference_base_url=self.base_url, inference_api_key="k", base_model="fine")
        self.services = {"planner": PlannerRuntime(PlannerOptions(), tfidf_vectors)}

    async def complete(self, messages: list[dict[str, Any]], max_tokens: int) -> Choice:
        return _choice(self.plan)


async def test_a_plan_is_solved_by_the_executor_and_scored(executor_server):
    from envs.planner.rollout import rollout
    from rollouts.logs import rlm_lines, validate_file

    scenario = rows_to_scenarios([{"question": "q", "answer": "7"}], "t")[0]
    plan = '{"subproblems": ["apples in 3 boxes of 12", "miles driven at 40 mph for 2 hours"], "combine": "add"}'
    ctx = ScriptedContext(plan, executor_server.base_url)
    ctx.services["planner"].options = PlannerOptions(token_budget=64)  # the token term's budget, not --max-tokens
    trajectory = await rollout(ctx, scenario)
    await ctx.services["planner"].aclose()
    m = trajectory.metrics
    assert m["correct"] == 1.0 and m["executor_calls"] == 3 and m["subproblems"] == 2 and m["format_ok"] == 1.0
    spent = len(plan) // 4 + 3 * len("so #### 7")  # a reply without logprobs counts ~4 characters a token
    assert m["executor_completion_tokens"] == 3 * len("so #### 7")
    assert m["token_thrift"] == pytest.approx(1 - spent / 64, abs=0.02) and 0.1 < m["token_thrift"] < 0.9
    assert trajectory.reward == pytest.approx(1.0 + 0.2 * (1 - spent / 64) + 0.3 * m["independence"], abs=0.01)
    assert m["independence"] > 0.5
    lines = rlm_lines(trajectory, {"scenario_id": scenario.id})
    assert len(lines) == 2 and len(lines[1]["code_blocks"]) == 3
    assert validate_file_lines(lines, validate_file) is None


def validate_file_lines(lines: list[dict[str, Any]], validate_file: Any) -> str | None:
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "one.jsonl"
        path.write_text("".join(json.dumps(line) + "\n" for line in lines))
        return validate_file(path)


async def test_a_malformed_plan_is_a_penalty_with_its_reason_not_a_crash(executor_server):
    from envs.planner.rollout import rollout

    scenario = rows_to_scenarios([{"question": "q", "answer": "7"}], "t")[0]
    trajectory = await rollout(ScriptedContext("I think we should add them", executor_server.base_url), scenario)
    assert trajectory.reward == MALFORMED_REWARD and trajectory.metrics["malformed_not_json"] == 1.0
    assert trajectory.metrics["executor_calls"] == 0 and "no JSON object" in trajectory.metadata["malformed"]


async def test_an_executor_fault_fails_its_rollout_and_the_step_goes_on(executor_server):
    from envs.planner.rollout import rollout
    from rollouts.gather import GatherLimits, gather_step

    good = '{"subproblems": ["one thing", "another"]}'
    bad = '{"subproblems": ["one thing", "FAIL this"]}'
    plans = iter([good, bad, good, good])

    class Alternating(ScriptedContext):
        async def complete(self, messages: list[dict[str, Any]], max_tokens: int) -> Choice:
            return _choice(next(plans))

    scenario = rows_to_scenarios([{"question": "q", "answer": "7"}], "t")[0]
    ctx = Alternating("", executor_server.base_url)
    ctx.services["planner"].executor = OpenAIExecutor(executor_server.base_url, "fine", max_retries=0)
    groups = await gather_step([scenario], rollout, ctx, 4, GatherLimits.create(4, 100.0), 0.5)
    await ctx.services["planner"].executor.aclose()
    assert len(groups[0].trajectories) == 3 and len(groups[0].exceptions) == 1
    assert "HTTP 500" in str(groups[0].exceptions[0].message)


# ---- the base model, adapter off, under its own name -------------------------------------------------------


async def test_the_cpu_backend_serves_the_base_model_with_the_adapter_off(tmp_path):
    import art
    import torch

    from backends.cpu import CPUBackend, CPUBackendSettings
    from backends.policy import LoraSettings
    from backends.tiny_random_model import LORA_TARGETS, ensure_tiny_model

    tiny = ensure_tiny_model(tmp_path / "base")
    settings = CPUBackendSettings(lora=LoraSettings(target_modules=LORA_TARGETS))
    backend = CPUBackend(path=str(tmp_path), settings=settings)
    model = art.TrainableModel(name="m", project="p", base_model=tiny, base_path=str(tmp_path))
    await model.register(backend)
    messages = [{"role": "user", "content": "Say a."}]
    try:
        client = model.openai_client()

        async def greedy(name: str) -> list[float]:
            response = await client.chat.completions.create(model=name, messages=messages, max_tokens=6,
                                                            temperature=0.0, logprobs=True)
            return [e.logprob for e in response.choices[0].logprobs.content]

        before = await greedy(model.get_inference_name())  # a fresh adapter (B = 0) is the base model
        with torch.no_grad():
            for name, param in backend.policy(model).model.named_parameters():
                if "lora_B" in name:
                    param.add_(torch.randn_like(param) * 2.0)
        assert await greedy(model.get_inference_name()) != pytest.approx(before, abs=1e-4)
        assert await greedy(tiny) == pytest.approx(before, abs=1e-4)
        executor = OpenAIExecutor(model.inference_base_url, tiny, api_key=model.inference_api_key)
        reply = await executor.complete(messages, max_tokens=4)
        await executor.aclose()
        assert reply.prompt_tokens > 0 and 1 <= reply.completion_tokens <= 4
    finally:
        await backend.close()


# ---- train.py ----------------------------------------------------------------------------------------------


def scripted_policy_and_executor(messages: list[dict[str, Any]]) -> str:
    """Planner turns alternate a two-part plan, an atomic answer and malformed text; the executor answers 7."""
    if messages[0]["content"] != PLANNER_SYSTEM_PROMPT:
        return "#### 7"
    scripted_policy_and_executor.calls += 1  # type: ignore[attr-defined]
    return ['{"subproblems": ["apples in 3 boxes of 12", "miles at 40 mph for 2 hours"], "combine": "add"}',
            '{"atomic": true}', "no plan"][scripted_policy_and_executor.calls % 3]  # type: ignore[attr-defined]


@pytest.mark.slow
def test_two_step_cpu_run_with_an_executor_server_writes_state_logs_and_report(tmp_path, tiny_flags):
    from tests.test_train_e2e import validate_logs

    scripted_policy_and_executor.calls = 0  # type: ignore[attr-defined]
    server = start_scripted_server(scripted_policy_and_executor)
    try:
        result = run_train(tmp_path, "plan", "--env", "planner", "--vllm-url", server.base_url, "--executor-url",
                           server.base_url, "--executor-model", "exec", *tiny_flags)
    finally:
        server.stop()
    assert result.returncode == 0, result.stderr[-3000:]
    assert "independence from TF-IDF" in result.stdout
    _check_run(tmp_path, "plan", validate_logs)
    rows = [json.loads(p.read_text().splitlines()[0])["environment_kwargs"]
            for p in (tmp_path / "logs" / "plan").glob("step_*/*.jsonl")]
    assert any(r["reward_breakdown"].get("malformed_not_json") == 1.0 and r["reward"] == MALFORMED_REWARD
               for r in rows)
    scored = [r["reward_breakdown"] for r in rows if r["reward_breakdown"]["format_ok"] == 1.0]  # executor-answered
    assert scored and all(b["executor_calls"] in (1.0, 3.0) and b["executor_completion_tokens"] > 0 for b in scored)


@pytest.mark.slow
def test_two_step_cpu_run_with_the_default_executor_after_sft_on_demonstrations(tmp_path, tiny_flags):
    """Step 1 is SFT on the generator's plans, step 2 GRPO; the executor is the base model, adapter off."""
    from tests.test_train_e2e import assert_clean_exit, validate_logs

    result = run_train(tmp_path, "base", "--env", "planner", "--sft-demos", "on", "--sft-epochs", "1", *tiny_flags,
                       "--max-training-steps", "1")  # 1 SFT epoch (step 1), then 1 RL step (step 2)
    assert_clean_exit(result)
    assert "sft: 4 demonstration(s) of the planner train split" in result.stdout
    _check_run(tmp_path, "base", validate_logs, logged_steps=1)


@pytest.fixture
def tiny_flags() -> list[str]:
    return ["--max-training-steps", "2", "--groups-per-step", "2", "--rollouts-per-group", "2", "--num-problems",
            "4", "--max-tokens", "48", "--executor-max-tokens", "8", "--log-sample-rate", "1"]


def _check_run(art_path: Any, name: str, validate_logs: Any, logged_steps: int = 2) -> None:
    assert history_steps(art_path, name) == [1, 2] and read_state(art_path, name)["step"] == 2
    logged = sorted((art_path / "logs" / name).glob("step_*/planner_*.jsonl"))
    assert len(logged) == logged_steps * 2 * 2
    lines = [json.loads(line) for line in logged[0].read_text().splitlines()]
    assert [line["type"] for line in lines] == ["metadata", "iteration"]
    assert validate_logs(art_path / "logs" / name) == 0 and (art_path / "logs" / name / "report.html").exists()
