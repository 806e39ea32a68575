"""A self-contained HTML report of a run: `python -m monitor.report logs/<experiment> [--art-path .art ...]`.

It reads at a glance: a headline block first (what ran, how the reward moved, where it was best), then one chart
per question, each holding figures of one unit only (a reward beside a count hides both), on a whole-step axis,
lines named in words: whether the run learned first, health, disk and service nodes last and collapsed (the
panels and their names: monitor/panels.py); then each held-out task's reward at each headline evaluation and a few
evaluation rollouts; then every logged rollout turn by turn. Charts come from ART's `history.jsonl` (plotly, with
plotly.js inlined so the file opens without a network); run facts from ART's `state.json` and checkpoint folder;
held-out intervals (90%, bootstrap over tasks), paired changes, the task table and evaluation rollouts from the
eval files (rollouts/eval_record.py; a run without them, an older one, shows none of these); the run's resolved
settings from the `config.toml` beside it (collapsed); rollouts from the RLM-format logs. Written at the end of
every `train.py` run too."""

from __future__ import annotations

import argparse
import html
import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
from jinja2 import Environment

from backends.atomic import DiskFull, atomic_write_text
from backends.checkpoints import best_val_step
from monitor.panels import UNIT_LABELS, Panel, label_of, panels, series
from rollouts.eval_record import RUN_ID, EvalRecord, read_records
from rollouts.intervals import PairedDifference, paired_difference

_CONTROL = {c: f"\\x{c:02x}" for c in range(32) if chr(c) not in "\t\n\r"}


def visible(text: Any) -> str:
    """Model text may hold control characters (an untrained model writes bytes at random): show them escaped."""
    return str(text).translate(_CONTROL)


_JINJA = Environment(autoescape=True)
_JINJA.filters["visible"] = visible
PAGE = _JINJA.from_string((Path(__file__).with_name("report.html.j2")).read_text())

RESOLVED_CONFIG = "config.toml"  # beside state.json; written by train.py at start (trainer/config_file.py)


def read_history(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _figure(rows: list[dict[str, Any]], panel: Panel, index: int) -> str:
    fig = go.Figure()
    steps: set[int] = set()
    drawn = [key for key in panel.keys if series(rows, key)[0]]
    labels = [label_of(key) for key in drawn]
    for key, label in zip(drawn, labels, strict=True):
        x, y = series(rows, key)
        steps |= set(x)
        # two keys a legend would name alike keep their keys; the hover box names the key history.jsonl holds
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=label if labels.count(label) == 1 else key,
                                 hovertemplate=f"step %{{x}}: %{{y:.4g}}<extra>{key}</extra>",
                                 line={"dash": "dot", "width": 1} if "_ci_" in key else None))  # a band's edge
    low, high = min(steps), max(steps)
    # whole steps only: integer ticks at a spacing of 1, 2, 5, 10, ... that keeps about ten labels
    dtick = next(d for d in (m * 10**e for e in range(8) for m in (1, 2, 5)) if (high - low) / d <= 10)
    fig.update_xaxes(title_text="step", tick0=0, dtick=dtick, tickformat="d", range=[low - 0.5, high + 0.5])
    fig.update_yaxes(title_text=UNIT_LABELS[panel.unit])
    if panel.unit == "rate":
        fig.update_yaxes(range=[-0.03, 1.03])
    fig.update_layout(height=320, margin={"t": 20, "b": 40, "l": 60, "r": 10}, showlegend=True,
                      legend={"orientation": "h", "y": -0.25})
    return fig.to_html(full_html=False, include_plotlyjs=index == 0, div_id=f"chart-{index}",
                       config={"displayModeBar": False})


