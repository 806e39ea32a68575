"""--mix: the flag's rules (one line naming it, exit 2), the ratio draw and its cursor (a pure function of seed and
committed cursor), per-env figures and demonstrations, a 2-step CPU run of three envs with per-env evaluation, and
every env's cursor across kill -9 and resume."""

from __future__ import annotations

import dataclasses
import json
import random
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from envs.mix.cursor import EnvPosition, MixCursor, deal
from envs.mix.mix import env_config, mix_env
from envs.openspiel.options import GameOptions
from envs.registry import get_env
from monitor.report import panels
from rollouts.scenario import Scenario
from tests.helpers import (
    ROOT,
    history_rows,
    history_steps,
    kill_when,
    model_dir,
    read_state,
    run_train,
    subprocess_env,
    train_cmd,
)
from tests.test_train_e2e import assert_clean_exit
from trainer.cli import config_from_args
from trainer.config import ConfigError
from trainer.resume import Cursor, load_cursor

MIX3 = ["--mix", "toy=0.5,openspiel=0.25,planner=0.25", "--game-types", "tic_tac_toe", "--num-tasks-per-case", "8",
        "--val-tasks-per-case", "2", "--num-problems", "8", "--executor-max-tokens", "8", "--dataset-size", "8"]


def parse(*flags: str):
    return config_from_args(["--experiment-name", "x", "--base-model", "tiny-random", *flags])


# ---- the flag ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "why"), [
    ("toy=0.5", "the ratios sum to 0.5, not 1"),
    ("toy=0.5,openspiel=0.5000011", "the ratios sum to 1.0000011, not 1"),
    ("toy=0.5,chess=0.5", "unknown env 'chess'; choose from gmsh, openspiel"),
    ("toy", "'toy' is not ENV=RATIO"),
    ("toy=0.5,,openspiel=0.5", "'' is not ENV=RATIO"),
    ("toy=half,openspiel=0.5", "toy='half' is not a number"),
    ("toy=0,openspiel=1", "toy=0 must be a ratio above 0"),
    ("toy=-0.5,openspiel=1.5", "toy=-0.5 must be a ratio above 0"),
    ("toy=inf,openspiel=1", "must be a ratio above 0"),
    ("toy=0.5,toy=0.5", "toy is given twice"),
    ("mix=1", "unknown env 'mix'"),
])
def test_a_bad_mix_is_one_line_naming_the_flag(value, why):
    with pytest.raises(ConfigError, match="^--mix: ") as caught:
        parse("--mix", value)
    assert why in str(caught.value) and "\n" not in str(caught.value)


def test_ratios_within_a_millionth_of_one_are_accepted_and_spelt_one_way():
    a = parse("--mix", "toy=0.3333333,openspiel=0.6666667")
    assert a.env == "mix" and a.mix == "openspiel=0.6666667,toy=0.3333333"
    b = parse("--mix", "openspiel=0.6666667,toy=0.3333333")
    assert a.config_hash() == b.config_hash()  # the same mix in another order is the same experiment
    assert parse("--mix", "toy=1").mix == "toy=1"


def test_an_even_three_way_mix_keeps_its_shares():
    """Typed to 7 digits, a third each sums to exactly 1; the config keeps the shares as typed, not rounded to a
    sum the config's own check would refuse."""
    cfg = parse("--mix", "toy=0.3333333,openspiel=0.3333333,planner=0.3333334")
    assert cfg.mix == "openspiel=0.3333333,planner=0.3333334,toy=0.3333333"


