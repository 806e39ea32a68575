"""The R2E REPL env: bundled samples through the real test service, the sandboxed REPL, the full agent loop."""

import asyncio
import json
import os
import shutil
from pathlib import Path

import psutil
import pytest

from agent.budget import trim_messages
from envs.r2e.cache import SAMPLES, read_index, sample_rows
from envs.r2e.client import TestServiceClient, changed_files, tar_b64
from envs.r2e.data import validate_rows
from envs.r2e.repl import Repl
from envs.r2e.reward import binary_test_reward, parse_pytest_output, partial_test_reward
from envs.r2e.rollout import rollout as r2e_rollout
from envs.r2e.scenarios import scenarios_from_rows
from envs.r2e.wire import TestRequest
from rollouts.context import RolloutSettings
from rollouts.gather import GatherLimits, gather_step
from rollouts.scenario import DatasetError
from sandbox.run import SandboxLimits
from tests.r2e_rollouts import fix_reply, r2e_context

ROWS = {r.repo_name: r for r in sample_rows()}


@pytest.fixture(scope="module")
def cache(r2e_cache) -> Path:  # tests/conftest.py's, under this module's shorter name
    return r2e_cache


@pytest.fixture(scope="module")
def service(r2e_service):
    return r2e_service


def run_tests_with(service, row, files_dir: Path) -> str:
    paths = [str(p.relative_to(files_dir)) for p in files_dir.rglob("*") if p.is_file()]

    async def go():
        client = TestServiceClient([service.url], service.token)
        try:
            return await client.test(TestRequest(docker_image=row.docker_image, instance_id=row.instance_id,
                                                 files_tar_b64=tar_b64(files_dir, paths), timeout=120))
        finally:
            await client.aclose()

    return asyncio.run(go()).test_output


@pytest.mark.parametrize("name", sorted(ROWS))
def test_sample_unchanged_fixed_and_half_fixed(service, cache, name, tmp_path):
    row = ROWS[name]
    (tmp_path / "untouched").mkdir()
    (tmp_path / "untouched" / "NOTES.txt").write_text("no source change")
    untouched = run_tests_with(service, row, tmp_path / "untouched")
    fixed = run_tests_with(service, row, SAMPLES / name / "fix")
    half = run_tests_with(service, row, SAMPLES / name / "half_fix")
    assert binary_test_reward(row.expected_output_json, untouched)[0] == 0.0
    assert binary_test_reward(row.expected_output_json, fixed)[0] == 1.0
    assert partial_test_reward(row.expected_output_json, fixed)[0] == 1.0
    share = partial_test_reward(row.expected_output_json, half)[0]
    assert 0.0 < share < 1.0 and binary_test_reward(row.expected_output_json, half)[0] == 0.0


def test_cache_index_describes_every_sample(cache):
    index = read_index(cache)
    assert set(index) == {r.instance_id for r in ROWS.values()}
    entry = index[ROWS["stats"].instance_id]
    assert entry["file_count"] >= 3 and entry["docker_image"].startswith("local/")
    assert (cache / entry["cache_path"]).is_dir()


@pytest.fixture
async def repl(tmp_path):
    os.environ["WANDB_API_KEY"] = "trainer-secret"
    workdir = tmp_path / "work"
    shutil.copytree(SAMPLES / "stats" / "repo", workdir)
    session = Repl(workdir, SandboxLimits(memory_mb=512, wall_s=1e9, cpu_s=600, max_processes=32), 3.0)
    await session.start()
    yield session
    await session.close()
    os.environ.pop("WANDB_API_KEY", None)


async def test_repl_state_persists_across_cells(repl):
    await repl.run_cell("x = 41")
    result = await repl.run_cell("x += 1\nprint(x)")
    assert result.stdout.strip() == "42" and result.locals == {"x": "42"}


async def test_repl_timeout_restarts_and_goes_on(repl):
    result = await repl.run_cell("while True:\n    pass")
    assert result.timed_out and result.restarted and "restarted" in result.error
    assert (await repl.run_cell("print('alive')")).stdout.strip() == "alive"


async def test_repl_fork_bomb_is_contained(repl):
    before = len(psutil.pids())
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    result = await repl.run_cell(bomb)
    assert result.timed_out
    assert len(psutil.pids()) < before + 10
    assert (await repl.run_cell("print('alive')")).stdout.strip() == "alive"


async def test_repl_memory_hog_is_contained(repl):
    result = await repl.run_cell("blob = bytearray(3_000_000_000)")
    assert result.error and "MemoryError" in result.error
    assert (await repl.run_cell("print('alive')")).stdout.strip() == "alive"


async def test_repl_cannot_write_outside_its_work_dir(repl, tmp_path):
    target = Path(__file__).resolve().parent / "should_not_exist.txt"
    result = await repl.run_cell(f"open({str(target)!r}, 'w').write('x')")
    assert result.error and not target.exists()
    assert "wrote" in (await repl.run_cell("print(write_file('notes.txt', 'ok'))")).stdout
    assert (repl.workdir / "notes.txt").read_text() == "ok"


async def test_repl_does_not_see_the_trainers_secrets(repl):
    result = await repl.run_cell("import os\nprint(os.environ.get('WANDB_API_KEY'))\nprint(sorted(os.environ))")
    assert "trainer-secret" not in result.stdout and result.stdout.startswith("None")


