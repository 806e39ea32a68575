"""A self-contained HTML report of a run: `python -m rollouts.report logs/<experiment> [--art-path .art ...]`.

Charts come from ART's `history.jsonl` (plotly, with plotly.js inlined so the file opens without a network);
the browsable rollouts come from the RLM-format logs. Written at the end of every `train.py` run too.
"""

from __future__ import annotations

import argparse
import html
import json
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
from jinja2 import Environment

GENERIC = {"reward", "reward_mean", "reward_std", "reward_min", "reward_max", "exception_rate", "reward_std_dev",
           "rollouts", "failed_rollouts", "zero_variance_group_share", "finished_mean", "agent_steps_mean",
           "rollout_seconds_mean", "completion_tokens_mean", "gather_seconds", "step_seconds", "trained_groups",
           "epoch", "rollout_seconds", "completion_tokens", "agent_steps", "finished", "duration"}

PAGE = Environment(autoescape=True).from_string("""<!doctype html>
<html><head><meta charset="utf-8"><title>{{ title }}</title>
<style>
body{font-family:system-ui,sans-serif;margin:1.5em;max-width:1200px}
details{border:1px solid #ccc;border-radius:6px;margin:.4em 0;padding:.3em .6em}
summary{cursor:pointer} pre{background:#f6f6f6;padding:.5em;overflow-x:auto;white-space:pre-wrap}
.turn{border-left:3px solid #88a;padding-left:.6em;margin:.5em 0} .reward{font-weight:bold}
</style></head><body>
<h1>{{ title }}</h1>
{% if summary %}<p id="learning"><b>Held-out reward:</b>
{% for label, value in summary.items() %}{{ label }} <b>{{ "%.3f"|format(value) }}</b>
{% if not loop.last %} &rarr; {% endif %}{% endfor %}</p>{% endif %}
<p>{{ steps }} step(s) in <code>{{ history }}</code>;
{{ rollouts|length }} logged rollout(s) from <code>{{ log_dir }}</code>.</p>
<div id="charts">{{ charts|safe }}</div>
<h2>Logged rollouts</h2>
<div id="rollouts">
{% for r in rollouts %}<details class="rollout"><summary>step {{ r.step }} &middot; {{ r.scenario }} &middot;
<span class="reward">reward {{ "%.3f"|format(r.reward) }}</span> &middot; {{ r.turns|length }} turn(s)</summary>
<p>Breakdown: {% for k, v in r.breakdown.items() %}<code>{{ k }}={{ v }}</code> {% endfor %}</p>
{% for t in r.turns %}<div class="turn"><b>Turn {{ t.iteration }}</b>
<details><summary>prompt</summary><pre>{{ t.prompt }}</pre></details>
<p>Response:</p><pre>{{ t.response }}</pre>
{% for b in t.code_blocks %}<p>Code:</p><pre>{{ b.code }}</pre>
<p>Output:</p><pre>{{ b.result.stdout }}{{ b.result.stderr }}</pre>{% endfor %}
{% if t.final_answer %}<p>Final answer: <code>{{ t.final_answer }}</code></p>{% endif %}</div>{% endfor %}
</details>{% endfor %}
</div></body></html>""")


def read_history(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[key]) for r in rows if key in r]
    return [p[0] for p in points], [p[1] for p in points]


TRAINING = {"loss", "grad_norm", "num_gradient_steps", "trained_tokens", "trained_sequences", "probs_corr",
            "dropped_too_long"}


def _figure(rows: list[dict[str, Any]], title: str, keys: list[str], first: bool) -> str:
    fig = go.Figure()
    for key in keys:
        x, y = _series(rows, key)
        if x:
            fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=key))
    fig.update_layout(title=title, height=340, xaxis_title="step", margin={"t": 50, "b": 40})
    return fig.to_html(full_html=False, include_plotlyjs=first, div_id=f"chart-{len(title)}-{title[:6]}")


def charts(rows: list[dict[str, Any]]) -> str:
    """One chart per question a person asks of a run; plotly.js is inlined once, in the first."""
    keys = sorted({k for r in rows for k in r})
    train_own = [k for k in keys if k.startswith("train/") and "/" not in k[6:]]
    panels = [
        ("Reward per step", ["train/reward_mean", "train/reward_min", "train/reward_max", "val/reward",
                             "val/pass_rate"]),
        ("Reward breakdown (train means)", [k for k in train_own if k[6:] not in GENERIC | TRAINING]),
        ("Zero-variance group share", ["train/zero_variance_group_share"]),
        ("Rollout seconds and completion tokens", ["train/rollout_seconds_mean", "train/completion_tokens_mean"]),
        ("Training", [f"train/{k}" for k in sorted(TRAINING)]),
        ("SFT (per epoch)", ["loss/train", "loss/grad_norm", "loss/learning_rate"]),
        ("Health", [k for k in keys if "health/" in k]),
    ]
    return "\n".join(_figure(rows, title, panel_keys, i == 0) for i, (title, panel_keys) in enumerate(panels))


def learning_summary(rows: list[dict[str, Any]]) -> dict[str, float]:
    """The held-out reward before training, right after the SFT stage and at the end (what a run set out to show).

    SFT steps are the rows that carry `loss/train` (ART's SFT metric); evaluation rows carry `val/reward_mean`."""
    evals = {r["step"]: r["val/reward_mean"] for r in rows if "val/reward_mean" in r}
    if not evals:
        return {}
    summary = {}
    if 0 in evals:
        summary["before training"] = evals[0]
    sft_steps = [r["step"] for r in rows if "loss/train" in r]
    if sft_steps and max(sft_steps) in evals:
        summary["after SFT"] = evals[max(sft_steps)]
    last = max(evals)
    if last not in (0, max(sft_steps, default=-1)):
        summary[f"after RL (step {last})"] = evals[last]
    return summary


def read_rollouts(log_dir: Path, limit: int = 200) -> list[dict[str, Any]]:
    rollouts = []
    for path in sorted(log_dir.glob("step_*/*.jsonl"))[-limit:]:
        try:
            lines = [json.loads(line) for line in path.read_text().splitlines()]
        except json.JSONDecodeError:
            continue
        meta = lines[0].get("environment_kwargs", {}) if lines else {}
        rollouts.append({"step": meta.get("step"), "scenario": meta.get("scenario_id", path.stem),
                         "reward": float(meta.get("reward", 0.0)), "breakdown": meta.get("reward_breakdown", {}),
                         "turns": [line for line in lines if line.get("type") == "iteration"]})
    return rollouts


def write_report(log_dir: Path, history: Path, out: Path | None = None) -> Path:
    rows = read_history(history)
    out = out or log_dir / "report.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    page = PAGE.render(title=f"Run report: {html.escape(log_dir.name)}", steps=len({r['step'] for r in rows}),
                       history=history, log_dir=log_dir, charts=charts(rows), rollouts=read_rollouts(log_dir),
                       summary=learning_summary(rows))
    tmp = out.with_suffix(".tmp")
    tmp.write_text(page)
    tmp.replace(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rollouts.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("log_dir", type=Path, help="logs/<experiment>")
    parser.add_argument("--art-path", default=".art")
    parser.add_argument("--project", default="art-agent-trainer")
    parser.add_argument("--model-name", default=None, help="default: the log folder's name (the experiment)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    history = Path(args.art_path) / args.project / "models" / (args.model_name or args.log_dir.name) / "history.jsonl"
    if not history.exists():
        print(f"error: no history at {history} (check --art-path / --project / --model-name)")
        return 2
    print(f"wrote {write_report(args.log_dir, history, args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
