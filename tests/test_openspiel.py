"""The `openspiel` env: cases and their checks, seeded tasks, the move format, legal and outcome rewards on
hand-checked tic_tac_toe positions, move and whole-game rollouts, the exports, and a 2-step CPU run."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

import pytest
from openai.types.chat.chat_completion import ChatCompletionMessage, Choice

from envs.openspiel.cases import DEFAULT_CASES, CaseError, check_case, resolve_cases
from envs.openspiel.moves import parse_move
from envs.openspiel.options import GameOptions, split_cases
from envs.openspiel.playouts import PlayoutPool
from envs.openspiel.reward import Playout, legal_reward, outcome_reward, play_out
from envs.openspiel.tasks import load_tasks, replay, task
from rollouts.context import RolloutSettings
from tests.helpers import ROOT, history_steps, read_state, run_train, subprocess_env
from trainer.cli import config_from_args
from trainer.config import ConfigError

# x holds 0 and 1, o holds 3 and 4; x to move: 2 wins at once, anything else lets o win at 5 (o to move next).
#  x x .
#  o o .
#  . . .
X_TO_WIN = [0, 3, 1, 4]
TTT = GameOptions(game_types=("tic_tac_toe",), num_tasks_per_case=20, val_tasks_per_case=5)


def test_every_default_case_loads_in_the_installed_openspiel():
    for case in DEFAULT_CASES:
        game = check_case(case, "--game-cases")
        assert game.num_players() >= 1, case


def test_case_lists_split_only_on_commas_outside_parentheses():
    assert split_cases(["hex(board_size=5),dots_and_boxes(num_rows=3, num_cols=3)", "go"]) == [
        "hex(board_size=5)", "dots_and_boxes(num_rows=3,num_cols=3)", "go"]


def test_game_types_filter_the_case_list():
    assert resolve_cases(GameOptions()) == list(DEFAULT_CASES)  # empty: every case
    assert resolve_cases(GameOptions(game_types=("hex",))) == [
        "hex(board_size=5)", "hex(board_size=7)", "hex(board_size=9)"]
    # A full load string is that case (listed or not); duplicates go; types keep their order.
    assert resolve_cases(GameOptions(game_types=("go(board_size=9)", "hex(board_size=11)", "go(board_size=9)"))) == [
        "go(board_size=9)", "hex(board_size=11)"]
    # A short name the list lacks is the game with its default parameters.
    assert resolve_cases(GameOptions(game_types=("kuhn_poker",))) == ["kuhn_poker"]
    # --game-cases replaces the list the types select from.
    own = GameOptions(game_cases=("hex(board_size=3)", "tic_tac_toe"), game_types=("hex",))
    assert resolve_cases(own) == ["hex(board_size=3)"]
    assert resolve_cases(GameOptions(game_cases=("hex(board_size=3)", "tic_tac_toe"))) == [
        "hex(board_size=3)", "tic_tac_toe"]


def test_a_bad_case_string_is_one_line_naming_it_and_the_games():
    with pytest.raises(CaseError) as unknown:
        resolve_cases(GameOptions(game_cases=("hxe(board_size=5)",)))
    message = str(unknown.value)
    assert message.startswith("--game-cases 'hxe(board_size=5)': OpenSpiel has no game 'hxe'; games: ")
    assert "tic_tac_toe" in message and "\n" not in message
    with pytest.raises(CaseError, match=r"--game-types 'hex\(board_sze=5\)': Unknown parameter 'board_sze'"):
        resolve_cases(GameOptions(game_types=("hex(board_sze=5)",)))
    with pytest.raises(CaseError, match="simultaneous-move games are not supported"):
        resolve_cases(GameOptions(game_types=("goofspiel(num_cards=4)",)))


def test_train_py_stops_on_a_bad_case_with_one_line_and_exit_2(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "train.py"), "--experiment-name", "x", "--env", "openspiel",
                           "--game-types", "tic_tac_toe,hex(board_size=5", "--art-path", str(tmp_path)],
                          capture_output=True, text=True, env=subprocess_env(), cwd=ROOT, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: --game-types 'hex(board_size=5': Missing closing bracket ')'."]


def test_game_flags_belong_to_the_openspiel_env_and_are_checked():
    config = config_from_args(["--experiment-name", "x", "--env", "openspiel", "--game-types", "tic_tac_toe",
                               "--num-tasks-per-case", "3"])
    assert config.env_options.game_types == ("tic_tac_toe",) and config.env_options.num_tasks_per_case == 3
    with pytest.raises(ConfigError, match="--game-types belongs to --env openspiel"):
        config_from_args(["--experiment-name", "x", "--env", "toy", "--game-types", "hex"])
    with pytest.raises(ConfigError, match="--num-tasks-per-case must be at least 1, got 0"):
        config_from_args(["--experiment-name", "x", "--env", "openspiel", "--num-tasks-per-case", "0"])


def test_task_ids_give_the_same_states_in_another_process():
    here = [(t.id, t.data["history"]) for t in load_tasks(TTT, 7)]
    code = ("import json, sys; sys.path.insert(0, '.')\nfrom envs.openspiel.options import GameOptions\n"
            "from envs.openspiel.tasks import load_tasks\n"
            "o = GameOptions(game_types=('tic_tac_toe',), num_tasks_per_case=20)\n"
            "print(json.dumps([(t.id, t.data['history']) for t in load_tasks(o, 7)]))")
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True,
                           env={**subprocess_env(), "PYTHONHASHSEED": "12345"})
    assert [tuple(x) for x in json.loads(there.stdout)] == [(i, h) for i, h in here]
    assert here[3][0] == "openspiel-tic_tac_toe-s10"  # task i of a case uses seed base + i
    assert len({tuple(h) for _, h in here}) > 10  # the seeds really vary the states
    assert [t.data["history"] for t in load_tasks(TTT, 8)][:19] == [h for _, h in here][1:]


def test_tasks_never_show_a_terminal_or_chance_state():
    for case, steps in (("tic_tac_toe", 9), ("kuhn_poker", 3), ("connect_four", 40)):
        for seed in range(30):
            scenario = task(case, seed, steps)
            state = replay(case, scenario.data["history"])
            assert not state.is_terminal() and not state.is_chance_node(), (case, seed)
            assert state.current_player() == scenario.data["player"]


def test_held_out_tasks_show_no_train_state():
    for options, size in ((TTT, 5), (GameOptions(game_types=("tic_tac_toe",)), 20)):  # the second: the default
        train = {tuple(t.data["history"]) for t in load_tasks(options, 0, "train")}
        val = load_tasks(options, 0, "val")
        assert len(val) == size and not train & {tuple(t.data["history"]) for t in val}


def test_the_default_held_out_size_hashes_as_the_old_default_and_others_as_given():
    assert GameOptions().hash_view()[1]["val_tasks_per_case"] == 10  # runs made when 10 was the default resume
    assert GameOptions(val_tasks_per_case=32).hash_view()[1]["val_tasks_per_case"] == 32


def test_answers_parse_leniently_in_form_and_strictly_in_meaning():
    legal = {0: "o(0,0)", 1: "o(0,1)", 7: "o(2,1)"}
    assert parse_move("move: 1", legal).action == 1
    assert parse_move("  MOVE :  7.\n", legal).action == 7
    assert parse_move("**Move:** `O(0, 0)`", legal).action == 0
    assert parse_move("thinking... move: 7\nmove: 1", legal).action == 1  # the last move line counts
    assert parse_move("move: 4", legal).status == "illegal"  # a real cell, but taken
    assert parse_move("move: 1 or 7", legal).status == "illegal"  # no guessing
    assert parse_move("move: x(0,0)", legal).status == "illegal"  # the other player's piece
    for garbage in ("", "1", "I would play the centre", "move", "\x00\x01 move\n"):
        assert parse_move(garbage, legal).status == "unparsable", garbage


def test_legal_reward_on_a_hand_checked_position():
    state = replay("tic_tac_toe", X_TO_WIN)
    legal = {a: state.action_to_string(0, a) for a in state.legal_actions()}
    assert legal_reward(parse_move("move: 2", legal).status) == (1.0, {"legal": 1.0, "parsed": 1.0})
    assert legal_reward(parse_move("move: 3", legal).status) == (0.0, {"legal": 0.0, "parsed": 1.0})
    assert legal_reward(parse_move("no idea", legal).status) == (0.0, {"legal": 0.0, "parsed": 0.0})


@pytest.mark.parametrize("opponent", ["random", "mcts"])
@pytest.mark.parametrize("own", ["random", "mcts"])
def test_a_winning_move_scores_1_in_outcome_mode_against_any_opponent(opponent, own):
    values = [play_out(Playout("tic_tac_toe", (*X_TO_WIN, 2), 0, opponent, own, seed, 32)) for seed in range(3)]
    assert outcome_reward("legal", values)[0] == 1.0


def test_outcome_mode_scores_a_blunder_against_mcts_as_a_loss_and_a_draw_as_half():
    blunder = [play_out(Playout("tic_tac_toe", (*X_TO_WIN, 8), 0, "mcts", "random", s, 200)) for s in range(3)]
    assert blunder == [0.0, 0.0, 0.0]  # o completes 3-4-5
    # x o x / x o o / o x . : x to move at 8 draws (the board fills with no line).
    draw = play_out(Playout("tic_tac_toe", (0, 1, 2, 4, 3, 5, 7, 6, 8), 0))
    assert draw == 0.5
    assert outcome_reward("illegal", [1.0]) == (0.0, {"legal": 0.0, "parsed": 1.0, "outcome": 0.0, "playouts": 0.0})


def test_playouts_are_seeded_and_the_pool_matches_the_thread():
    import asyncio

    options = GameOptions(playouts=4, opponent="random")

    async def score(workers: int) -> list[float]:
        pool = PlayoutPool(workers)
        try:
            await pool.start()  # what the env does before the first step when a run needs the pool
            return await pool.playouts("connect_four", [3, 3], 0, options, 11)
        finally:
            pool.close()

    in_thread = asyncio.run(score(0))
    assert in_thread == asyncio.run(score(1)) == asyncio.run(score(0))
    assert all(0.0 <= v <= 1.0 for v in in_thread)


# ---- rollouts with scripted replies: fault injection for the model's answers --------------------------------


def _choice(text: str) -> Choice:
    return Choice(index=0, finish_reason="stop", logprobs=None,
                  message=ChatCompletionMessage(role="assistant", content=text))


def first_legal(messages: list[dict[str, Any]]) -> str:
    """A player that answers the first legal id the last prompt lists, in the documented format."""
    ids = re.findall(r"^(\d+): ", str(messages[-1]["content"]), re.MULTILINE)
    return f"move: {ids[0]}"


@dataclass
class ScriptedContext:
    reply: Any  # messages -> the model's text
    options: GameOptions
    settings: RolloutSettings = field(default_factory=lambda: RolloutSettings(max_steps=20, max_tokens_per_turn=16))
    count_tokens: Any = None
    calls: int = 0
    services: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from envs.openspiel.rollout import GameRuntime

        self.services = {"openspiel": GameRuntime(self.options, PlayoutPool(0))}

    async def complete(self, messages: list[dict[str, Any]], max_tokens: int) -> Choice:
        self.calls += 1
        return _choice(self.reply(messages))


async def test_a_malformed_answer_scores_zero_and_is_logged_not_raised():
    from envs.openspiel.rollout import rollout
    from rollouts.logs import rlm_lines

    scenario = load_tasks(TTT, 0)[1]
    for mode in ("legal", "outcome"):
        ctx = ScriptedContext(lambda m: "\x00 I refuse ```move```", GameOptions(reward_mode=mode))
        trajectory = await rollout(ctx, scenario)
        assert trajectory.reward == 0.0 and trajectory.metrics["parsed"] == 0.0
    lines = rlm_lines(trajectory, {"env": "openspiel"})
    assert [line["type"] for line in lines] == ["metadata", "iteration"]
    assert lines[1]["code_blocks"][0]["result"]["locals"]["status"] == "unparsable"
    good = await rollout(ScriptedContext(first_legal, GameOptions()), scenario)
    assert good.reward == 1.0 and good.metrics["legal"] == 1.0


async def test_whole_game_mode_plays_to_the_end_and_bounds_illegal_retries(tmp_path):
    from envs.openspiel.rollout import game_metrics, rollout
    from rollouts.logs import rlm_lines, validate_file

    options = GameOptions(game_mode="game", max_illegal_retries=2, opponent="random")
    scenario = task("tic_tac_toe", 0, 0)  # the empty board, x to move
    ctx = ScriptedContext(first_legal, options)
    played = await rollout(ctx, scenario)
    assert played.metrics["finished"] == 1.0 and played.metrics["illegal_answers"] == 0.0
    assert played.reward in (0.0, 0.5, 1.0) and played.metrics["moves"] == ctx.calls >= 3
    assert len(json.loads(played.metadata["rlm_turns"])) == ctx.calls  # one logged iteration per model turn
    log = tmp_path / "game.jsonl"
    log.write_text("".join(json.dumps(line) + "\n" for line in rlm_lines(played, {"env": "openspiel"})))
    assert validate_file(log) is None
    assert "game over" in json.loads(log.read_text().splitlines()[-1])["observation"]
    again = await rollout(ScriptedContext(first_legal, options), scenario)
    assert again.reward == played.reward  # the opponent is seeded by the position

    stubborn = ScriptedContext(lambda m: "move: 99", options)
    forfeit = await rollout(stubborn, scenario)
    assert stubborn.calls == 3 and forfeit.metrics["forfeit"] == 1.0 and forfeit.reward == 0.0
    assert forfeit.metrics["illegal_answers"] == 3.0 and forfeit.metrics["legal"] == 0.0
    figures = game_metrics([type("G", (), {"trajectories": [played, forfeit]})()])
    assert figures["openspiel/forfeit_rate"] == 0.5 and figures["openspiel/legal_rate"] == 0.5


async def test_whole_game_against_mcts_cut_by_the_turn_budget_is_scored_by_playouts():
    from envs.openspiel.rollout import rollout

    options = GameOptions(game_mode="game", opponent="mcts", mcts_simulations=16, playouts=2)
    ctx = ScriptedContext(first_legal, options, settings=RolloutSettings(max_steps=1, max_tokens_per_turn=16))
    cut = await rollout(ctx, task("connect_four", 0, 0))
    assert ctx.calls == 1 and cut.metrics["truncated"] == 1.0 and 0.0 <= cut.reward <= 1.0


# ---- exports -----------------------------------------------------------------------------------------------


def test_tasks_export_writes_the_verl_layout(tmp_path):
    import pyarrow.parquet as pq

    out = tmp_path / "tasks.parquet"
    done = subprocess.run([sys.executable, "-m", "envs.openspiel", "tasks", "--out", str(out), "--game-types",
                           "tic_tac_toe", "hex(board_size=5)", "--num-tasks-per-case", "3", "--val-tasks-per-case",
                           "2"], capture_output=True, text=True, cwd=ROOT, env=subprocess_env(), timeout=120)
    assert done.returncode == 0, done.stderr
    rows = pq.read_table(out).to_pylist()
    assert len(rows) == 2 * (3 + 2)
    assert {r["data_source"] for r in rows} == {"openspiel/tic_tac_toe", "openspiel/hex"}
    first = rows[0]
    assert [m["role"] for m in first["prompt"]] == ["system", "user"]
    assert first["extra_info"]["env"] == "openspiel" and first["extra_info"]["task_id"] == "openspiel-tic_tac_toe-s0"
    truth = json.loads(first["reward_model"]["ground_truth"])
    state = replay(first["extra_info"]["case"], first["extra_info"]["history"])
    assert sorted(map(int, truth["legal_actions"])) == state.legal_actions()
    bad = subprocess.run([sys.executable, "-m", "envs.openspiel", "tasks", "--out", str(out), "--game-types", "nope"],
                         capture_output=True, text=True, cwd=ROOT, env=subprocess_env(), timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("error: --game-types 'nope': OpenSpiel has no game")


@pytest.mark.parametrize("policy", ["legal", "mcts"])
async def test_demonstrations_replay_through_the_real_env_at_full_score(tmp_path, policy):
    from envs.openspiel.rollout import rollout

    out = tmp_path / "demos.jsonl"
    done = subprocess.run([sys.executable, "-m", "envs.openspiel", "demos", "--out", str(out), "--game-types",
                           "tic_tac_toe", "--num-tasks-per-case", "6", "--demo-policy", policy],
                          capture_output=True, text=True, cwd=ROOT, env=subprocess_env(), timeout=120)
    assert done.returncode == 0, done.stderr
    demos = [json.loads(line) for line in out.read_text().splitlines()]
    scenarios = {s.id: s for s in load_tasks(GameOptions(game_types=("tic_tac_toe",), num_tasks_per_case=6), 0)}
    assert [d["metadata"]["scenario_id"] for d in demos] == list(scenarios)
    for demo in demos:
        scenario = scenarios[demo["metadata"]["scenario_id"]]
        assert demo["messages"][1]["content"] == scenario.prompt
        answer = demo["messages"][-1]["content"]
        trajectory = await rollout(ScriptedContext(lambda m, a=answer: a, GameOptions()), scenario)
        assert trajectory.reward == 1.0, (scenario.id, answer)


# ---- the trainer -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_step_cpu_run_on_tic_tac_toe_writes_state_logs_and_report(tmp_path):
    from tests.test_train_e2e import assert_clean_exit, validate_logs

    result = run_train(tmp_path, "ttt", "--env", "openspiel", "--game-types", "tic_tac_toe", "--max-training-steps",
                       "2", "--groups-per-step", "2", "--rollouts-per-group", "2", "--num-tasks-per-case", "4",
                       "--max-tokens", "8", "--log-sample-rate", "1")
    assert_clean_exit(result)
    assert history_steps(tmp_path, "ttt") == [1, 2] and read_state(tmp_path, "ttt")["step"] == 2
    logged = sorted((tmp_path / "logs" / "ttt").glob("step_*/openspiel_*.jsonl"))
    assert len(logged) == 2 * 2 * 2
    lines = [json.loads(line) for line in logged[0].read_text().splitlines()]
    assert [line["type"] for line in lines] == ["metadata", "iteration"]
    assert lines[0]["environment_kwargs"]["scenario_id"].startswith("openspiel-tic_tac_toe-s")
    assert validate_logs(tmp_path / "logs" / "ttt") == 0 and (tmp_path / "logs" / "ttt" / "report.html").exists()
