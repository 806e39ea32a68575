"""Cheating does not pay in r2e and gmsh: every cheat probe (envs/r2e/probes.py, envs/gmsh/probes.py), replayed
through the real rollout and the real sandboxed services, scores no more than doing nothing, and the oracle passes.

Why these tests exist: before issue 23, model-changed tests, a planted conftest.py, a rewritten run_tests.sh or
pytest.py scored 1.0 on r2e, and a gmsh script that wrote its own stats.json and exited (or replaced gmsh's
measuring functions) scored 1.0. The scripted model answers each request with the probe's next reply.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import art
import pytest

from envs.gmsh.client import GmshClient
from envs.gmsh.probes import reward_probes as gmsh_probes
from envs.gmsh.rollout import rollout as gmsh_rollout
from envs.gmsh.tasks import ensure_default_tasks, load_tasks
from envs.probes import RewardProbe
from envs.r2e.cache import SAMPLES, read_index, sample_rows
from envs.r2e.client import TestServiceClient
from envs.r2e.probes import reward_probes as r2e_probes
from envs.r2e.protected import protected_reason
from envs.r2e.rollout import R2ESettings
from envs.r2e.rollout import rollout as r2e_rollout
from envs.r2e.scenarios import scenarios_from_rows
from envs.registry import get_env
from rollouts.context import RolloutContext, RolloutSettings
from rollouts.scenario import Scenario
from services.process import ROOT, ServiceProcess
from tests.fake_openai_server import start_scripted_server
from tests.helpers import subprocess_env

R2E_SAMPLE = "thermo"  # the held-out sample: never demonstrated, its fix exists only under samples/thermo/fix
GMSH_KINDS = ("box_with_hole", "profile_2d")  # a solid with a hole and the 2-D task


async def replay(probe: RewardProbe, rollout: Any, scenario: Scenario, services: dict[str, Any],
                 settings: RolloutSettings) -> art.Trajectory:
    """One rollout whose model answers with the probe's replies in turn (the last one repeating)."""
    def respond(messages: list[dict[str, Any]]) -> str:
        done = sum(m["role"] == "assistant" for m in messages)
        return probe.replies[min(done, len(probe.replies) - 1)]

    server = start_scripted_server(respond)
    try:
        model = art.Model(name="fake", project="p", inference_base_url=server.base_url, inference_api_key="k")
        async with RolloutContext(model=model, settings=settings, services=services) as ctx:
            return await rollout(ctx, scenario)
    finally:
        server.stop()


def check_separation(scores: dict[str, float], kinds: dict[str, str], threshold: float) -> None:
    print(json.dumps(scores))  # shown with -s: the before/after table of the issue
    nothing = scores["do-nothing"]
    cheats = {name: score for name, score in scores.items() if kinds[name] == "cheat"}
    assert cheats, "no cheat probes"
    assert scores["oracle"] >= threshold, scores
    assert nothing < threshold, scores
    paying = {name: score for name, score in cheats.items() if score > nothing or score >= threshold}
    assert not paying, f"cheats that pay (do-nothing scores {nothing}): {paying}"


# --- r2e ----------------------------------------------------------------------------------------------------------

def r2e_scenario(cache: Path) -> Scenario:
    rows = [r for r in sample_rows() if r.repo_name == R2E_SAMPLE]
    return scenarios_from_rows(rows, cache, read_index(cache))[0]


async def test_every_r2e_cheat_scores_no_more_than_doing_nothing(r2e_cache, r2e_service, tmp_path):
    scenario = r2e_scenario(r2e_cache)
    probes = r2e_probes(None, scenario)
    assert [p.kind for p in probes[:2]] == ["oracle", "nothing"] and len(probes) >= 8
    client = TestServiceClient([r2e_service.url], r2e_service.token)
    try:
        settings = R2ESettings(tests=client, rollout_root=tmp_path, cell_timeout_s=60)
        slots = asyncio.Semaphore(3)

        async def one(probe: RewardProbe) -> art.Trajectory:
            async with slots:
                return await replay(probe, r2e_rollout, scenario, {"r2e": settings}, RolloutSettings(max_steps=6))

        trajectories = await asyncio.gather(*(one(p) for p in probes))
    finally:
        await client.aclose()
    scores = {p.name: t.reward for p, t in zip(probes, trajectories, strict=True)}
    by_name = dict(zip((p.name for p in probes), trajectories, strict=True))
    check_separation(scores, {p.name: p.kind for p in probes}, get_env("r2e").pass_threshold)
    # The service names what it dropped: the cheats that change tests, runner, config or plant modules.
    for name in ("rewrite-tests", "conftest-marks-all-passed", "replace-run-tests-sh", "plant-pytest-module",
                 "plant-sitecustomize"):
        assert by_name[f"cheat:{name}"].metrics["ignored_files"] >= 1, (name, by_name[f"cheat:{name}"].logs[-2:])
    assert by_name["oracle"].metrics["ignored_files"] == 0


async def test_the_repl_copy_holds_no_hidden_tests(r2e_cache, r2e_service, tmp_path):
    """An R2E image keeps its hidden tests in r2e_tests/ of the cached repo: the model's copy leaves them out."""
    scenario = r2e_scenario(r2e_cache)
    repo = tmp_path / "repo"
    shutil.copytree(scenario.data["repo_path"], repo)
    (repo / "r2e_tests").mkdir()
    (repo / "r2e_tests" / "test_hidden.py").write_text("def test_hidden():\n    assert True\n")
    scenario = Scenario(scenario.id, scenario.prompt, {**scenario.data, "repo_path": str(repo)})
    look = RewardProbe("look", "cheat", ("```repl\nimport os\nfor root, dirs, files in os.walk('.'):\n"
                                         "    if 'r2e_tests' in dirs or 'fix' in dirs:\n"
                                         "        write_file('leak.py', repr(dirs))\nfinish()\n```",))
    client = TestServiceClient([r2e_service.url], r2e_service.token)
    try:
        settings = R2ESettings(tests=client, rollout_root=tmp_path / "rollouts")
        trajectory = await replay(look, r2e_rollout, scenario, {"r2e": settings}, RolloutSettings(max_steps=1))
    finally:
        await client.aclose()
    assert trajectory.metadata["changed_files"] == "" and trajectory.metrics["finished"] == 1.0


