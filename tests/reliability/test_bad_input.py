"""Bad input from the user's side: flags, dataset rows, a corrupted state file. Each stops before any work with one
line that names what is wrong, and loses nothing that was there. (Bad model output: test_bad_model_output.py.)"""

import json
import os
import subprocess
import sys
from pathlib import Path

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


# ---- every flag that takes a path ----------------------------------------------------------------------------------
# Each case: (id, flags given a path under tmp_path, what the line must say, how the place is made unusable). `None`
# for the last: the path's kind or content is enough. "unreadable"/"unwritable" need mode bits that bind us: tests
# run as root, who passes every mode check, so those cases run in a user namespace as uid 1000 (bwrap), where the
# root-owned test files are ours but root's override is gone; "readonly" bind-mounts the place read-only there.

BAD_BYTES = b'{"a": "caf\xe9"}\n'  # Latin-1, not UTF-8


def _setup(tmp_path) -> dict[str, str]:
    """A few paths of each kind under tmp_path, by name."""
    (tmp_path / "a_dir").mkdir()
    (tmp_path / "a_file.jsonl").write_text('{"prompt": "p", "response": "r"}\n')
    (tmp_path / "latin1.jsonl").write_bytes(BAD_BYTES)
    (tmp_path / "text.parquet").write_text("not parquet\n")
    (tmp_path / "notes.txt").write_text("hello\n")
    (tmp_path / "no_json.jsonl").write_text("this is not json\n")
    for name, meta in (("cache_no_index", None), ("cache_latin1", "index.json"), ("adapter_empty", None),
                       ("adapter_latin1", "adapter_config.json"), ("model_empty", None), ("model_bad_json", None)):
        (tmp_path / name).mkdir()
        if meta:
            (tmp_path / name / meta).write_bytes(BAD_BYTES)
    (tmp_path / "model_bad_json" / "config.json").write_text("{not json")
    for name, meta in (("adapter_no_weights", "adapter_config.json"), ("model_no_weights", "config.json")):
        (tmp_path / name).mkdir()
        (tmp_path / name / meta).write_text('{"r": 8}')
    (tmp_path / "locked").mkdir()
    (tmp_path / "locked" / "rows.jsonl").write_text('{"a": 1}\n')
    (tmp_path / "sealed").mkdir()
    return {p.name: str(p) for p in tmp_path.iterdir()}


def P(name: str) -> str:
    return "{" + name + "}"


PATH_CASES = [
    # --dataset: missing, wrong kind, not UTF-8, wrong format for the env, unreadable
    ("dataset-missing", ["--env", "r2e", "--dataset", P("tmp") + "/none.jsonl"], "--dataset", "no such file", None),
    ("dataset-dir", ["--env", "r2e", "--dataset", P("a_dir")], "--dataset", "is a directory", None),
    ("dataset-latin1", ["--env", "r2e", "--dataset", P("latin1.jsonl")], "--dataset", "not UTF-8", None),
    ("dataset-not-json", ["--env", "r2e", "--dataset", P("no_json.jsonl")], "--dataset", "line 1 is not JSON", None),
    ("dataset-jsonl-for-gmsh", ["--env", "gmsh", "--dataset", P("a_file.jsonl")], "--dataset",
     "must be a .parquet file", None),
    ("dataset-fake-parquet", ["--env", "r2e", "--dataset", P("text.parquet")], "--dataset", "not a parquet file", None),
    ("dataset-txt", ["--env", "r2e", "--dataset", P("notes.txt")], "--dataset", "must be a .jsonl or .parquet", None),
    ("dataset-unreadable", ["--env", "r2e", "--dataset", P("locked") + "/rows.jsonl"], "--dataset", "cannot be read",
     "unreadable"),
    # --cache-dir: r2e reads a built cache; gmsh writes its task store there
    ("cache-r2e-missing", ["--env", "r2e", "--cache-dir", P("tmp") + "/none"], "--cache-dir", "no such directory",
     None),
    ("cache-r2e-file", ["--env", "r2e", "--cache-dir", P("a_file.jsonl")], "--cache-dir", "is a file", None),
    ("cache-r2e-no-index", ["--env", "r2e", "--cache-dir", P("cache_no_index")], "--cache-dir", "no index.json", None),
    ("cache-r2e-latin1-index", ["--env", "r2e", "--cache-dir", P("cache_latin1")], "--cache-dir", "not UTF-8", None),
    ("cache-r2e-unreadable", ["--env", "r2e", "--cache-dir", P("locked")], "--cache-dir", "cannot be read",
     "unreadable"),
    ("cache-gmsh-file", ["--env", "gmsh", "--cache-dir", P("a_file.jsonl")], "--cache-dir", "is a file", None),
    ("cache-gmsh-readonly", ["--env", "gmsh", "--cache-dir", P("sealed") + "/tasks"], "--cache-dir", "not writable",
     "readonly"),
    # --art-path, --log-dir, --rollout-root: written by the run
    ("art-path-file", ["--art-path", P("a_file.jsonl")], "--art-path", "is a file", None),
    ("art-path-under-file", ["--art-path", P("a_file.jsonl") + "/art"], "--art-path", "cannot be created", None),
    ("art-path-readonly", ["--art-path", P("sealed") + "/art"], "--art-path", "not writable", "readonly"),
    ("art-path-unwritable", ["--art-path", P("sealed")], "--art-path", "not writable", "unwritable"),
    ("log-dir-file", ["--log-dir", P("a_file.jsonl")], "--log-dir", "is a file", None),
    ("log-dir-readonly", ["--log-dir", P("sealed") + "/logs"], "--log-dir", "not writable", "readonly"),
    ("log-dir-unwritable", ["--log-dir", P("sealed") + "/logs"], "--log-dir", "not writable", "unwritable"),
    ("rollout-root-file", ["--rollout-root", P("a_file.jsonl")], "--rollout-root", "is a file", None),
    ("rollout-root-readonly", ["--rollout-root", P("sealed")], "--rollout-root", "not writable", "readonly"),
    # --sft-data
    ("sft-missing", ["--sft-data", P("tmp") + "/none.jsonl"], "--sft-data", "no such file", None),
    ("sft-dir", ["--sft-data", P("a_dir")], "--sft-data", "is a directory", None),
    ("sft-latin1", ["--sft-data", P("latin1.jsonl")], "--sft-data", "not UTF-8", None),
    ("sft-txt", ["--sft-data", P("notes.txt")], "--sft-data", "must be a .jsonl or .parquet", None),
    ("sft-fake-parquet", ["--sft-data", P("text.parquet")], "--sft-data", "not a parquet file", None),
    ("sft-unreadable", ["--sft-data", P("locked") + "/rows.jsonl"], "--sft-data", "cannot be read", "unreadable"),
    # --init-adapter, --base-model: folders with a JSON file that says what they are
    ("adapter-missing", ["--init-adapter", P("tmp") + "/none"], "--init-adapter", "no such directory", None),
    ("adapter-file", ["--init-adapter", P("a_file.jsonl")], "--init-adapter", "is a file", None),
    ("adapter-empty", ["--init-adapter", P("adapter_empty")], "--init-adapter", "no adapter_config.json", None),
    ("adapter-latin1", ["--init-adapter", P("adapter_latin1")], "--init-adapter", "not UTF-8", None),
    ("adapter-no-weights", ["--init-adapter", P("adapter_no_weights")], "--init-adapter", "no weights", None),
    ("base-model-file", ["--base-model", P("a_file.jsonl")], "--base-model", "is a file", None),
    ("base-model-empty", ["--base-model", P("model_empty")], "--base-model", "no config.json", None),
    ("base-model-bad-json", ["--base-model", P("model_bad_json")], "--base-model", "not JSON", None),
    ("base-model-no-weights", ["--base-model", P("model_no_weights")], "--base-model", "no weights", None),
    ("base-model-unreadable", ["--base-model", P("locked")], "--base-model", "cannot be read", "unreadable"),
    # --checkpoint: a saved step of this experiment
    ("checkpoint-missing", ["--eval-only", "--checkpoint", "3"], "--checkpoint", "no checkpoint at", None),
]


