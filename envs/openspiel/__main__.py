"""`python -m envs.openspiel tasks --out tasks.parquet [--split train|val|all] [--seed S] [game flags]` and
`python -m envs.openspiel demos --out F.jsonl [--split train|val|all] [--seed S] [game flags]`.

The game flags are train.py's (`--game-types`, `--num-tasks-per-case`, `--max-random-steps`, `--demo-policy`...),
so with the same flags and seed these are exactly the tasks a run trains and evaluates on.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from envs.openspiel.options import GameOptions
from envs.options import add_option_flags, build_options, check_options


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m envs.openspiel", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("tasks", "write the fixed task set as a verl parquet"),
                       ("demos", "write SFT demonstrations (OpenAI messages JSONL)")):
        command = sub.add_parser(name, help=text)
        command.add_argument("--out", type=Path, required=True)
        command.add_argument("--split", default="all" if name == "tasks" else "train", help="train, val or all")
        command.add_argument("--seed", type=int, default=0, help="as train.py's --seed: the same tasks")
        add_option_flags(command.add_argument_group("game"), GameOptions)
    args = parser.parse_args(argv)
    try:
        opts = build_options(GameOptions, vars(args))
        check_options(opts)
        if args.command == "tasks":
            from envs.openspiel.export import write_tasks

            count = write_tasks(args.out, opts, args.seed, args.split)
        else:
            from envs.openspiel.export import write_demos

            count = len(write_demos(args.out, opts, args.seed, args.split))
    except ValueError as exc:  # a bad flag value (EnvFlagError) or case
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {count} {args.command} to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
