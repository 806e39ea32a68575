"""Bad input from the user's side: flags, dataset rows, a corrupted state file. Each stops before any work with one
line that names what is wrong, and loses nothing that was there. (Bad model output: test_bad_model_output.py.)"""

import json
import subprocess
import sys

import pytest

from envs.r2e.cache import sample_rows
from tests.helpers import ROOT, history_steps, model_dir, run_train, subprocess_env

SMALL = ["--env", "toy", "--groups-per-step", "2", "--rollouts-per-group", "4", "--dataset-size", "8"]


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--groups-per-step", "0"], "--groups-per-step"),
        (["--rollouts-per-group", "1"], "--rollouts-per-group"),
        (["--max-concurrent", "-3"], "--max-concurrent"),
        (["--learning-rate", "5"], "--learning-rate"),
        (["--log-sample-rate", "1.5"], "--log-sample-rate"),
        (["--env", "nope"], "--env"),
        (["--backend", "gpu"], "--backend"),
        (["--num-epochs", "abc"], "--num-epochs"),
        (["--base-model", "/no/such/model"], "--base-model"),
        (["--advantage-balance", "2"], "--advantage-balance"),
    ],
)
def test_bad_flag_is_one_line_naming_the_flag(tmp_path, flags, named):
    cmd = [sys.executable, str(ROOT / "train.py"), "--experiment-name", "x", "--art-path", str(tmp_path), *flags]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=subprocess_env(), cwd=ROOT)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:") and named in lines[0]
    assert not (tmp_path / "art-agent-trainer").exists()  # no work started


def _r2e_rows_missing_a_field(tmp_path):
    rows = [r.model_dump(mode="json") for r in sample_rows()[:3]]
    del rows[2]["problem_statement"]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return ["--env", "r2e", "--dataset", str(path)], "row 2: field 'problem_statement'"


def _gmsh_row_with_broken_requirements(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from envs.gmsh.tasks import ensure_default_tasks

    store = ensure_default_tasks(tmp_path / "tasks", seed=0, n_train=3, n_val=1)
    rows = pq.read_table(store / "train.parquet").to_pylist()
    rows[1]["requirements"] = "{not json"
    path = store / "train_bad.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return ["--env", "gmsh", "--dataset", str(path)], "field 'requirements'"


@pytest.mark.parametrize("make", [_r2e_rows_missing_a_field, _gmsh_row_with_broken_requirements])
def test_a_bad_dataset_row_stops_before_any_work_naming_row_and_field(tmp_path, make, record_property):
    flags, named = make(tmp_path)
    art_path = tmp_path / "art"
    cmd = [sys.executable, str(ROOT / "train.py"), "--experiment-name", "x", "--art-path", str(art_path), *flags]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=subprocess_env(), cwd=ROOT)
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and named in last and "Traceback" not in result.stderr
    record_property("message", last)
    assert not (art_path / "art-agent-trainer").exists()  # no model registered, no step begun


@pytest.mark.slow
def test_corrupted_state_file_is_a_one_line_error(tmp_path):
    first = run_train(tmp_path, "bad", "--max-training-steps", "1", *SMALL)
    assert first.returncode == 0, first.stderr[-3000:]
    (model_dir(tmp_path, "bad") / "state.json").write_text('{"step": 1, "conf')
    second = run_train(tmp_path, "bad", "--max-training-steps", "2", *SMALL)
    assert second.returncode == 2
    assert second.stderr.strip().splitlines()[-1].startswith("error: ") and "state.json is corrupted" in second.stderr
    assert json.loads(json.dumps(history_steps(tmp_path, "bad"))) == [1]
