"""W&B where users look: each RL step's sampled rollouts as a W&B table, the HTML report as an artifact, in the
one run ART logs metrics to; nothing at all with W&B off. Checked on what W&B itself wrote: the offline run's
`.wandb` file (read with wandb's own reader) and the table files under the run's `files/`."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import art
import pytest
from openai.types.chat.chat_completion import Choice
from openai.types.chat.chat_completion_message import ChatCompletionMessage

from monitor.wandb_log import BASE_COLUMNS, REPORT_TYPE, ROLLOUT_TABLE, artifact_name, log_rollouts, rollout_rows
from rollouts.logs import is_sampled
from tests.helpers import ROOT, model_dir, subprocess_env, train_cmd


def reply(text: str) -> Choice:
    return Choice(index=0, finish_reason="stop", message=ChatCompletionMessage(role="assistant", content=text))


def trajectory(scenario: str, reward: float, **metrics: float) -> art.Trajectory:
    return art.Trajectory(messages_and_choices=[{"role": "system", "content": "be brief"},
                                                {"role": "user", "content": f"task {scenario}"}, reply("first"),
                                                {"role": "user", "content": "tests failed"}, reply("second")],
                          reward=reward, metrics=metrics, metadata={"scenario_id": scenario})


def test_rows_are_the_rollouts_the_step_logs_sample_with_prompt_response_and_breakdown():
    groups = [art.TrajectoryGroup([trajectory(f"s{g}", 0.1 * i, agent_steps=2, finished=True) for i in range(4)])
              for g in range(3)]
    columns, rows = rollout_rows(5, groups, seed=7, rate=0.5, env="r2e")
    assert columns == BASE_COLUMNS + ["agent_steps", "finished"]
    sampled = [(f"s{g}", 0.1 * i) for g in range(3) for i in range(4) if is_sampled(7, 5, g, i, 0.5)]
    assert 0 < len(sampled) < 12  # the same pure function as the step logs (rollouts/logs.py): a share of them
    assert [(r[2], r[6]) for r in rows] == sampled
    step, env, _, _, prompt, response, _, agent_steps, finished = rows[0]
    assert (step, env, agent_steps, finished) == (5, "r2e", 2.0, 1.0)  # breakdown figures as floats, bools too
    assert prompt == f"[system] be brief\n\n[user] task {rows[0][2]}"
    assert response == "[assistant] first\n\n[user] tests failed\n\n[assistant] second"
    single = art.Trajectory(messages_and_choices=[{"role": "user", "content": "q"}, reply("a")], reward=1.0,
                            metrics={"reward": 1.0}, metadata={"scenario_id": "toy/q"})
    columns, rows = rollout_rows(1, [art.TrajectoryGroup([single])], seed=0, rate=1.0, env="mix")
    assert columns[-1] == "metrics/reward"  # a breakdown figure named like a base column keeps both
    assert rows == [[1, "toy", "toy/q", None, "[user] q", "a", 1.0, 1.0]]  # a mixed run: each group's own env


class Off:
    def wandb_run(self) -> None:
        return None


def test_with_wandb_off_nothing_is_logged():
    groups = [art.TrajectoryGroup([trajectory("s", 1.0)])]
    assert log_rollouts(Off(), 1, groups, seed=0, rate=1.0, env="toy") == 0
    assert artifact_name("my run/2") == "report-my-run-2"


def test_the_model_has_no_run_with_wandb_disabled(tmp_path, monkeypatch):
    from backends.trainer_model import TrainerModel

    model = TrainerModel(name="m", project="p", base_model="x", base_path=str(tmp_path))
    model.report_metrics = ["wandb"]
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert model.wandb_run() is None
    monkeypatch.setenv("WANDB_MODE", "offline")
    model.report_metrics = []  # --wandb disabled
    assert model.wandb_run() is None
    assert not (tmp_path / "p").exists()


def test_with_a_key_the_tables_go_to_arts_own_run(tmp_path, monkeypatch):
    """ART makes the run where it has a key (its GPU and remote backends log to it too): the trainer's tables and
    artifact go to that run, never to a second one."""
    from backends.trainer_model import TrainerModel

    arts_run = object()
    monkeypatch.setattr(art.Model, "_get_wandb_run", lambda self: arts_run)
    monkeypatch.setenv("WANDB_API_KEY", "k")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    model = TrainerModel(name="m", project="p", base_model="x", base_path=str(tmp_path))
    model.report_metrics = ["wandb"]
    assert model.wandb_run() is arts_run and model._get_wandb_run() is arts_run
    monkeypatch.setenv("WANDB_MODE", "offline")  # --wandb offline with a key: the offline run, not ART's
    assert model._get_wandb_run() is None  # (callers outside art.model: see TrainerModel._get_wandb_run)


def test_the_wandb_flag_wins_over_the_environment(monkeypatch):
    """`--wandb offline` with a key in the environment stays offline; with WANDB_MODE=disabled it still records."""
    from types import SimpleNamespace

    from trainer.run import _configure_wandb

    monkeypatch.setenv("WANDB_API_KEY", "k")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    model = SimpleNamespace(report_metrics=None)
    _configure_wandb(model, SimpleNamespace(wandb="offline"))
    assert os.environ["WANDB_MODE"] == "offline" and model.report_metrics == ["wandb"]


def wandb_records(path: Path) -> list[tuple[str, Any]]:
    """(kind, record) for every record of an offline run's `.wandb` file, through wandb's own reader."""
    from wandb.proto import wandb_internal_pb2
    from wandb.sdk.internal import datastore

    store = datastore.DataStore()
    store.open_for_scan(str(path))
    records = []
    while (data := store.scan_data()) is not None:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        kind = record.WhichOneof("record_type")
        records.append((kind, getattr(record, kind)))
    return records


def history_items(record: Any) -> dict[str, Any]:
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.item}


@pytest.mark.slow
def test_an_offline_run_holds_each_steps_rollout_table_and_the_report_artifact(tmp_path):
    name = "wb"
    env = dict(subprocess_env(), WANDB_MODE="offline", WANDB_DATA_DIR=str(tmp_path / "wandb-data"),
               WANDB_CACHE_DIR=str(tmp_path / "wandb-cache"), WANDB_CONFIG_DIR=str(tmp_path / "wandb-config"))
    run = subprocess.run(train_cmd(tmp_path, name, "--env", "toy", "--groups-per-step", "2", "--rollouts-per-group",
                                   "4", "--dataset-size", "8", "--max-training-steps", "2", "--log-sample-rate",
                                   "0.5", "--wandb", "offline"),
                         capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    runs = list((model_dir(tmp_path, name) / "wandb").rglob("offline-run-*"))
    assert len(runs) == 1, f"one W&B run, ART's metrics and these tables together: {runs}"
    files = runs[0] / "files"
    records = wandb_records(next(runs[0].glob("*.wandb")))
    history = [history_items(r) for kind, r in records if kind == "history"]
    assert [int(h["training_step"]) for h in history if "train/reward_mean" in h] == [1, 2]  # ART's metrics

    # a table per RL step, holding exactly the rollouts the step logs sampled, with the breakdown of each
    tables = {int(h["training_step"]): h[f"{ROLLOUT_TABLE}/path"] for h in history if f"{ROLLOUT_TABLE}/path" in h}
    assert sorted(tables) == [1, 2]
    for step, path in tables.items():
        table = json.loads((files / path).read_text())
        assert table["columns"][:len(BASE_COLUMNS)] == BASE_COLUMNS and "agent_steps" in table["columns"]
        rows = [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]
        logged = [json.loads(p.read_text().splitlines()[0])["environment_kwargs"]
                  for p in sorted((tmp_path / "logs" / name / f"step_{step:04d}").glob("*.jsonl"))]
        assert 0 < len(rows) < 8 and len(rows) == len(logged)
        assert {(row["step"], row["env"]) for row in rows} == {(step, "toy")}
        assert all(row["prompt"] and isinstance(row["response"], str) for row in rows)
        breakdown = table["columns"][len(BASE_COLUMNS):]
        shown = [(r["scenario_id"], r["policy_step"], r["reward"], {k: r[k] for k in breakdown if r[k] is not None})
                 for r in rows]
        kept = [(m["scenario_id"], m["policy_step"], m["reward"],
                 {k: float(v) for k, v in m["reward_breakdown"].items()}) for m in logged]
        assert sorted(shown, key=repr) == sorted(kept, key=repr)  # each rollout with its own breakdown, exactly

    # the report, as the artifact's one file: the very bytes train.py wrote
    reports = [r for kind, r in records if kind == "artifact" and r.type == REPORT_TYPE]
    assert [r.name for r in reports] == [artifact_name(name)]
    [entry] = reports[0].manifest.contents
    report = (tmp_path / "logs" / name / "report.html").read_bytes()
    assert entry.path == "report.html"
    assert entry.digest == base64.b64encode(hashlib.md5(report).digest()).decode()
