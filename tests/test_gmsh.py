"""The gmsh env with real gmsh: task set, sandboxed service, reward spec, code extraction, rollouts, CLI."""

import asyncio
import base64
import json
import subprocess
import sys
import time
from pathlib import Path

import art
import httpx
import pytest

from agent.code import extract_code
from envs.gmsh.client import GmshClient
from envs.gmsh.reward import gmsh_reward
from envs.gmsh.rollout import rollout as gmsh_rollout
from envs.gmsh.rollout import validation_metrics
from envs.gmsh.tasks import KINDS, ensure_default_tasks, load_tasks
from envs.gmsh.wire import RunRequest
from rollouts.context import RolloutContext, RolloutSettings
from rollouts.gather import GatherLimits, gather_step
from rollouts.scenario import DatasetError
from services.process import ROOT, ServiceProcess
from tests.fake_openai_server import start_fake_server
from tests.gmsh_scripts import reference_script


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return ensure_default_tasks(tmp_path_factory.mktemp("gmsh_tasks"), seed=0, n_train=5, n_val=2)


@pytest.fixture(scope="module")
def tasks(store):
    return {s.data["kind"]: s for s in load_tasks(store / "train.parquet")}


@pytest.fixture(scope="module")
def service():
    with ServiceProcess("envs.gmsh.service", "--workers", "2", "--timeout", "20", "--memory-mb", "1024") as svc:
        yield svc


def run(service, scenario, script: str, timeout: float = 20.0) -> dict:
    geometry = Path(scenario.data["task_store"]) / scenario.data["geometry_file"]
    request = RunRequest(script=script, geometry_b64=base64.b64encode(geometry.read_bytes()).decode(),
                         geometry_name="geometry" + geometry.suffix, timeout=timeout)
    response = httpx.post(f"{service.url}/run", json=request.model_dump(), timeout=timeout + 30,
                          headers={"Authorization": f"Bearer {service.token}"})
    assert response.status_code == 200, response.text
    return response.json()


def score(scenario, result) -> tuple[float, dict]:
    return gmsh_reward(scenario.data["requirements"], scenario.data["bbox"], result)


def script_for(scenario, **kwargs) -> str:
    req = scenario.data["requirements"]
    suffix = Path(scenario.data["geometry_file"]).suffix
    return reference_script(scenario.data["kind"], req["characteristic_length"], req["dimension"], suffix=suffix,
                            **kwargs)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_correct_script_for_each_geometry_scores_high(service, tasks, kind):
    result = run(service, tasks[kind], script_for(tasks[kind]))
    reward, breakdown = score(tasks[kind], result)
    assert result["ok"], result["stderr"][-1000:]
    assert breakdown["groups_missing"] == 0 and breakdown["mesh_density"] == 1.0
    assert reward >= 0.6
    stats = result["stats"]
    assert stats["nodes"] > 0 and stats["quality"]["measure"] == "minSICN"
    assert stats["geometry"]["nodes_off_shape"] == 0 and stats["geometry"]["face_probes_wrong_side"] == 0


def test_script_without_physical_groups_scores_exactly_minus_one(service, tasks):
    result = run(service, tasks["box_with_hole"], script_for(tasks["box_with_hole"], groups="none"))
    reward, breakdown = score(tasks["box_with_hole"], result)
    assert result["ok"] and breakdown["elements"] > 0
    assert reward == -1.0


def test_missing_groups_get_partial_credit(service, tasks):
    cylinder = tasks["cylinder"]
    full, _ = score(cylinder, run(service, cylinder, script_for(cylinder)))
    partial, breakdown = score(cylinder, run(service, cylinder, script_for(cylinder, groups="first")))
    assert breakdown["physical_groups"] == pytest.approx(1 / 4)
    assert -1.0 < partial < full


def test_over_and_under_refined_meshes_lose_density_credit(service, tasks):
    box = tasks["box_with_hole"]
    _, fine = score(box, run(service, box, script_for(box, size_factor=0.25)))
    _, coarse = score(box, run(service, box, script_for(box, size_factor=6.0, uniform=True)))
    assert fine["density_ratio"] > 3 and fine["mesh_density"] < 1.0
    assert coarse["density_ratio"] < 1 / 3 and coarse["mesh_density"] < 1.0