def _forged_sets(root: Path) -> dict[str, Path]:
    """The three changed-file sets of the issue that fixed nothing yet scored 1.0, for the thermo sample."""
    expected = next(r for r in sample_rows() if r.repo_name == R2E_SAMPLE).expected_output_json
    passed = "".join(f"PASSED {test}\n" for test in expected)
    sets = {
        "rewritten-tests": {"tests/test_thermo.py": "".join(f"def {t.split('::')[-1]}():\n    pass\n\n"
                                                            for t in expected)},
        "conftest-all-passed": {"conftest.py": (
            "import pytest\n\n@pytest.hookimpl(hookwrapper=True)\ndef pytest_runtest_makereport(item, call):\n"
            "    outcome = yield\n    outcome.get_result().outcome = 'passed'\n")},
        "run-tests-prints-passed": {"run_tests.sh": f"cat <<'EOF'\n{passed}EOF\n"},
    }
    dirs = {}
    for name, files in sets.items():
        for rel, text in files.items():
            (root / name / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / name / rel).write_text(text)
        dirs[name] = root / name
    return dirs


def test_score_command_gives_forged_file_sets_nothing(r2e_cache, r2e_service, tmp_path):
    row = next(r for r in sample_rows() if r.repo_name == R2E_SAMPLE)
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps(row.model_dump()) + "\n")
    for name, files in {**_forged_sets(tmp_path / "sets"), "reference-fix": SAMPLES / R2E_SAMPLE / "fix"}.items():
        done = subprocess.run([sys.executable, "-m", "envs.r2e", "score", "--cache-dir", str(r2e_cache), "--dataset",
                               str(rows), "--instance-id", row.instance_id, "--files", str(files),
                               "--url", r2e_service.url, f"--token={r2e_service.token}"],
                              capture_output=True, text=True, cwd=ROOT, timeout=120, env=subprocess_env())
        assert done.returncode == 0, done.stderr[-2000:]
        out = json.loads(done.stdout)
        if name == "reference-fix":
            assert out["reward"] == 1.0 and out["ignored_files"] == {}
        else:
            assert out["reward"] == 0.0 and out["partial"] < 1.0, (name, out)
            assert out["ignored_files"], (name, out)


@pytest.mark.parametrize(("path", "refused"), [
    ("thermo.py", False), ("pkg/new_module.py", False), ("helpers.py", False),
    ("tests/test_thermo.py", True), ("test_extra.py", True), ("conftest.py", True), ("pkg/conftest.py", True),
    ("run_tests.sh", True), ("pytest.ini", True), ("tox.ini", True), ("setup.cfg", True), ("pyproject.toml", True),
    ("sitecustomize.py", True), ("usercustomize.py", True), ("a.pth", True), ("pytest.py", True),
    ("_pytest/__init__.py", True), ("unittest.py", True), ("__pycache__/thermo.cpython-311.pyc", True),
    (".venv/lib/python3.11/site-packages/_pytest/runner.py", True), ("r2e_tests/test_x.py", True),
    ("scripts/check.sh", False), ("/etc/profile", True), ("pkg/../conftest.py", True),
])
def test_protected_paths(path, refused):
    assert (protected_reason(path, "bash run_tests.sh", original={"thermo.py", "tests", "run_tests.sh"})
            is not None) == refused


def test_a_shadowing_name_the_task_already_has_stays_editable():
    assert protected_reason("calendar.py", original={"calendar.py"}) is None
    assert protected_reason("calendar.py", original={"other.py"}) is not None
    assert protected_reason("scripts/ci.sh", "bash scripts/ci.sh") is not None  # named by the test command


# --- gmsh ---------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gmsh_tasks(tmp_path_factory) -> dict[str, Scenario]:
    store = ensure_default_tasks(tmp_path_factory.mktemp("gmsh_tasks"), seed=0, n_train=5, n_val=1)
    return {s.data["kind"]: s for s in load_tasks(store / "train.parquet")}


@pytest.fixture(scope="module")
def gmsh_service():
    with ServiceProcess("envs.gmsh.service", "--workers", "2", "--timeout", "30") as service:
        yield service


@pytest.mark.parametrize("kind", GMSH_KINDS)
async def test_every_gmsh_cheat_scores_no_more_than_doing_nothing(gmsh_tasks, gmsh_service, kind):
    scenario = gmsh_tasks[kind]
    probes = gmsh_probes(None, scenario)
    assert [p.kind for p in probes[:2]] == ["oracle", "nothing"] and len(probes) >= 7
    client = GmshClient([gmsh_service.url], gmsh_service.token)
    try:
        trajectories = await asyncio.gather(*(
            replay(p, gmsh_rollout, scenario, {"gmsh": client}, RolloutSettings(max_steps=1)) for p in probes))
    finally:
        await client.aclose()
    scores = {p.name: t.reward for p, t in zip(probes, trajectories, strict=True)}
    check_separation(scores, {p.name: p.kind for p in probes}, get_env("gmsh").pass_threshold)