def charts(rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    """One chart per panel with data; plotly.js is inlined once, in the first."""
    return [{"title": p.title, "unit": p.unit, "unit_label": UNIT_LABELS[p.unit], "section": p.section,
             "html": _figure(rows, p, i)} for i, p in enumerate(panels(rows))]


def learning_steps(rows: list[dict[str, Any]]) -> dict[str, int]:
    """The steps of the held-out evaluations a run sets out to compare, by label: before training, right after the
    SFT stage, and the last one (after RL).

    SFT steps are the rows that carry `loss/train` (ART's SFT metric); evaluation rows carry `val/reward_mean`."""
    evals = {r["step"] for r in rows if "val/reward_mean" in r}
    if not evals:
        return {}
    steps = {}
    if 0 in evals:
        steps["before training"] = 0
    sft_steps = [r["step"] for r in rows if "loss/train" in r]
    if sft_steps and max(sft_steps) in evals:
        steps["after SFT"] = max(sft_steps)
    last = max(evals)
    if last not in (0, max(sft_steps, default=-1)):
        steps[f"after RL (step {last})"] = last
    return steps


def learning_summary(rows: list[dict[str, Any]]) -> dict[str, float]:
    """The held-out reward before training, right after the SFT stage and at the end (what a run set out to show)."""
    evals = {r["step"]: r["val/reward_mean"] for r in rows if "val/reward_mean" in r}
    return {label: evals[step] for label, step in learning_steps(rows).items()}


@dataclass
class Figure:
    """One headline line: `value` (a plain number, or None) goes into the page as `data-value` for checks."""

    key: str
    label: str
    text: str
    value: float | str | None = None


def wall_seconds(rows: list[dict[str, Any]]) -> float:
    """ART's `time/wall_clock_sec` restarts at 0 in each process of a resumed run: add up each stretch's end."""
    total, last = 0.0, 0.0
    for value in (float(r["time/wall_clock_sec"]) for r in rows if "time/wall_clock_sec" in r):
        if value < last:
            total += last
        last = value
    return total + last


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min {secs} s" if minutes else f"{secs} s"


def _span(steps: list[int]) -> str:
    return f"step {steps[0]}" if len(steps) == 1 else f"steps {steps[0]}-{steps[-1]}"


def read_state(model_dir: Path) -> dict[str, Any]:
    return json.loads((model_dir / "state.json").read_text()) if (model_dir / "state.json").exists() else {}


def headline(rows: list[dict[str, Any]], model_dir: Path, log_dir: Path, rollouts: list[dict[str, Any]],
             records: dict[int, EvalRecord] | None = None) -> list[Figure]:
    """The headline figures; `records` (the run's eval files, by step) add intervals and paired changes."""
    records = records or {}
    state = read_state(model_dir)
    config = state.get("config") or {}
    first_meta = rollouts[0]["meta"] if rollouts else {}
    train = {int(r["step"]): r for r in rows if "train/reward_mean" in r or "train/reward" in r}
    sft = sorted({int(r["step"]) for r in rows if "loss/train" in r})
    evals = {int(r["step"]): r for r in rows if "val/reward_mean" in r}
    rl = sorted(train)
    figures = [
        Figure("experiment", "Experiment", html.escape(str(config.get("experiment_name") or log_dir.name))),
        Figure("env", "Environment", html.escape(str(config.get("env") or first_meta.get("env") or "?"))),
        Figure("base-model", "Base model", html.escape(str(config.get("base_model") or first_meta.get("model")
                                                           or "?"))),
        Figure("steps", "Steps", (f"{len(rl)} RL step(s) ({_span(rl)})" if rl else "no RL step")
               + (f" after {len(sft)} SFT epoch(s) ({_span(sft)})" if sft else ""), len(rl)),
    ]
    if rl:
        first, last = (float(train[s].get("train/reward_mean", train[s].get("train/reward"))) for s in (rl[0], rl[-1]))
        figures.append(Figure("train-reward", "Train reward (mean per step)",
                              f'<span class="figure">{first:.3f}</span> (step {rl[0]}) &rarr; '
                              f'<span class="figure">{last:.3f}</span> (step {rl[-1]})', f"{first:.6g} {last:.6g}"))
    summary, stages = learning_summary(rows), learning_steps(rows)
    if summary:
        text = " &rarr; ".join(f'{html.escape(label)} <span class="figure">{value:.3f}</span>'
                               + _ci_text(records.get(stages[label])) for label, value in summary.items())
        figures.append(Figure("learning", "Held-out reward", text, " ".join(f"{v:.6g}" for v in summary.values())))
    if changes := paired_changes(stages, records):
        figures.append(Figure("paired", "Held-out change (paired over tasks)", "; ".join(
            f"{html.escape(c.label)}: " + (f'<span class="figure">{c.diff.mean:+.3f}</span> '
                                           f'<span class="ci">[90% CI {c.diff.low:+.3f}, {c.diff.high:+.3f}]</span>'
                                           f" over {c.diff.n} task(s)" if c.diff.n else
                                           '<span class="muted">no task scored in both</span>') for c in changes),
            " ".join(f"{c.diff.mean:.6g}" for c in changes)))
    best = best_val_step(model_dir)
    if best is not None:
        top = max(float(r["val/reward"]) for r in rows if "val/reward" in r)
        ties = sorted({int(r["step"]) for r in rows if "val/reward" in r and float(r["val/reward"]) == top})
        tie = f"; steps {', '.join(map(str, ties))} tie, the first counts" if len(ties) > 1 else ""
        figures.append(Figure("best-step", "Best step", f'<span class="figure">{best}</span> '
                              f"(held-out reward {top:.3f}{tie}; kept as a checkpoint)", best))
    elif rl:
        best = max(rl, key=lambda s: float(train[s].get("train/reward_mean", train[s].get("train/reward"))))
        figures.append(Figure("best-step", "Best step", f'<span class="figure">{best}</span> '
                              "(by train reward; no evaluation ran)", best))
    if evals:
        at = max(evals)
        pass_rate = evals[at].get("val/pass_rate")
        figures.append(Figure("eval-reward", "Eval reward (latest)", f'<span class="figure">'
                              f'{float(evals[at]["val/reward_mean"]):.3f}</span> at step {at}'
                              + (f", pass rate {float(pass_rate):.0%}" if pass_rate is not None else "")
                              + f" ({len(evals)} evaluation(s))", float(evals[at]["val/reward_mean"])))
    else:
        figures.append(Figure("eval-reward", "Eval reward", '<span class="muted">no evaluation ran</span>'))
    shares = [float(train[s]["train/zero_variance_group_share"]) for s in rl
              if "train/zero_variance_group_share" in train[s]]
    if shares:
        share = statistics.fmean(shares)
        figures.append(Figure("zero-variance", "Zero-variance groups", f'<span class="figure">{share:.0%}</span> '
                              "of groups over all RL steps (all rollouts scored alike: nothing to learn from)",
                              share))
    seconds = wall_seconds(rows)
    figures.append(Figure("reward-check", "Reward check", reward_check_text(state.get("reward_check"))))
    figures.append(Figure("wall-time", "Wall time", _duration(seconds) + " (trainer, over all resumed runs)",
                          round(seconds, 3)))
    folder = model_dir / "checkpoints"
    kept = sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []
    figures.append(Figure("checkpoints", "Checkpoints", (f"{len(kept)} kept: step(s) {', '.join(map(str, kept))} in "
                                                         f"<code>{html.escape(str(folder))}</code>")
                          if kept else "none kept", " ".join(map(str, kept))))
    return figures


def _ci_text(record: EvalRecord | None) -> str:
    """' [90% CI low, high]' of an evaluation's mean over tasks, or nothing (no eval file: an older run)."""
    if record is None or record.ci_low is None or record.ci_high is None:
        return ""
    return f' <span class="ci">[90% CI {record.ci_low:.3f}, {record.ci_high:.3f}]</span>'


@dataclass
class Change:
    """The paired difference between two consecutive headline evaluations, `label` naming them ("after SFT −
    before training")."""

    label: str
    diff: PairedDifference


def paired_changes(stages: dict[str, int], records: dict[int, EvalRecord]) -> list[Change]:
    """Each headline evaluation against the one before it (after SFT − before, after RL − after SFT), task by
    task; evaluations without an eval file are skipped."""
    kept = [(label, records[step]) for label, step in stages.items() if step in records]
    return [Change(f"{later} \u2212 {earlier}", paired_difference(a.rewards, b.rewards))
            for (earlier, a), (later, b) in zip(kept, kept[1:], strict=False)]


@dataclass
class TaskRow:
    """One held-out task: its mean reward at each headline evaluation (None: not scored there), and the change from
    the first to the last (None unless both scored it)."""

    task: str
    values: list[float | None]
    change: float | None


@dataclass
class TaskTable:
    """The report's per-task table: one column per headline evaluation with an eval file."""

    columns: list[str]
    rows: list[TaskRow]
    means: list[float | None]  # over the tasks each evaluation scored, as its interval is


def task_table(stages: dict[str, int], records: dict[int, EvalRecord]) -> TaskTable | None:
    """The per-task table of the headline evaluations that have eval files; None when none has (older runs)."""
    kept = [(label, records[step]) for label, step in stages.items() if step in records]
    if not kept:
        return None
    rows = []
    for task in sorted({task for _, r in kept for task in r.rewards}):
        values = [r.rewards.get(task) for _, r in kept]
        first, last = values[0], values[-1]
        change = last - first if len(values) > 1 and first is not None and last is not None else None
        rows.append(TaskRow(task, values, change))
    return TaskTable([label for label, _ in kept], rows, [r.mean for _, r in kept])


def eval_rollouts(stages: dict[str, int], records: dict[int, EvalRecord]) -> list[dict[str, Any]]:
    """The rollouts each headline evaluation kept (the same tasks each time), labelled with the evaluation."""
    return [{"label": label, "step": step, "scenario": r.scenario, "reward": r.reward, "text": r.text}
            for label, step in stages.items() if step in records for r in records[step].rollouts]


def reward_check_text(record: Any) -> str:
    """One line for state.json's `reward_check` (trainer/reward_check.py): skipped, failed with its reason, or each
    env's worst oracle, do-nothing and best cheat."""
    if not isinstance(record, dict) or not record:
        return '<span class="muted">not run</span>'
    if record.get("skipped") and "passed" not in record:
        return '<span class="muted">skipped (--skip-reward-check)</span>'
    if not record.get("passed"):
        return f'<span class="short">failed</span>: {html.escape(str(record.get("failure")))}'

    def num(value: Any) -> str:
        return "-" if value is None else f"{float(value):.3f}"

    parts = []
    for env, s in (record.get("envs") or {}).items():
        oracle = "no oracle" if s.get("oracle_min") is None else f"oracle {num(s.get('oracle_min'))}"
        cheat = (f", best cheat {num(s.get('best_cheat'))} ({html.escape(str(s.get('best_cheat_name')))})"
                 if s.get("best_cheat_name") else "")
        parts.append(f"{html.escape(env)}: {oracle}, do-nothing {num(s.get('nothing_max'))}{cheat} on "
                     f"{len(s.get('scenarios') or [])} scenario(s)" + (f" ({html.escape(s['note'])})"
                                                                       if s.get("note") else ""))
    return '<span class="figure">separated</span>' + ("; " + "; ".join(parts) if parts else "")


def _prompt_text(prompt: Any) -> str:
    if isinstance(prompt, list):
        return "\n\n".join(f"[{m.get('role')}] {m.get('content')}" if isinstance(m, dict) else str(m) for m in prompt)
    return str(prompt)


def read_rollouts(log_dir: Path, limit: int = 200) -> tuple[list[dict[str, Any]], int]:
    """The last `limit` logged rollouts, each with every turn it logged and the turn count the rollout recorded."""
    paths = sorted(log_dir.glob("step_*/*.jsonl"))
    rollouts = []
    for path in paths[-limit:]:
        try:
            lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        except json.JSONDecodeError:
            continue
        head = lines[0] if lines else {}
        meta = head.get("environment_kwargs", {})
        turns = [line | {"prompt_text": _prompt_text(line.get("prompt"))}
                 for line in lines if line.get("type") == "iteration"]
        recorded = head.get("turns")
        rollouts.append({"step": meta.get("step"), "scenario": meta.get("scenario_id", path.stem), "meta": meta,
                         "reward": float(meta.get("reward", 0.0)), "breakdown": meta.get("reward_breakdown", {}),
                         "turns": turns, "turns_recorded": recorded if isinstance(recorded, int) else len(turns)})
    return rollouts, len(paths)


def resolved_config(model_dir: Path) -> tuple[Path, str] | None:
    """The run's resolved config as train.py wrote it at start (trainer/config_file.py), or None (older runs)."""
    path = model_dir / RESOLVED_CONFIG
    try:
        return path, path.read_text(errors="replace")
    except OSError:
        return None


def write_report(log_dir: Path, history: Path, out: Path | None = None) -> Path:
    rows = read_history(history)
    out = out or log_dir / "report.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    rollouts, total = read_rollouts(log_dir)
    records = read_records(log_dir, read_state(history.parent).get(RUN_ID))
    stages = learning_steps(rows)
    page = PAGE.render(title=f"Run report: {log_dir.name}", history=history, log_dir=log_dir,
                       headline=headline(rows, history.parent, log_dir, rollouts, records), panels=charts(rows),
                       rollouts=rollouts, rollouts_total=total, config=resolved_config(history.parent),
                       tasks=task_table(stages, records), eval_rollouts=eval_rollouts(stages, records))
    atomic_write_text(out, page)
    return out


class OneLineParser(argparse.ArgumentParser):
    """argparse, but bad input is one line on stderr naming the argument (the usage text buries the reason)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m monitor.report", description=__doc__.split("\n\n")[0],
                           epilog="exit status: 0 the report was written; 1 the disk is full; 2 bad input (no "
                                  "history for LOG_DIR, an --out that cannot be written)")
    parser.add_argument("log_dir", type=Path, metavar="LOG_DIR", help="logs/<experiment>")
    parser.add_argument("--art-path", default=".art")
    parser.add_argument("--project", default="art-agent-trainer")
    parser.add_argument("--model-name", default=None, help="default: the log folder's name (the experiment)")
    parser.add_argument("--out", type=Path, default=None, help="default: LOG_DIR/report.html")
    args = parser.parse_args(argv)
    history = Path(args.art_path) / args.project / "models" / (args.model_name or args.log_dir.name) / "history.jsonl"
    if not history.exists():
        parser.error(f"LOG_DIR {args.log_dir}: no history at {history} (check --art-path / --project / --model-name)")
    try:
        written = write_report(args.log_dir, history, args.out)
    except DiskFull as exc:  # not bad input, but still one line
        parser.exit(1, f"{parser.prog}: error: {exc}\n")
    except OSError as exc:  # a folder that cannot be written: one line, not a traceback
        where = f"--out {args.out}" if args.out else f"LOG_DIR {args.log_dir}"
        parser.error(f"{where}: cannot write the report ({exc.strerror or exc})")
    print(f"wrote {written}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