@pytest.mark.parametrize(
    ("name", "script", "timeout"),
    [
        ("crash", "import gmsh\ngmsh.initialize()\nraise RuntimeError('boom')\n", 20),
        ("syntax error", "import gmsh\ndef broken(:\n", 20),
        ("infinite loop", "while True:\n    pass\n", 3),
        ("memory hog", "blocks = []\nwhile True:\n    blocks.append(bytearray(50_000_000))\n", 20),
    ],
)
def test_bad_scripts_come_back_in_time_with_the_low_end_and_the_service_keeps_serving(
        service, tasks, name, script, timeout):
    started = time.monotonic()
    result = run(service, tasks["cylinder"], script, timeout=timeout)
    assert time.monotonic() - started < timeout + 10
    assert not result["ok"] and result["error"]
    assert score(tasks["cylinder"], result)[0] == -1.0
    if name == "infinite loop":
        assert result["timed_out"]
    assert httpx.get(f"{service.url}/health").json()["status"] == "ok"
    after = run(service, tasks["cylinder"], script_for(tasks["cylinder"]))
    assert after["ok"]


def test_requests_without_the_token_get_401(service):
    body = {"script": "pass", "geometry_b64": "", "timeout": 5}
    assert httpx.post(f"{service.url}/run", json=body).status_code == 401
    assert httpx.post(f"{service.url}/run", json=body, headers={"Authorization": "Bearer nope"}).status_code == 401


def test_over_capacity_gets_503_with_retry_after(tasks):
    slow = "import time\ntime.sleep(3)\n"
    with ServiceProcess("envs.gmsh.service", "--workers", "1", "--queue", "0") as svc:
        cylinder = tasks["cylinder"]
        geometry = (Path(cylinder.data["task_store"]) / cylinder.data["geometry_file"]).read_bytes()
        body = RunRequest(script=slow, geometry_b64=base64.b64encode(geometry).decode(), timeout=10).model_dump()

        async def both():
            async with httpx.AsyncClient(headers={"Authorization": f"Bearer {svc.token}"}, timeout=30) as c:
                return await asyncio.gather(c.post(f"{svc.url}/run", json=body), c.post(f"{svc.url}/run", json=body))

        codes = sorted(r.status_code for r in asyncio.run(both()))
        busy = [r for r in asyncio.run(both()) if r.status_code == 503]
    assert codes == [200, 503]
    assert busy and busy[0].headers["retry-after"] == "1"


def test_task_parquet_round_trips_and_bad_rows_are_named(store, tmp_path):
    import pyarrow.parquet as pq

    table = pq.read_table(store / "train.parquet")
    scenarios = load_tasks(store / "train.parquet")
    assert [s.id for s in scenarios] == table.column("task_id").to_pylist()
    assert scenarios[0].data["requirements"] == json.loads(table.column("requirements")[0].as_py())
    assert {s.data["kind"] for s in scenarios} == set(KINDS)
    rows = table.to_pylist()
    rows[1]["requirements"] = "{not json"
    import pyarrow as pa

    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist(rows), bad)
    for geometry in store.glob("*.st*p"):
        (tmp_path / geometry.name).write_bytes(geometry.read_bytes())
    for geometry in store.glob("*.brep"):
        (tmp_path / geometry.name).write_bytes(geometry.read_bytes())
    with pytest.raises(DatasetError, match=r"row 1 .*field 'requirements'"):
        load_tasks(bad)


def test_generation_is_deterministic(store, tmp_path):
    again = ensure_default_tasks(tmp_path / "again", seed=0, n_train=5, n_val=2)
    import pyarrow.parquet as pq

    for split in ("train", "val"):
        rows = pq.read_table(again / f"{split}.parquet").to_pylist()
        assert rows == pq.read_table(store / f"{split}.parquet").to_pylist()


def test_a_default_run_trains_on_20_parts_and_evaluates_on_20_held_out_ones(tmp_path):
    from types import SimpleNamespace

    from envs.gmsh.spec import SPEC

    cfg = SimpleNamespace(dataset=None, dataset_size=None, cache_dir=str(tmp_path), art_path=None, seed=0)
    train, val = SPEC.load_scenarios(cfg), SPEC.load_val(cfg)
    assert len(train) == 20 and len(val) == 20 and not {s.id for s in train} & {s.id for s in val}
    assert {s.data["kind"] for s in val} == set(KINDS)


