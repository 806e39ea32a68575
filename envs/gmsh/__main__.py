"""`python -m envs.gmsh generate --out DIR [--seed S] [--train 20] [--val 20]`,
`python -m envs.gmsh score --geometry G --requirements R.json --script S.py [--url URL --token T]` and
`python -m envs.gmsh demos --out F.jsonl [--split train|heldout|all] [--count N] [--seed S] [--tasks-dir D]` and
`python -m envs.gmsh tasks --out F.parquet [--split train|val] [--seed S] [--dataset FILE]` (verl's layout; the
geometry files go to `geometry/` beside F).

`score` prints one JSON object {reward, breakdown, stats}; with no --url it starts and stops its own service.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import sys
from pathlib import Path

from entry_point import OneLineParser
from services.process import ServiceProcess


async def _score(args: argparse.Namespace, url: str, token: str) -> dict:
    from envs.gmsh.client import GmshClient
    from envs.gmsh.reward import gmsh_reward
    from envs.gmsh.wire import RunRequest

    requirements = json.loads(Path(args.requirements).read_text())
    bbox = requirements.get("bbox")
    if bbox is None:
        raise SystemExit("error: --requirements must hold 'bbox' (6 numbers) beside the task requirements")
    geometry = Path(args.geometry)
    request = RunRequest(script=Path(args.script).read_text(), timeout=args.timeout,
                         geometry_b64=base64.b64encode(geometry.read_bytes()).decode(),
                         geometry_name="geometry" + geometry.suffix)
    client = GmshClient([url], token)
    try:
        result = (await client.run(request)).model_dump()
    finally:
        await client.aclose()
    reward, breakdown = gmsh_reward(requirements, bbox, result)
    return {"reward": reward, "breakdown": breakdown, "stats": result["stats"], "error": result["error"]}


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m envs.gmsh", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="write a deterministic task set")
    gen.add_argument("--out", type=Path, required=True)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--train", type=int, default=20)
    gen.add_argument("--val", type=int, default=20, help="held-out tasks, drawn after the train ones")
    score = sub.add_parser("score", help="score one script without training")
    score.add_argument("--geometry", required=True)
    score.add_argument("--requirements", required=True, help="JSON: the task's requirements plus its bbox")
    score.add_argument("--script", required=True)
    score.add_argument("--url", default=None, help="a running gmsh service (default: start one)")
    score.add_argument("--token", default=os.environ.get("GMSH_SERVICE_TOKEN"))
    score.add_argument("--timeout", type=float, default=30.0)
    demos = sub.add_parser("demos", help="write SFT demonstrations (OpenAI messages JSONL), each proven at full score")
    demos.add_argument("--out", type=Path, required=True, help="the .jsonl file to write")
    demos.add_argument("--split", default="train", help="train (the tasks GRPO trains on), heldout (val), or all")
    demos.add_argument("--count", type=int, default=None, help="demos to write, in task order (default: all tasks)")
    demos.add_argument("--seed", type=int, default=0, help="as train.py's --seed: the same task set")
    demos.add_argument("--tasks-dir", type=Path, default=None,
                       help="task store to reuse, or to generate with --seed (default: a temp one)")
    demos.add_argument("--url", default=None, help="a running gmsh service to check the scripts (default: start one)")
    demos.add_argument("--token", default=os.environ.get("GMSH_SERVICE_TOKEN"))
    demos.add_argument("--no-verify", action="store_true", help="write every script without scoring it")
    from envs.verl_layout import add_tasks_command, run_tasks

    add_tasks_command(sub, None, cache_help="the generated task store to reuse, as train.py's --cache-dir "
                                            "(default: a temporary one)")
    args = parser.parse_args(argv)
    if args.command == "tasks":
        from envs.gmsh.tasks import verl_rows

        return run_tasks("gmsh", args, verl_rows)
    if args.command == "generate":
        from envs.gmsh.tasks import generate

        generate(args.out, args.seed, args.train, args.val)
        return 0
    if args.command == "demos":
        from envs.gmsh.demos import write_demos
        from rollouts.scenario import DatasetError

        try:
            written = write_demos(args.out, args.split, args.count, args.seed, args.tasks_dir, args.url, args.token,
                                  verify=not args.no_verify)
        except DatasetError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"{len(written)} demonstration(s) ({args.split}) in {args.out}")
        return 0
    for flag in ("geometry", "requirements", "script"):
        if not Path(getattr(args, flag)).is_file():
            print(f"error: --{flag} {getattr(args, flag)}: no such file", file=sys.stderr)
            return 2
    with contextlib.ExitStack() as stack:
        if args.url:
            url, token = args.url, args.token or ""
        else:
            service = stack.enter_context(ServiceProcess("envs.gmsh.service", "--workers", "1"))
            url, token = service.url, service.token
        print(json.dumps(asyncio.run(_score(args, url, token)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
