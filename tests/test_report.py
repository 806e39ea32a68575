"""The HTML report as a reader checks it: the headline figures are those of `history.jsonl`, each panel holds one
unit and says which, the step axis shows whole steps, and every logged rollout shows each of its turns."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from monitor.panels import UNIT_LABELS, label_of, panels, unit_of
from monitor.report import wall_seconds, write_report
from tests.helpers import ROOT, model_dir, run_train, subprocess_env

# What a reader knows each generic figure to be (env figures the test does not name are checked by their values).
UNIT = {
    **dict.fromkeys(["train/reward_mean", "train/reward_min", "train/reward_max", "val/reward_mean",
                     "train/heldout_reward", "train/demonstrated_reward"], "reward"),
    **dict.fromkeys(["train/finished_mean", "train/zero_variance_group_share", "train/exception_rate",
                     "val/pass_rate", "train/context_exhausted", "train/test_timed_out", "train/target_share"],
                    "rate"),
    **dict.fromkeys(["train/agent_steps_mean", "val/agent_steps_mean", "train/completion_tokens_mean",
                     "train/rollouts", "train/failed_rollouts", "train/trained_groups", "train/trained_sequences",
                     "train/num_gradient_steps", "train/dropped_too_long", "train/trained_tokens",
                     "train/health/child_processes", "train/health/stale_dirs_removed", "train/health/warnings",
                     "train/changed_files", "train/repl_restarts", "train/llm_queries", "train/trimmed_messages",
                     "train/tests_expected", "train/tests_matching", "train/reply_chars", "train/target_chars"],
                    "count"),
    **dict.fromkeys(["train/rollout_seconds_mean", "train/gather_seconds", "train/step_seconds",
                     "train/batch_wait_seconds", "train/train_seconds"], "seconds"),
    **dict.fromkeys(["train/off_policy_steps_mean", "train/off_policy_steps_max", "train/stale_groups_dropped"],
                    "count"),
    "train/health/trainer_rss_mb": "mb", "train/health/disk_free_gb": "gb", "train/health/rollout_root_gb": "gb",
    "train/loss": "loss", "loss/train": "loss", "train/grad_norm": "norm", "loss/grad_norm": "norm",
    "train/probs_corr": "corr",
}


def render_dom(page: Path) -> str:
    """Open the page in headless Chromium (Debian's package) and return the DOM after its scripts ran."""
    browser = shutil.which("chromium")
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: .ci/run installs Debian's chromium package")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    done = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           "--disable-background-networking", "--disable-component-update", "--disable-sync",
                           f"--user-data-dir={page.parent / 'chromium-profile'}", "--virtual-time-budget=5000",
                           "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    return done.stdout


def headline_values(page: str) -> dict[str, str]:
    return dict(re.findall(r'<dd id="h-([\w-]+)" data-value="([^"]*)"', page))


def panel_sections(page: str) -> list[tuple[str, str]]:
    """(declared unit, section markup) for each chart panel."""
    return re.findall(r'<section class="panel" data-unit="([^"]+)">(.*?)</section>', page, re.S)


def check_units(sections: list[tuple[str, str]], names_of, rows: list[dict]) -> None:
    """No panel mixes units: every line in a panel is of the panel's declared unit, and each line is drawn once.
    Legends name lines readably (`label_of`), never by their raw keys; the names are mapped back to keys here."""
    key_of = {label_of(k): k for r in rows for k in r}
    seen: list[str] = []
    for unit, body in sections:
        legends = names_of(body)
        assert legends, f"an empty {unit} panel"
        assert not [n for n in legends if n in key_of.values()], f"raw metric keys in a legend: {legends}"
        names = [key_of[n] for n in legends]
        seen += names
        for name in names:
            values = [float(r[name]) for r in rows if name in r]
            if name in UNIT:
                assert UNIT[name] == unit, f"{name} ({UNIT[name]}) drawn in a {unit} panel"
            elif unit == "rate":
                assert all(0 <= v <= 1 for v in values), name
            elif unit == "count":
                assert all(v >= 0 for v in values), name
            elif unit == "reward":
                assert "reward" in name, name
            elif unit == "seconds":  # per-node service figures (services/client.py) and other timings
                assert name.endswith(("_s", "_seconds")), name
            else:
                assert unit in ("ratio", "value"), f"{name}: a {unit} figure the test does not know"
        if unit == "value":
            assert len(names) == 1, f"figures of unknown units share a panel: {names}"
    assert len(seen) == len(set(seen)), "a figure is drawn in two panels"


def test_each_panel_holds_one_unit_and_the_axis_whole_steps(tmp_path):
    rows = [{"step": s, "train/reward_mean": -1 + s / 10, "train/reward_min": -1.0, "train/reward_max": 0.5,
             "train/zero_variance_group_share": 0.5, "train/agent_steps_mean": 2.5, "train/tests_matching": 1.0,
             "train/context_exhausted": 0.25, "train/density_ratio": 1.7, "train/min_quality": -0.4,
             "train/mystery": 3.5 + s, "train/gather_seconds": 4.0, "train/health/trainer_rss_mb": 900.0,
             "train/health/disk_free_gb": 60.0} for s in range(1, 24)]
    found = panels(rows)
    units = {k: p.unit for p in found for k in p.keys}
    assert units["train/density_ratio"] == "ratio" and units["train/context_exhausted"] == "rate"
    assert units["train/tests_matching"] == "count" and units["train/mystery"] == "value"
    assert [p.keys for p in found if "train/min_quality" in p.keys] == [["train/min_quality"]]
    page = write_report(tmp_path / "logs" / "x", tmp_path / "history.jsonl").read_text()
    assert page.count('class="panel"') == 0  # no history, no panels (and no crash)
    (tmp_path / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    page = write_report(tmp_path / "logs" / "x", tmp_path / "history.jsonl").read_text()
    sections = panel_sections(page)
    check_units(sections, lambda body: [json.loads(f'"{n}"') for n in re.findall(r'"name":"([^"]+)"', body)], rows)
    for _, body in sections:
        assert '"dtick":5' in body and '"tickformat":"d"' in body  # 23 steps: a label every 5 whole steps


def test_unit_of_reads_names_then_values():
    assert unit_of("train/rollout_seconds_mean", [3.0]) == "seconds"
    assert unit_of("train/gmsh/success_rate", [0.5]) == "rate"
    assert unit_of("train/groups_missing", [0.5]) == "count"
    assert unit_of("train/gmsh/mean_reward", [-1.0]) == "reward"
    assert unit_of("train/mesh_quality", [0.4]) == "rate" and unit_of("train/min_quality", [-1.0]) == "value"
    node = "train/nodes/gmsh/node0"
    assert [unit_of(f"{node}/{name}", [0.0]) for name in ("calls", "failed_calls", "latency_p95_s", "up")] == [
        "count", "count", "seconds", "rate"]
    assert unit_of("train/nodes/gmsh/nodes_up", [1.0]) == "count"


def test_service_node_figures_get_panels_of_their_own():
    rows = [{"step": 1, "train/no_code": 1.0, "train/nodes/gmsh/node0/calls": 4.0, "train/nodes/gmsh/node0/up": 1.0,
             "train/nodes/gmsh/node1/calls": 0.0}]
    found = {(p.title, p.unit): p.keys for p in panels(rows)}
    assert found[("Service nodes", "count")] == ["train/nodes/gmsh/node0/calls", "train/nodes/gmsh/node1/calls"]
    assert found[("Service nodes", "rate")] == ["train/nodes/gmsh/node0/up"]
    assert found[("Reward breakdown and env figures", "rate")] == ["train/no_code"]


def test_wall_time_adds_up_the_stretches_of_a_resumed_run():
    rows = [{"time/wall_clock_sec": t} for t in (5.0, 9.0, 2.0, 6.0)]
    assert wall_seconds(rows) == 15.0


@pytest.mark.slow
def test_report_of_a_gmsh_run_with_sft_and_evaluation_reads_right_in_a_browser(tmp_path):
    """gmsh, not r2e: its demonstrations fit the tiny model's 2048 positions, so the run has an SFT stage too."""
    run = run_train(tmp_path, "rep", "--env", "gmsh", "--sft-demos", "on", "--sft-epochs", "1", "--eval-before-after",
                    "--max-context-tokens", "3072", "--max-training-steps", "2", "--groups-per-step", "2",
                    "--rollouts-per-group", "2", "--max-steps", "2", "--max-tokens", "48", "--log-sample-rate", "1",
                    "--keep-checkpoints", "1")
    assert run.returncode == 0, run.stderr[-3000:]
    logs, folder = tmp_path / "logs" / "rep", model_dir(tmp_path, "rep")
    rows = [json.loads(line) for line in (folder / "history.jsonl").read_text().splitlines()]
    dom = render_dom(logs / "report.html")
    assert dom.find('id="headline"') < dom.find('id="charts"') < dom.find('id="rollouts"')

    # the headline, figure by figure, against history.jsonl
    shown = headline_values(dom)
    train = {r["step"]: r for r in rows if "train/reward_mean" in r}
    evals = {r["step"]: r for r in rows if "val/reward_mean" in r}
    sft = [r["step"] for r in rows if "loss/train" in r]
    assert sorted(train) == [2, 3] and sft == [1] and sorted(evals) == [0, 1, 3]
    assert shown["steps"] == "2"
    assert [float(v) for v in shown["train-reward"].split()] == pytest.approx(
        [train[2]["train/reward_mean"], train[3]["train/reward_mean"]], abs=1e-5)
    assert [float(v) for v in shown["learning"].split()] == pytest.approx(
        [evals[0]["val/reward_mean"], evals[1]["val/reward_mean"], evals[3]["val/reward_mean"]], abs=1e-5)
    best = max(evals.values(), key=lambda r: r["val/reward"])["step"]
    assert int(shown["best-step"]) == best
    assert float(shown["eval-reward"]) == pytest.approx(evals[3]["val/reward_mean"])
    assert float(shown["zero-variance"]) == pytest.approx(
        sum(r["train/zero_variance_group_share"] for r in train.values()) / 2)
    assert float(shown["wall-time"]) == pytest.approx(max(r["time/wall_clock_sec"] for r in rows), abs=0.01)
    kept = sorted(int(p.name) for p in (folder / "checkpoints").iterdir())
    assert [int(s) for s in shown["checkpoints"].split()] == kept
    for label in ("Experiment", "Environment", "Base model"):
        assert f"<dt>{label}</dt>" in dom
    assert '<dd id="h-env">gmsh</dd>' in dom and '<dd id="h-base-model">tiny-random</dd>' in dom

    # each evaluation kept its tasks: its interval in the headline, paired changes, a table column, its rollouts
    assert sorted(p.name for p in (logs / "eval").iterdir()) == ["step_0000.json", "step_0001.json", "step_0003.json"]
    assert "eval after SFT (step 1): reward" in run.stdout and "\n  vs after SFT: " in run.stdout
    assert len(shown["paired"].split()) == 2 and dom.count("[90% CI") == 3 + 2
    assert 'id="eval-tasks"' in dom and dom.count('class="eval-rollout"') == 3 * 3

    # panels: one unit each, said on the axis and in the title; whole steps on every step axis
    sections = panel_sections(dom)
    assert len(sections) >= 8 and all(body.count('class="main-svg"') >= 1 for _, body in sections)
    check_units(sections, lambda body: re.findall(r'class="legendtext"[^>]*>([^<]+)<', body), rows)
    for unit, body in sections:
        assert re.findall(r'class="ytitle"[^>]*>([^<]+)<', body) == [UNIT_LABELS[unit]]
        assert f"[{UNIT_LABELS[unit]}]" in body
        ticks = re.findall(r'<g class="xtick"><text[^>]*>([^<]+)</text>', body)
        assert ticks and all(t.isdigit() for t in ticks) and len(ticks) == len(set(ticks)), ticks

    # every logged rollout shows every turn, with the reply, its code (or that it had none) and the observation
    files = sorted(logs.glob("step_*/*.jsonl"))
    shown_rollouts = re.findall(r'<details class="rollout" data-turns="(\d+)"[^>]*>(.*?)</details>\s*(?=<details '
                                r'class="rollout"|</div>)', dom, re.S)
    assert len(files) == len(shown_rollouts) == 2 * 2 * 2
    for path, (turns, body) in zip(files, shown_rollouts, strict=True):
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        had = int(lines[0]["environment_kwargs"]["reward_breakdown"]["agent_steps"])
        assert int(turns) == had == body.count('<div class="turn">') == 2, path
        assert f"{had} turn(s)" in body and body.count("Reply:") == had
        assert body.count("No code block in this reply.") + body.count("Code:") >= had
        assert "Observation (what the agent got back)" in body


def test_learning_panels_come_first_and_health_disk_and_services_are_collapsed(tmp_path):
    """The report is read for whether the run learned: those panels lead; health, disk and service-node panels
    sit under one collapsed section; legends name each line in words, with the raw key in the hover box."""
    rows = [{"step": s, "train/health/trainer_rss_mb": 900.0, "train/nodes/gmsh/node0/calls": 4.0,
             "train/gather_seconds": 4.0, "train/loss": 0.5, "loss/train": 0.7, "val/pass_rate": 0.25,
             "val/reward_mean": 0.5, "train/reward_mean": 0.1 * s, "train/gmsh/success_rate": 0.5,
             "train/health/disk_free_gb": 60.0} for s in range(1, 4)]
    (tmp_path / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    page = write_report(tmp_path / "logs" / "x", tmp_path / "history.jsonl").read_text()
    titles = re.findall(r'<section class="panel" data-unit="[^"]+"><h3>(.*?) <span', page)
    assert titles == ["Train reward per step", "Held-out evaluation: reward", "Held-out evaluation: pass rate",
                      "RL policy loss", "SFT loss (per epoch)", "Reward breakdown and env figures", "Time per step",
                      "Trainer memory", "Disk", "Service nodes"]
    health = re.search(r'<details id="run-health">(.*?)</details>', page, re.S)
    assert health, "the health section is a collapsed <details> (no `open`)"
    assert re.findall(r"<h3>(.*?) <span", health.group(1)) == ["Trainer memory", "Disk", "Service nodes"]
    legends = [json.loads(f'"{n}"') for n in re.findall(r'"name":"([^"]+)"', page)]
    assert {"train reward (mean)", "held-out reward (mean)", "held-out pass rate", "RL policy loss", "SFT loss",
            "gathering rollouts", "gmsh: success rate", "trainer memory (RSS)", "disk free",
            "gmsh node0: calls"} == set(legends)
    hovers = [json.loads(f'"{h}"') for h in re.findall(r'"hovertemplate":"([^"]+)"', page)]
    assert "step %{x}: %{y:.4g}<extra>train/reward_mean</extra>" in hovers  # on hover, the key history.jsonl holds


def test_label_of_names_keys_in_words():
    assert label_of("train/reward_mean") == "train reward (mean)"
    assert label_of("val/toy/reward_mean") == "held-out toy: reward (mean)"
    assert label_of("train/nodes/gmsh/node0/latency_p95_s") == "gmsh node0: latency p95 (s)"
    assert label_of("train/health/open_files") == "open files" and label_of("train/no_code") == "no code"


def test_a_log_folder_without_history_is_one_line_on_stderr(tmp_path):
    done = subprocess.run([sys.executable, "-m", "monitor.report", "/nonexistent", "--art-path", str(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT, env=subprocess_env(), timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "LOG_DIR /nonexistent: no history at" in done.stderr, done.stderr


def staged_history(folder: Path) -> Path:
    """Evaluations before training (step 0), after one SFT epoch (step 1) and after two RL steps (step 3)."""
    rows = [{"step": 0, "val/reward_mean": 0.2}, {"step": 1, "loss/train": 0.7},
            {"step": 1, "val/reward_mean": 0.5}, {"step": 2, "train/reward_mean": 0.4},
            {"step": 3, "train/reward_mean": 0.6}, {"step": 3, "val/reward_mean": 0.8}]
    (folder / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder / "history.jsonl"


def test_a_report_with_eval_files_shows_intervals_paired_changes_each_task_and_eval_rollouts(tmp_path):
    from rollouts.eval_record import EvalRecord, EvalRollout, write_record

    history, logs = staged_history(tmp_path), tmp_path / "logs" / "x"
    (tmp_path / "state.json").write_text(json.dumps({"step": 3, "run_id": "r1"}))
    tasks = {0: {"a": 0.0, "b": 0.2, "c": 0.4}, 1: {"a": 0.5, "b": 0.5, "c": 0.5}, 3: {"a": 1.0, "b": 0.6}}
    for step, label in ((0, "before training"), (1, "after SFT"), (3, "after training")):
        write_record(logs, EvalRecord(step, label, tasks[step], 0.1 * step, 0.1 * step - 0.05, 0.1 * step + 0.05,
                                      [EvalRollout("a", tasks[step]["a"], f"[assistant] answer <{step}>")], "r1"))
    write_record(logs, EvalRecord(2, "at step 2", {"a": 9.0}, run_id="another run"))  # never shown
    page = write_report(logs, history).read_text()

    learning = re.search(r'<dd id="h-learning"[^>]*>(.*?)</dd>', page).group(1)
    assert [float(v) for v in headline_values(page)["learning"].split()] == [0.2, 0.5, 0.8]  # history's means
    assert re.findall(r"\[90% CI ([-\d.]+), ([-\d.]+)\]", learning) == [("-0.050", "0.050"), ("0.050", "0.150"),
                                                                       ("0.250", "0.350")]
    paired = re.search(r'<dd id="h-paired"[^>]*>(.*?)</dd>', page).group(1)
    assert [float(v) for v in headline_values(page)["paired"].split()] == pytest.approx([0.3, 0.3])
    assert "after SFT \u2212 before training" in paired and "after RL (step 3) \u2212 after SFT" in paired
    assert "over 3 task(s)" in paired and "over 2 task(s)" in paired and paired.count("[90% CI") == 2

    table = re.search(r'<table id="eval-tasks".*?</table>', page, re.S).group(0)
    assert re.findall(r"<th>([^<]+)</th>", table) == ["task", "before training", "after SFT",
                                                      "after RL (step 3)", "change"]
    cells = {task: re.findall(r"<td(?: class=\"\w+\")?>(?:<span[^>]*>)?([^<]+)<", row)
             for task, row in re.findall(r'<tr data-task="(\w)">(.*?)</tr>', table)}
    assert cells == {"a": ["0.000", "0.500", "1.000", "+1.000"], "b": ["0.200", "0.500", "0.600", "+0.400"],
                     "c": ["0.400", "0.500", "-", "-"]}  # c: no rollout of it scored after RL
    assert "9.000" not in table

    shown = re.findall(r'<details class="eval-rollout" data-step="(\d+)"><summary>(.*?)</summary>\s*<pre[^>]*>(.*?)'
                       r'</pre>', page, re.S)
    assert [s for s, _, _ in shown] == ["0", "1", "3"]
    assert "after SFT &middot; a &middot;" in shown[1][1] and "reward 0.500" in shown[1][1]
    assert shown[2][2] == "[assistant] answer &lt;3&gt;"  # model text is escaped
    assert page.find('id="charts"') < page.find('id="eval-tasks"') < page.find('id="eval-rollouts"') < page.find(
        'id="rollouts"')


def test_a_report_without_eval_files_still_renders_the_headline(tmp_path):
    """Runs from before the eval files: the held-out means as before, no interval, table or evaluation rollouts."""
    page = write_report(tmp_path / "logs" / "x", staged_history(tmp_path)).read_text()
    assert [float(v) for v in headline_values(page)["learning"].split()] == [0.2, 0.5, 0.8]
    assert "90% CI" not in page and 'id="h-paired"' not in page
    assert 'id="eval-tasks"' not in page and 'id="eval-rollouts"' not in page


def test_the_held_out_interval_is_drawn_beside_the_held_out_mean():
    rows = [{"step": s, "val/reward_mean": 0.5, "val/reward_ci_low": 0.3, "val/reward_ci_high": 0.7}
            for s in (0, 2)]
    found = [p for p in panels(rows) if p.title == "Held-out evaluation: reward"]
    assert found and found[0].keys == ["val/reward_mean", "val/reward_ci_low", "val/reward_ci_high"]
    assert label_of("val/reward_ci_low") == "held-out reward, 90% CI low"
