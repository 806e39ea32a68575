"""`python -m envs.openspiel tasks --out tasks.parquet [--split train|val|all] [--seed S] [--dataset F] [game flags]`,
`python -m envs.openspiel demos --out F.jsonl [--split train|val|all] [--seed S] [game flags]`.

The game flags are train.py's (`--game-types`, `--num-tasks-per-case`, `--max-random-steps`, `--demo-policy`...),
so with the same flags and seed these are exactly the tasks a run trains and evaluates on.
"""

from __future__ import annotations

import sys
from pathlib import Path

from entry_point import OneLineParser
from envs.openspiel.options import GameOptions
from envs.options import add_option_flags, build_options, check_options


def main(argv: list[str] | None = None) -> int:
    from envs.verl_layout import add_tasks_command, run_tasks

    parser = OneLineParser(prog="python -m envs.openspiel", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    add_tasks_command(sub, GameOptions, splits=("train", "val", "all"), default_split="all")
    command = sub.add_parser("demos", help="write SFT demonstrations (OpenAI messages JSONL)")
    command.add_argument("--out", type=Path, required=True)
    command.add_argument("--split", default="train", help="train, val or all")
    command.add_argument("--seed", type=int, default=0, help="as train.py's --seed: the same tasks")
    add_option_flags(command.add_argument_group("game"), GameOptions)
    args = parser.parse_args(argv)
    if args.command == "tasks":
        from envs.openspiel.export import verl_rows

        return run_tasks("openspiel", args, verl_rows)
    try:
        opts = build_options(GameOptions, vars(args))
        check_options(opts)
        from envs.openspiel.export import write_demos

        count = len(write_demos(args.out, opts, args.seed, args.split))
    except ValueError as exc:  # a bad flag value (EnvFlagError) or case
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {count} {args.command} to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
