"""`python -m envs.workflow tasks --out F.parquet [--split train|val] [--seed S] [--dataset-size N]
[--domain-ratios R] [--dataset FILE]`: the tasks a run trains (or evaluates) on, in verl's parquet layout
(envs/verl_layout.py), each answer as `reward_model.ground_truth` (a code task's: JSON of its entry point and
tests). With the same flags and seed as train.py, exactly that run's tasks.
"""

from __future__ import annotations

import sys

from entry_point import OneLineParser


def main(argv: list[str] | None = None) -> int:
    from envs.verl_layout import add_tasks_command, run_tasks
    from envs.workflow.data import verl_rows
    from envs.workflow.options import WorkflowOptions

    parser = OneLineParser(prog="python -m envs.workflow", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    add_tasks_command(sub, WorkflowOptions, only=("domain_ratios", "workflow_time_limit", "max_executor_calls"))
    args = parser.parse_args(argv)
    return run_tasks("workflow", args, verl_rows)


if __name__ == "__main__":
    sys.exit(main())