def test_held_out_parts_never_repeat_a_train_part(store):
    train, val = load_tasks(store / "train.parquet"), load_tasks(store / "val.parquet")
    assert len(val) == 2
    assert not {s.id for s in train} & {s.id for s in val}
    assert not {s.prompt for s in train} & {s.prompt for s in val}
    assert not {tuple(s.data["bbox"]) for s in train} & {tuple(s.data["bbox"]) for s in val}


def test_a_store_of_other_sizes_is_regenerated_with_the_same_train_parts(store, tmp_path):
    import shutil

    import pyarrow.parquet as pq

    old = shutil.copytree(store, tmp_path / "old")  # as an older default (fewer held-out parts) left it
    bigger = ensure_default_tasks(old, seed=0, n_train=5, n_val=4)
    assert pq.read_table(bigger / "train.parquet").to_pylist() == pq.read_table(store / "train.parquet").to_pylist()
    val = pq.read_table(bigger / "val.parquet").to_pylist()
    assert len(val) == 4 and val[:2] == pq.read_table(store / "val.parquet").to_pylist()
    assert {row["kind"] for row in val} <= set(KINDS)

@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Here:\n```python\nprint(1)\n```\nand better:\n```python\nprint(2)\n```", "print(2)"),
        ("```py\nimport gmsh\ngmsh.initialize()", "import gmsh\ngmsh.initialize()"),
        ("import gmsh\ngmsh.initialize()", "import gmsh\ngmsh.initialize()"),
        ("I cannot do that.", None),
        ("```\nx = 1\n```", "x = 1"),
        ("```json\n{}\n```", None),
    ],
)
def test_code_extraction_tolerates_fences(text, expected):
    assert extract_code(text) == expected


async def test_rollout_through_the_service_scores_a_correct_reply_high(service, tasks):
    cylinder = tasks["cylinder"]
    reply = f"Sure:\n```python\n{script_for(cylinder)}```"
    server, _ = start_fake_server(latency_s=0.0, reply=reply)
    client = GmshClient([service.url], service.token)
    try:
        model = art.Model(name="fake", project="p", inference_base_url=server.base_url, inference_api_key="k")
        async with RolloutContext(model=model, settings=RolloutSettings(max_steps=1), services={"gmsh": client}) as ctx:
            groups = await gather_step([cylinder], gmsh_rollout, ctx, 2, GatherLimits.create(2, 100), 0.0)
    finally:
        await client.aclose()
        server.stop()
    trajectory = groups[0].trajectories[0]
    assert trajectory.reward >= 0.6 and trajectory.metrics["groups_missing"] == 0
    figures = validation_metrics(groups)
    assert figures["gmsh/success_rate"] == 1.0 and figures["gmsh/physical_group_rate"] == 1.0
    assert 1 / 3 < figures["gmsh/density_ratio_p50"] < 3


async def test_rollout_without_code_scores_the_low_end(tasks):
    server, _ = start_fake_server(latency_s=0.0, reply="I would rather not.")
    try:
        model = art.Model(name="fake", project="p", inference_base_url=server.base_url, inference_api_key="k")
        async with RolloutContext(model=model, settings=RolloutSettings(max_steps=2), services={"gmsh": None}) as ctx:
            trajectory = await gmsh_rollout(ctx, tasks["cylinder"])
    finally:
        server.stop()
    assert trajectory.reward == -1.0 and trajectory.metrics["no_code"] == 1.0
    assert trajectory.metrics["agent_steps"] == 2


def test_score_command_prints_reward_breakdown_and_stats(tasks, tmp_path):
    cylinder = tasks["cylinder"]
    (tmp_path / "s.py").write_text(script_for(cylinder))
    (tmp_path / "r.json").write_text(json.dumps({**cylinder.data["requirements"], "bbox": cylinder.data["bbox"]}))
    geometry = Path(cylinder.data["task_store"]) / cylinder.data["geometry_file"]
    done = subprocess.run([sys.executable, "-m", "envs.gmsh", "score", "--geometry", str(geometry),
                           "--requirements", str(tmp_path / "r.json"), "--script", str(tmp_path / "s.py")],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout)
    assert out["reward"] >= 0.6 and out["breakdown"]["groups_missing"] == 0 and out["stats"]["nodes"] > 0