async def _rollouts(cache, service, tmp_path, name: str, count: int, reply: str):
    scenario = scenarios_from_rows([ROWS[name]], cache, read_index(cache))[0]
    (tmp_path / "rollouts").mkdir()
    async with r2e_context(TestServiceClient([service.url], service.token), reply, tmp_path / "rollouts",
                           RolloutSettings(max_steps=3)) as ctx:
        return await gather_step([scenario], r2e_rollout, ctx, count, GatherLimits.create(count, 100), 0.0)


async def test_fake_model_replaying_a_fix_earns_reward_one(cache, service, tmp_path):
    groups = await _rollouts(cache, service, tmp_path, "stats", 2, fix_reply("stats"))
    trajectory = groups[0].trajectories[0]
    assert trajectory.reward == 1.0
    assert trajectory.metrics["finished"] == 1.0 and trajectory.metrics["changed_files"] == 1.0


async def test_no_change_scores_zero_without_a_test_call(cache, service, tmp_path):
    groups = await _rollouts(cache, service, tmp_path, "thermo", 2, "```repl\nprint(list_files())\nFINAL('x')\n```")
    trajectory = groups[0].trajectories[0]
    assert trajectory.reward == 0.0 and trajectory.metrics["changed_files"] == 0.0
    assert not any("tests (exit" in line for line in trajectory.logs)


async def test_ten_concurrent_rollouts_leave_no_process_or_dir_behind(cache, service, tmp_path):
    groups = await _rollouts(cache, service, tmp_path, "slugger", 10, fix_reply("slugger"))
    assert sum(len(g.trajectories) for g in groups) == 10
    assert all(t.reward == 1.0 for t in groups[0].trajectories)
    assert list((tmp_path / "rollouts").iterdir()) == []
    leftovers = [p for p in psutil.Process().children(recursive=True)
                 if "repl_server.py" in " ".join(p.cmdline())]
    assert leftovers == []


def test_rows_with_a_bad_field_are_rejected_naming_row_and_field():
    good = ROWS["stats"].model_dump()
    with pytest.raises(DatasetError, match=r"row 1: field 'commit_hash'"):
        validate_rows([good, {**good, "commit_hash": "xyz"}], "rows.jsonl")
    with pytest.raises(DatasetError, match=r"row 0: field 'expected_output_json'"):
        validate_rows([{**good, "expected_output_json": "{}"}], "rows.jsonl")
    missing = {k: v for k, v in good.items() if k != "problem_statement"}
    with pytest.raises(DatasetError, match=r"row 0: field 'problem_statement'"):
        validate_rows([missing], "rows.jsonl")
    assert validate_rows([{**good, "expected_output_json": json.dumps(good["expected_output_json"])}], "x")


def test_pytest_output_parsing_and_key_forms():
    output = ("tests/test_a.py::TestX::test_one PASSED\n"
              "PASSED tests/test_a.py::TestX::test_one\n"
              "FAILED tests/test_a.py::test_two - AssertionError: no\n"
              "ERROR tests/test_b.py::test_three\n")
    parsed = parse_pytest_output(output)
    assert parsed == {"tests/test_a.py::TestX::test_one": "PASSED", "tests/test_a.py::test_two": "FAILED",
                      "tests/test_b.py::test_three": "ERROR"}
    expected = {"TestX.test_one": "PASSED", "test_two": "PASSED", "tests/test_b.py::test_three": "ERROR"}
    share, breakdown = partial_test_reward(expected, output)
    assert share == pytest.approx(2 / 3) and breakdown["tests_not_found"] == 0


def test_changed_files_lists_only_what_differs(tmp_path):
    original, work = tmp_path / "a", tmp_path / "b"
    shutil.copytree(SAMPLES / "stats" / "repo", original, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(original, work)
    (work / "stats.py").write_text("changed")
    (work / "new_module.py").write_text("x = 1")
    (work / "__pycache__").mkdir(exist_ok=True)
    (work / "__pycache__" / "junk.pyc").write_bytes(b"0")
    assert changed_files(work, original) == ["new_module.py", "stats.py"]


def test_trimming_keeps_system_prompt_and_bug_report_and_says_so():
    messages = [{"role": "system", "content": "S" * 40}, {"role": "user", "content": "BUG" * 10}]
    for i in range(10):
        messages += [{"role": "assistant", "content": f"turn {i} " + "x" * 200},
                     {"role": "user", "content": f"obs {i} " + "y" * 200}]
    trimmed, dropped = trim_messages(messages, budget_tokens=300)
    assert trimmed[:2] == messages[:2] and dropped > 0
    assert "removed" in trimmed[2]["content"] and trimmed[-1] == messages[-1]
    assert trim_messages(messages[:4], budget_tokens=10_000) == (messages[:4], 0)


@pytest.mark.parametrize("name", sorted(ROWS))
def test_score_command_on_each_sample(cache, name, tmp_path):
    import subprocess
    import sys

    from services.process import ROOT

    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps(r.model_dump()) + "\n" for r in ROWS.values()))
    done = subprocess.run([sys.executable, "-m", "envs.r2e", "score", "--cache-dir", str(cache), "--dataset", str(rows),
                           "--instance-id", ROWS[name].instance_id, "--files", str(SAMPLES / name / "fix")],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout)
    assert out["reward"] == 1.0 and out["partial"] == 1.0 and set(out["tests"]) == set(ROWS[name].expected_output_json)
