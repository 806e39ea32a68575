"""`python -m envs.r2e cache ...` builds the repo cache; `python -m envs.r2e score ...` scores changed files;
`python -m envs.r2e demos ...` writes SFT demonstrations of the bundled samples; `python -m envs.r2e images` builds
R2E-style Docker images of the bundled samples offline (envs/r2e/images.py).

cache: --cache-dir D (--from-samples | --split S [--dataset FILE] --max-entries N [--skip-existing] [--dry-run])
score: --cache-dir D --dataset FILE --instance-id ID --files DIR  -> {reward, partial, tests, ignored_files}
demos: --out F.jsonl [--split train|heldout|all] [--cache-dir D] [--system-prompt P]
images: [--image-cache D] [--rows-out F.jsonl] [--mirror URL]  -> rows whose docker_image are the built images
tasks: --out F.parquet [--split train|val] [--dataset FILE | --r2e-tasks generated] [--system-prompt P]  -> verl rows
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from entry_point import OneLineParser
from rollouts.scenario import DatasetError

if TYPE_CHECKING:
    from envs.r2e.data import R2ERow


async def _score(args: argparse.Namespace, row: R2ERow, url: str, token: str) -> dict:
    from envs.r2e.client import TestServiceClient, tar_b64
    from envs.r2e.reward import binary_test_reward, match_expected, parse_pytest_output, partial_test_reward
    from envs.r2e.wire import TestRequest

    files = Path(args.files)
    changed = sorted(str(p.relative_to(files)) for p in files.rglob("*") if p.is_file())
    if not changed:
        return {"reward": 0.0, "partial": 0.0, "tests": {k: None for k in row.expected_output_json},
                "ignored_files": {}}
    client = TestServiceClient([url], token)
    try:
        result = await client.test(TestRequest(docker_image=row.docker_image, instance_id=row.instance_id,
                                               files_tar_b64=tar_b64(files, changed), test_cmd=row.test_cmd))
    finally:
        await client.aclose()
    reward, _ = binary_test_reward(row.expected_output_json, result.test_output)
    partial, _ = partial_test_reward(row.expected_output_json, result.test_output)
    found = match_expected(row.expected_output_json, parse_pytest_output(result.test_output))
    return {"reward": reward, "partial": partial, "tests": found, "ignored_files": result.ignored_files}


def _score_row(args: argparse.Namespace) -> R2ERow:
    """The task's row, every input checked before a service starts: one DatasetError line naming the flag."""
    from envs.r2e.cache import repo_path
    from envs.r2e.data import load_rows

    if not args.cache_dir.is_dir() or not (args.cache_dir / "index.json").is_file():
        raise DatasetError(f"--cache-dir {args.cache_dir}: not a repo cache (no index.json there); build one with "
                           "`python -m envs.r2e cache`")
    if not Path(args.dataset).is_file():
        raise DatasetError(f"--dataset {args.dataset}: no such file")
    if not Path(args.files).is_dir():
        raise DatasetError(f"--files {args.files}: not a directory")
    rows = {r.instance_id: r for r in load_rows(args.dataset)}
    if args.instance_id not in rows:
        raise DatasetError(f"--instance-id {args.instance_id} is not in {args.dataset}")
    repo_path(args.cache_dir, args.instance_id)  # fails clearly when the cache lacks it
    return rows[args.instance_id]