def test_a_bad_mix_exits_2_before_any_work(tmp_path):
    result = subprocess.run(train_cmd(tmp_path / "art", "bad", "--mix", "toy=0.7,openspiel=0.2"), capture_output=True,
                            text=True, env=subprocess_env(), cwd=ROOT, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: --mix: the ratios sum to 0.9, not 1"]
    assert not (tmp_path / "art").exists()


def test_env_and_dataset_name_one_env_and_are_refused_with_mix():
    with pytest.raises(ConfigError, match=r"^--mix: the run's env is the mix; leave --env out \(got --env toy\)$"):
        parse("--mix", "toy=0.5,openspiel=0.5", "--env", "toy")
    with pytest.raises(ConfigError, match="^--dataset names one env's data; with --mix"):
        parse("--mix", "toy=0.5,openspiel=0.5", "--dataset", "x.jsonl")
    with pytest.raises(ConfigError, match="^--env: unknown env 'mix'"):
        parse("--env", "mix")  # the mix is an env only through --mix


def test_flags_of_every_mixed_env_are_accepted_and_others_refused():
    config = parse("--mix", "openspiel=0.5,planner=0.5", "--game-types", "tic_tac_toe", "--num-problems", "8")
    assert config.env_options["openspiel"].options.game_types == ("tic_tac_toe",)
    assert config.env_options["planner"].options.num_problems == 8
    assert isinstance(config.env_options["openspiel"].options, GameOptions)  # each env holds its own options only
    with pytest.raises(ConfigError, match=r"^--domain-ratios belongs to --env workflow, not --mix \(openspiel, "):
        parse("--mix", "openspiel=0.5,planner=0.5", "--domain-ratios", "math=1")
    with pytest.raises(ConfigError, match="^--game-types"):  # and each env checks its own values
        parse("--mix", "openspiel=0.5,toy=0.5", "--game-types", "no_such_game")


def test_mix_is_in_the_config_hash_only_when_set():
    plain = parse("--env", "toy")
    assert "mix" not in plain.hashed_fields()
    half, other = parse("--mix", "toy=0.5,openspiel=0.5"), parse("--mix", "toy=0.4,openspiel=0.6")
    assert half.config_hash() != other.config_hash()


def test_run_wide_settings_have_mix_defaults_and_turn_limits_stay_per_env():
    config = parse("--mix", "openspiel=0.5,planner=0.25,r2e=0.25")
    assert (config.groups_per_step, config.rollouts_per_group, config.max_training_steps) == (4, 4, 4)  # RL steps
    views = {env: env_config(config, env) for env in ("openspiel", "planner", "r2e")}
    assert {env: v.max_tokens for env, v in views.items()} == {"openspiel": 16, "planner": 256, "r2e": 256}
    assert views["r2e"].max_steps == 6 and views["openspiel"].max_steps is None  # None: the env's default turns
    assert views["openspiel"].env == "openspiel" and views["openspiel"].mix is None
    assert views["openspiel"].env_options.num_demos == 48  # the env's own spec defaults for its own flags
    given = parse("--mix", "openspiel=0.5,planner=0.5", "--max-tokens", "40", "--max-steps", "3", "--groups-per-step",
                  "6")
    assert {(env_config(given, e).max_tokens, env_config(given, e).max_steps) for e in ("openspiel", "planner")} == {
        (40, 3)}
    assert given.groups_per_step == 6


# ---- the draw and its cursor ---------------------------------------------------------------------------------------


def test_every_env_stays_within_one_group_of_its_share():
    for trial in range(200):
        rng = random.Random(trial)
        weights = [rng.random() + 0.01 for _ in range(rng.randint(1, 6))]
        shares = {f"e{i}": w / sum(weights) for i, w in enumerate(weights)}
        drawn: Counter[str] = Counter()
        for _ in range(40):
            drawn.update(deal(shares, drawn, rng.randint(1, 8), seed=trial))
            total = sum(drawn.values())
            assert all(abs(drawn[e] - share * total) < 1 for e, share in shares.items()), (shares, drawn)


def _scenarios(sizes: dict[str, int]) -> list[Scenario]:
    return [Scenario(f"{env}/{i}", "", {"env": env}) for env, n in sizes.items() for i in range(n)]


def test_the_cursor_is_a_pure_function_of_seed_and_committed_cursor():
    scenarios, shares = _scenarios({"a": 5, "b": 3, "c": 11}), {"a": 0.5, "b": 0.2, "c": 0.3}
    straight, cursor = [], MixCursor.restore({}, shares)
    for _ in range(12):
        batch, cursor = cursor.take(scenarios, 4, seed=7)
        straight.append([s.id for s in batch])
    resumed, saved = [], {}
    for _ in range(12):  # a kill and a resume after every step: only the committed JSON survives
        batch, after = MixCursor.restore(saved, shares).take(scenarios, 4, seed=7)
        resumed.append([s.id for s in batch])
        saved = json.loads(json.dumps(dataclasses.asdict(after)))
    assert resumed == straight and saved == dataclasses.asdict(cursor)
    assert cursor.positions["a"].drawn == 24 and cursor.positions["b"].drawn + cursor.positions["c"].drawn == 24
    other, _ = MixCursor.restore({}, shares).take(scenarios, 12, seed=8)
    assert [s.id for s in other] != [i for ids in straight[:3] for i in ids]  # the seed matters


def test_a_single_env_resumed_from_a_mixed_run_starts_its_order_over():
    """--allow-config-change from a --mix run to one env: the mix's cursor has no place in that env's order, so the
    run goes on from the start of the saved epoch instead of stopping with a traceback."""
    saved = json.loads(json.dumps(dataclasses.asdict(MixCursor.restore({}, {"a": 0.5, "b": 0.5}))))
    saved["epoch"] = 2
    assert load_cursor(get_env("toy"), {"cursor": saved}) == Cursor(2, 0)
    assert load_cursor(get_env("toy"), {"cursor": {"epoch": 1, "position": 6}}) == Cursor(1, 6)
    assert load_cursor(get_env("toy"), {}) == Cursor(0, 0)


def test_cache_dir_is_checked_for_each_mixed_env_that_reads_it(tmp_path):
    """r2e reads --cache-dir as a built repo cache, in a mix as alone; a folder without one is refused up front."""
    with pytest.raises(ConfigError, match=r"^--cache-dir .*r2e repo cache"):
        parse("--mix", "r2e=0.5,toy=0.5", "--cache-dir", str(tmp_path))
    with pytest.raises(ConfigError, match=r"^--cache-dir .*"):
        parse("--mix", "r2e=0.5,toy=0.5", "--cache-dir", str(tmp_path / "missing"))
    assert parse("--mix", "gmsh=0.5,toy=0.5", "--cache-dir", str(tmp_path / "store")).cache_dir is not None


def test_the_report_draws_every_reward_figure_of_a_mixed_env():
    rows = [{"step": 1, "train/reward": 0.1, "train/r2e/groups": 2.0, "train/r2e/reward_mean": 0.0,
             "train/r2e/reward_std": 0.0, "train/r2e/heldout_reward": 0.5, "val/r2e/reward_mean": 0.3}]
    found = {p.title: p.keys for p in panels(rows)}
    assert found["Mixed env r2e"] == ["train/r2e/reward_mean", "train/r2e/heldout_reward", "train/r2e/reward_std",
                                      "val/r2e/reward_mean"]  # the mean first, the held-out mean last


def test_each_env_sees_every_scenario_once_per_epoch():
    scenarios = _scenarios({"a": 6, "b": 4})
    cursor = MixCursor.restore({}, {"a": 0.5, "b": 0.5})
    seen: list[str] = []
    for _ in range(6):
        batch, cursor = cursor.take(scenarios, 2, seed=0)
        seen += [s.id for s in batch]
    a_ids = [i for i in seen if i.startswith("a/")]
    assert sorted(a_ids) == sorted(f"a/{i}" for i in range(6))  # six draws of a: its whole first epoch
    b_ids = [i for i in seen if i.startswith("b/")]
    assert sorted(b_ids[:4]) == sorted(f"b/{i}" for i in range(4)) and cursor.positions["b"].epoch == 1
    assert cursor.epoch == 0  # the run's epoch is its slowest env's
    assert "a epoch 0, position 6, 6 group(s)" in cursor.describe()


def test_an_env_smaller_than_its_share_of_a_step_goes_round_its_epochs():
    batch, position = EnvPosition().take(_scenarios({"a": 2}), 5, seed=0, env="a")
    assert len(batch) == 5 and position.epoch == 2 and position.drawn == 5
    assert sorted(s.id for s in batch[:2]) == ["a/0", "a/1"]


# ---- figures and demonstrations ----------------------------------------------------------------------------------


def test_step_figures_are_given_per_env_with_the_env_s_own_figures_prefixed_once():
    import art

    def group(scenario_id: str, *rewards: float, legal: float | None = None) -> art.TrajectoryGroup:
        metrics = {} if legal is None else {"legal": legal}
        return art.TrajectoryGroup([art.Trajectory(messages_and_choices=[{"role": "user", "content": "?"}], reward=r,
                                                   metrics=metrics) for r in rewards],
                                   metadata={"scenario_id": scenario_id})

    spec = mix_env("toy=0.5,openspiel=0.25,planner=0.25")
    figures = spec.step_metrics([group("toy/t1", 1.0, 0.0), group("toy/t2", 1.0, 1.0),
                                 group("openspiel/o1", 0.5, 0.5, legal=1.0)])
    assert figures["toy/groups"] == 2 and figures["openspiel/groups"] == 1 and figures["planner/groups"] == 0
    assert figures["toy/reward_mean"] == pytest.approx(0.75) and figures["toy/pass_rate"] == pytest.approx(0.75)
    assert figures["toy/zero_variance_group_share"] == pytest.approx(0.5)
    assert figures["openspiel/reward_mean"] == pytest.approx(0.5) and figures["openspiel/legal_rate"] == 1.0
    assert not [k for k in figures if k.startswith("planner/") and k != "planner/groups"]


def test_demonstrations_of_every_mixed_env_are_written_one_after_another(tmp_path):
    config = parse("--mix", "openspiel=0.5,planner=0.5", "--game-types", "tic_tac_toe", "--num-tasks-per-case", "4",
                   "--num-demos", "3", "--num-problems", "4", "--art-path", str(tmp_path))
    spec = mix_env(config.mix)
    spec.write_demos(config, tmp_path / "demos.jsonl")
    alone = {}
    for env in ("openspiel", "planner"):
        get_env(env).write_demos(env_config(config, env), tmp_path / f"{env}.jsonl")  # the env alone
        alone[env] = (tmp_path / f"{env}.jsonl").read_text().splitlines()
    assert (tmp_path / "demos.jsonl").read_text().splitlines() == alone["openspiel"] + alone["planner"]
    assert len(alone["openspiel"]) == 3 and alone["planner"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no parts left behind
    assert mix_env("toy=1").write_demos is None and spec.runs_model_code is False
    assert mix_env("toy=0.5,workflow=0.5").runs_model_code is True


# ---- train.py ------------------------------------------------------------------------------------------------------


def _expected_batches(art_path: Path, flags: list[str], steps: int) -> tuple[list[list[str]], dict]:
    """What the cursor must hand out, computed in-process from the same flags: (each step's env/id, last cursor)."""
    config = config_from_args(["--experiment-name", "expected", "--art-path", str(art_path), "--base-model",
                               "tiny-random", *flags])
    spec = mix_env(str(config.mix))
    scenarios, cursor, batches = spec.load_scenarios(config), spec.make_cursor({}), []
    for _ in range(steps):
        batch, cursor = cursor.take(scenarios, config.groups_per_step, config.seed)
        batches.append(sorted(s.id for s in batch))
    return batches, dataclasses.asdict(cursor)


def _logged_batches(log_dir: Path, steps: int) -> list[list[str]]:
    """Each step's groups as `<env>/<id>`, read back from the step logs (one file per rollout)."""
    batches = []
    for step in range(1, steps + 1):
        groups: Counter[str] = Counter()
        for path in (log_dir / f"step_{step:04d}").glob("*.jsonl"):
            meta = json.loads(path.read_text().splitlines()[0])["environment_kwargs"]
            env = next(line.removeprefix("mix: env ") for line in meta["logs"] if line.startswith("mix: env "))
            groups[f"{env}/{meta['scenario_id']}"] += 1
        batches.append(sorted(k for k, n in groups.items() for _ in range(n // 2)))  # 2 rollouts per group
    return batches


@pytest.mark.slow
def test_two_step_mixed_run_logs_every_env_and_evaluates_each(tmp_path):
    flags = [*MIX3, "--max-training-steps", "2", "--groups-per-step", "4", "--rollouts-per-group", "2",
             "--max-tokens", "32", "--log-sample-rate", "1"]
    started = time.monotonic()
    result = run_train(tmp_path, "mixed", *flags, "--eval-before-after")
    wall = time.monotonic() - started
    assert_clean_exit(result)
    assert history_steps(tmp_path, "mixed") == [0, 1, 2, 2]  # eval before, two steps, eval after
    rows = history_rows(tmp_path, "mixed")
    train, evals = [r for r in rows if "train/reward" in r], [r for r in rows if "val/reward" in r]
    for env in ("toy", "openspiel", "planner"):
        assert all(f"train/{env}/groups" in r for r in train), env
        assert all(f"val/{env}/reward_mean" in r and f"val/{env}/groups" in r for r in evals), env
    assert all(sum(r[f"train/{e}/groups"] for e in ("toy", "openspiel", "planner")) == 4 for r in train)
    assert sum(r["train/toy/groups"] for r in train) == 4  # half of 2 x 4 groups
    assert "train/openspiel/legal_rate" in train[0] and "train/planner/format_ok_rate" in train[0]
    assert evals[0]["val/toy/groups"] == 8 and evals[0]["val/openspiel/groups"] == 2  # every env's held-out set
    expected, cursor = _expected_batches(tmp_path / "expected", flags, 2)
    assert _logged_batches(tmp_path / "logs" / "mixed", 2) == expected
    assert read_state(tmp_path, "mixed")["cursor"] == cursor
    report = (tmp_path / "logs" / "mixed" / "report.html").read_text()
    assert all(f"Mixed env {env}" in report for env in ("toy", "openspiel", "planner"))
    print(f"two-step mixed run: {wall:.1f} s wall")


@pytest.mark.slow
def test_every_env_cursor_survives_kill_9_and_resume(tmp_path):
    steps = 5
    flags = ["--mix", "toy=0.6,openspiel=0.4", "--game-types", "tic_tac_toe", "--num-tasks-per-case", "6",
             "--dataset-size", "6", "--groups-per-step", "3", "--rollouts-per-group", "2", "--max-tokens", "8",
             "--log-sample-rate", "1", "--max-training-steps", str(steps)]
    checkpoint = model_dir(tmp_path, "crash") / "checkpoints"
    kills = [
        kill_when(tmp_path, "crash", flags, lambda: True, 0.05, start_wait=300, ready_wait=0, after=("step 1:",)),
        kill_when(tmp_path, "crash", flags, lambda: (checkpoint / "0003").is_dir(), 0.0, start_wait=300,
                  ready_wait=300),  # before its commit
    ]
    assert [kill["killed_alive"] for kill in kills] == [True, True]
    done = run_train(tmp_path, "crash", *flags)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resume: starting after step" in done.stdout and "(mix epoch " in done.stdout
    assert history_steps(tmp_path, "crash") == list(range(1, steps + 1))
    expected, cursor = _expected_batches(tmp_path / "expected", flags, steps)
    assert read_state(tmp_path, "crash")["cursor"] == cursor  # every env's position and count, as if never killed
    assert _logged_batches(tmp_path / "logs" / "crash", steps) == expected  # each step's groups, none repeated
    assert cursor["positions"]["toy"]["drawn"] == 9 and cursor["positions"]["openspiel"]["drawn"] == 6
