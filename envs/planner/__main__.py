"""`python -m envs.planner tasks --out F.parquet [--split train|val] [--seed S] [--num-problems N] [--dataset FILE]`:
the problems a run trains (or evaluates) on, in verl's parquet layout (envs/verl_layout.py), the exact answer as
`reward_model.ground_truth`. With the same flags and seed as train.py, exactly that run's problems.
"""

from __future__ import annotations

import sys

from entry_point import OneLineParser


def main(argv: list[str] | None = None) -> int:
    from envs.planner.options import PlannerOptions
    from envs.planner.problems import verl_rows
    from envs.verl_layout import add_tasks_command, run_tasks

    parser = OneLineParser(prog="python -m envs.planner", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    add_tasks_command(sub, PlannerOptions, only=("num_problems",))
    args = parser.parse_args(argv)
    return run_tasks("planner", args, verl_rows)


if __name__ == "__main__":
    sys.exit(main())
