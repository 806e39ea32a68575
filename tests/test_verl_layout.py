"""verl's parquet layout in and out for every env (envs/verl_layout.py): `python -m envs.<env> tasks` writes the
env's tasks deterministically; the env's own loader (what `train.py --dataset` calls) reads them back and an export
of what it loaded is the same file, byte for byte; a bad row is refused in one line naming the file, row and
field; verl's own reader (`datasets`) sees the columns verl expects; and one real RL step trains on an imported
file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.helpers import ROOT, history_steps, run_train, subprocess_env

# Small task sets: the flags each env's `tasks` command takes for the same tasks train.py would load.
ENV_FLAGS: dict[str, list[str]] = {
    "gmsh": [],
    "r2e": [],
    "openspiel": ["--game-types", "tic_tac_toe", "hex(board_size=5)", "--num-tasks-per-case", "3",
                  "--val-tasks-per-case", "2"],
    "planner": ["--num-problems", "6"],
    "workflow": ["--dataset-size", "9"],
}


def tasks(env: str, out: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", f"envs.{env}", "tasks", "--out", str(out), *flags],
                          capture_output=True, text=True, cwd=ROOT, env=subprocess_env(), timeout=300)


def exported(env: str, out: Path, *flags: str) -> list[dict[str, Any]]:
    done = tasks(env, out, *flags)
    assert done.returncode == 0, done.stderr[-2000:]
    return pq.read_table(out).to_pylist()


def config(env: str, dataset: Path, art: Path) -> Any:
    """What `train.py --env ENV --dataset FILE` builds (the env's options at their defaults)."""
    from envs.options import default_options
    from trainer.config import ExperimentConfig

    return ExperimentConfig(experiment_name="verl", env=env, dataset=str(dataset), art_path=str(art),
                            rollout_root=str(art / "rollouts"), env_options=default_options(env))


def to_rows(env: str) -> Any:
    """The env's exporter, as its `tasks` command calls it."""
    from envs.gmsh.tasks import verl_rows as gmsh
    from envs.openspiel.export import verl_rows as openspiel
    from envs.planner.problems import verl_rows as planner
    from envs.r2e.scenarios import verl_rows as r2e
    from envs.workflow.data import verl_rows as workflow

    return {"gmsh": gmsh, "r2e": r2e, "openspiel": openspiel, "planner": planner, "workflow": workflow}[env]


@pytest.mark.parametrize("env", list(ENV_FLAGS))
def test_export_import_export_gives_the_same_tasks(env: str, tmp_path: Path) -> None:
    from envs.registry import load_spec
    from envs.verl_layout import write

    first = tmp_path / "a" / "train.parquet"
    rows = exported(env, first, "--split", "train", "--seed", "3", *ENV_FLAGS[env])
    again = tmp_path / "b" / "train.parquet"
    exported(env, again, "--split", "train", "--seed", "3", *ENV_FLAGS[env])
    assert again.read_bytes() == first.read_bytes()  # deterministic for a seed
    assert rows and all(r["extra_info"]["env"] == env and r["extra_info"]["split"] == "train" for r in rows)
    assert [r["extra_info"]["index"] for r in rows] == list(range(len(rows)))
    assert all(r["prompt"][-1]["role"] == "user" and r["reward_model"]["style"] == "rule" for r in rows)

    cfg = config(env, first, tmp_path / "art")
    scenarios = load_spec(env).load_scenarios(cfg)  # what train.py --dataset loads
    assert [s.id for s in scenarios] == [r["extra_info"]["task_id"] for r in rows]
    second = tmp_path / "c" / "train.parquet"
    write(second, to_rows(env)([(s, "train") for s in scenarios], second, cfg))
    assert pq.read_table(second).to_pylist() == rows
    assert second.read_bytes() == first.read_bytes()


def test_the_fields_each_env_promises(tmp_path: Path) -> None:
    gmsh = exported("gmsh", tmp_path / "g" / "train.parquet")[0]
    info = gmsh["extra_info"]
    assert json.loads(info["requirements"])["dimension"] in (2, 3) and len(info["bbox"]) == 6
    assert (tmp_path / "g" / info["geometry_file"]).is_file() and info["geometry_file"].startswith("geometry/")
    r2e = exported("r2e", tmp_path / "r.parquet")[0]
    assert {"repo_name", "docker_image", "commit_hash", "problem_statement", "test_cmd"} <= set(r2e["extra_info"])
    assert json.loads(r2e["reward_model"]["ground_truth"]) == json.loads(r2e["extra_info"]["expected_output_json"])
    planner = exported("planner", tmp_path / "p.parquet", "--num-problems", "3")[0]
    assert planner["reward_model"]["ground_truth"].isdigit() and planner["ability"] == "math"
    workflow = exported("workflow", tmp_path / "w.parquet", "--dataset-size", "12")
    code = next(r for r in workflow if r["ability"] == "code")
    assert json.loads(code["reward_model"]["ground_truth"])["tests"]
    assert next(r for r in workflow if r["ability"] == "qa")["reward_model"]["ground_truth"]
    val = exported("planner", tmp_path / "v.parquet", "--num-problems", "8", "--split", "val")
    assert {r["extra_info"]["split"] for r in val} == {"val"} and len(val) == 2


def test_verl_reads_our_file_with_its_own_loader(tmp_path: Path) -> None:
    """verl builds its dataset with `datasets` from the parquet: the columns it indexes are there, typed as it
    expects (chat messages, a ground truth under reward_model)."""
    import datasets

    out = tmp_path / "train.parquet"
    exported("planner", out, "--num-problems", "3")
    first = datasets.load_dataset("parquet", data_files=str(out), split="train")[0]
    assert set(first) == {"data_source", "prompt", "ability", "reward_model", "extra_info"}
    assert [m["role"] for m in first["prompt"]] == ["system", "user"]
    assert first["reward_model"]["ground_truth"] and first["data_source"] == "planner"


def _spoil(path: Path, index: int, change: Any) -> Path:
    rows = pq.read_table(path).to_pylist()
    change(rows[index])
    bad = path.with_name("bad.parquet")
    pq.write_table(pa.Table.from_pylist(rows), bad)
    return bad


def _geometry(row: dict) -> None:
    row["extra_info"]["geometry_file"] = "geometry/nowhere.step"


BAD_ROWS = [  # (env, flags, row, the change, what the error line must say)
    ("planner", ["--num-problems", "3"], 1, lambda r: r.update(prompt=[{"role": "user", "content": ""}]),
     "row 1: field 'prompt' holds no user message"),
    ("planner", ["--num-problems", "3"], 2, lambda r: r["reward_model"].update(ground_truth="many"),
     "row 2: field 'reward_model.ground_truth' has no number"),
    ("workflow", ["--dataset-size", "6", "--domain-ratios", "code=1"], 0,
     lambda r: r["reward_model"].update(ground_truth="assert f()"), "row 0: field 'reward_model.ground_truth'"),
    ("openspiel", ["--game-types", "tic_tac_toe", "--num-tasks-per-case", "3"], 2,
     lambda r: r["extra_info"].update(history=[4, 4]), "row 2: field 'extra_info.history[1]' is 4, not a legal"),
    ("r2e", [], 3, lambda r: r["extra_info"].update(commit_hash="xyz"), "row 3: field 'extra_info.commit_hash'"),
    ("gmsh", [], 4, _geometry, "row 4: field 'extra_info.geometry_file' names"),
]


@pytest.mark.parametrize(("env", "flags", "index", "change", "said"), BAD_ROWS, ids=[b[0] for b in BAD_ROWS])
def test_a_bad_row_is_one_line_naming_file_row_and_field(env: str, flags: list[str], index: int, change: Any,
                                                         said: str, tmp_path: Path) -> None:
    good = tmp_path / "train.parquet"
    exported(env, good, *flags)
    bad = _spoil(good, index, change)
    done = tasks(env, tmp_path / "out.parquet", "--dataset", str(bad))  # the env's loader, as train.py calls it
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: --dataset {bad}, ") and said in lines[0], done.stderr
    assert not (tmp_path / "out.parquet").exists()


def test_a_file_that_is_not_verl_shaped_is_named(tmp_path: Path) -> None:
    from envs.verl_layout import check_row

    with pytest.raises(ValueError, match=r"^F, row 0: field 'prompt' is a string"):
        check_row({"data_source": "x", "prompt": "hi", "reward_model": {"ground_truth": "1"}}, 0, "F")
    with pytest.raises(ValueError, match=r"^F, row 0: field 'reward_model.ground_truth' is missing"):
        check_row({"data_source": "x", "prompt": [{"role": "user", "content": "hi"}], "reward_model": {}}, 0, "F")
    with pytest.raises(ValueError, match=r"^F, row 0: field 'prompt\[0\].role' must be one of"):
        check_row({"data_source": "x", "prompt": [{"role": "bot", "content": "hi"}]}, 0, "F")
    done = tasks("planner", tmp_path / "x.txt")
    assert done.returncode == 2 and done.stderr.strip() == f"error: --out {tmp_path / 'x.txt'}: must end with " \
                                                           ".parquet (verl reads parquet)"


def test_r2e_score_refuses_a_missing_cache_in_one_line_and_the_hub_error_names_offline_mode(monkeypatch) -> None:
    done = subprocess.run([sys.executable, "-m", "envs.r2e", "score", "--cache-dir", "/nonexistent", "--dataset",
                           "rows.jsonl", "--instance-id", "x", "--files", "."], capture_output=True, text=True,
                          cwd=ROOT, env=subprocess_env(), timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("error: --cache-dir /nonexistent: not a repo cache")
    from envs.r2e.data import hub_problem

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert "HF_HUB_OFFLINE=1" in hub_problem(ConnectionError()) and "HF_HUB_OFFLINE=0" in hub_problem(OSError())


@pytest.mark.slow
def test_one_rl_step_trains_on_an_imported_verl_file(tmp_path: Path) -> None:
    """The openspiel tasks out in verl's layout, back in through train.py --dataset, one RL step on them."""
    data = tmp_path / "verl" / "train.parquet"
    rows = exported("openspiel", data, "--split", "train", *ENV_FLAGS["openspiel"])
    result = run_train(tmp_path, "verl", "--env", "openspiel", "--dataset", str(data), "--max-training-steps", "1",
                       "--groups-per-step", "2", "--rollouts-per-group", "2", "--max-tokens", "8",
                       "--log-sample-rate", "1", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert history_steps(tmp_path, "verl") == [1]
    logged = [f.read_text() for f in (tmp_path / "logs" / "verl").glob("step_*/openspiel_*.jsonl")]
    assert logged and all(any(r["extra_info"]["task_id"] in text for r in rows) for text in logged)