def _images(args: argparse.Namespace) -> int:
    from envs.r2e.docker_runtime import DockerError, engine_problem
    from envs.r2e.images import DEFAULT_MIRROR, ImageBuildError, build_sample_images

    if args.image_cache is not None and args.image_cache.exists() and not args.image_cache.is_dir():
        print(f"error: --image-cache {args.image_cache}: not a directory", file=sys.stderr)
        return 2
    problem = engine_problem()
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        build_sample_images(args.image_cache, args.rows_out, args.mirror or DEFAULT_MIRROR)
    except (DockerError, ImageBuildError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m envs.r2e", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cache = sub.add_parser("cache", help="build the repo cache")
    cache.add_argument("--cache-dir", type=Path, required=True)
    cache.add_argument("--from-samples", action="store_true", help="from the bundled sample tasks (no Docker)")
    cache.add_argument("--split", default="train")
    cache.add_argument("--dataset", default=None, help="rows from a local .jsonl/.parquet instead of the hub")
    cache.add_argument("--max-entries", type=int, default=None)
    cache.add_argument("--skip-existing", action="store_true")
    cache.add_argument("--dry-run", action="store_true")
    score = sub.add_parser("score", help="score changed files against a task's tests")
    score.add_argument("--cache-dir", type=Path, required=True)
    score.add_argument("--dataset", required=True)
    score.add_argument("--instance-id", required=True)
    score.add_argument("--files", required=True, help="a directory holding the changed files at their repo paths")
    score.add_argument("--url", default=None, help="a running test service (default: start a process one)")
    score.add_argument("--token", default=None)
    demos = sub.add_parser("demos", help="write SFT demonstrations (OpenAI messages JSONL) of the bundled samples")
    demos.add_argument("--out", type=Path, required=True, help="the .jsonl file to write")
    demos.add_argument("--split", default="train", help="train (all but the held-out sample), heldout, or all")
    demos.add_argument("--cache-dir", type=Path, default=None,
                       help="repo cache (the samples are added to it; default: a temporary one)")
    demos.add_argument("--system-prompt", default="r2e_system_prompt", help="as train.py's --system-prompt")
    images = sub.add_parser("images", help="build a Docker image per bundled sample, offline (needs an engine)")
    images.add_argument("--image-cache", type=Path, default=None,
                        help="where the debootstrapped base root is kept between runs (default: "
                             "$ART_R2E_IMAGE_CACHE or ~/.cache/art-agent-trainer/r2e-images)")
    images.add_argument("--rows-out", type=Path, default=None,
                        help="write the sample rows (docker_image = the built images) here (default: "
                             "<image-cache>/sample_rows.jsonl), for `cache --dataset` and train.py --dataset")
    images.add_argument("--mirror", default=None, help="Debian mirror for debootstrap (default: deb.debian.org)")
    from envs.r2e.options import R2EOptions
    from envs.verl_layout import add_tasks_command, run_tasks

    add_tasks_command(sub, R2EOptions, only=("system_prompt", "r2e_tasks"))
    args = parser.parse_args(argv)
    if args.command == "tasks":
        from envs.r2e.scenarios import task_scenarios, verl_rows

        return run_tasks("r2e", args, verl_rows, load=task_scenarios)
    try:
        if args.command == "images":
            return _images(args)
        if args.command == "demos":
            from envs.r2e.demos import write_demos

            written = write_demos(args.out, args.split, args.cache_dir, args.system_prompt)
            print(f"{len(written)} demonstration(s) ({args.split}) in {args.out}")
            return 0
        if args.command == "cache":
            from envs.r2e.cache import build_from_docker, build_from_samples
            from envs.r2e.data import load_rows

            if args.from_samples:
                index = build_from_samples(args.cache_dir)
            else:
                index = build_from_docker(args.cache_dir, load_rows(args.dataset, args.split), args.max_entries,
                                          args.skip_existing, args.dry_run)
            print(f"{len(index)} instance(s) in {args.cache_dir / 'index.json'}")
            return 0
        from services.process import ServiceProcess

        row = _score_row(args)  # bad input is refused before a service starts
        with contextlib.ExitStack() as stack:
            if args.url:
                url, token = args.url, args.token or ""
            else:
                try:
                    service = stack.enter_context(ServiceProcess("envs.r2e.test_service", "--runtime", "process",
                                                                 "--cache-dir", str(args.cache_dir)))
                except RuntimeError as exc:  # the service's own words are its log's last line
                    last = next((line for line in reversed(str(exc).splitlines()) if line.strip()), str(exc))
                    print(f"error: the test service did not start: {last.strip()}", file=sys.stderr)
                    return 1
                url, token = service.url, service.token
            print(json.dumps(asyncio.run(_score(args, row, url, token)), indent=2))
        return 0
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