def _bwrap() -> str | None:
    from sandbox.run import _bundled

    return _bundled()


def _restricted(cmd: list[str], how: str, paths: dict[str, str]) -> list[str]:
    """The command run where `how` makes the place unusable, even for root (see the comment above PATH_CASES)."""
    if how == "readonly":
        binary = _bwrap()
        if binary is None:
            pytest.skip("no bwrap to bind a folder read-only")
        return [binary, "--bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
                "--ro-bind", paths["sealed"], paths["sealed"], "--", *cmd]
    target = Path(paths["locked"]) if how == "unreadable" else Path(paths["sealed"])
    if how == "unreadable":
        (target / "rows.jsonl").chmod(0)
        target.chmod(0o311)  # searchable, not listable
    else:
        target.chmod(0o555)
    if os.geteuid() != 0:
        return cmd
    binary = _bwrap()
    if binary is None:
        pytest.skip("root reads and writes whatever the mode bits say, and there is no bwrap for a user namespace")
    return [binary, "--unshare-user", "--uid", "1000", "--gid", "1000", "--bind", "/", "/", "--dev", "/dev",
            "--proc", "/proc", "--", *cmd]


@pytest.mark.parametrize(("flags", "flag", "problem", "how"), [c[1:] for c in PATH_CASES],
                         ids=[c[0] for c in PATH_CASES])
def test_every_path_flag_fails_with_one_line_naming_flag_and_problem(tmp_path, flags, flag, problem, how):
    paths = _setup(tmp_path) | {"tmp": str(tmp_path)}
    art = tmp_path / "art"
    given = []
    for f in flags:
        for name, path in paths.items():
            f = f.replace(P(name), path)
        given.append(f)
    cmd = [sys.executable, str(ROOT / "train.py"), "--experiment-name", "x", "--art-path", str(art),
           "--log-dir", str(tmp_path / "logs"), "--rollout-root", str(tmp_path / "rollouts"), *given]
    if how is not None:
        cmd = _restricted(cmd, how, paths)
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=subprocess_env(), cwd=ROOT)
    finally:
        for name in ("locked", "sealed"):
            Path(paths[name]).chmod(0o755)
        (Path(paths["locked"]) / "rows.jsonl").chmod(0o644)
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith(f"error: {flag} ") and problem in lines[0], lines[0]
    assert not art.exists() and not (tmp_path / "logs").exists() and not (tmp_path / "rollouts").exists()
    assert not list(tmp_path.rglob(".art-write-probe-*"))  # the writability probe leaves nothing
