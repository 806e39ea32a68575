"""The repo cache: `index.json` (instance id -> metadata) and one folder per instance holding the repository.

Built from Docker images (`/testbed` of each R2E image, or of ours: `python -m envs.r2e images`) where an engine
runs, or from the bundled samples.
The index is rewritten after every entry, so an interrupted build resumes where it stopped.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from envs.r2e.data import R2ERow, validate_rows
from rollouts.scenario import DatasetError

SAMPLES = Path(__file__).with_name("samples")


def read_index(cache_dir: Path) -> dict[str, dict[str, Any]]:
    path = cache_dir / "index.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _write_index(cache_dir: Path, index: dict[str, dict[str, Any]]) -> None:
    tmp = cache_dir / "index.json.tmp"
    tmp.write_text(json.dumps(index, indent=2, sort_keys=True))
    os.replace(tmp, cache_dir / "index.json")


def _entry(row: R2ERow, folder: Path) -> dict[str, Any]:
    files = [p for p in folder.rglob("*") if p.is_file()]
    return {"repo_name": row.repo_name, "docker_image": row.docker_image, "commit_hash": row.commit_hash,
            "cache_path": folder.name, "file_count": len(files),
            "size_mb": round(sum(p.stat().st_size for p in files) / 1e6, 3)}


def sample_image(repo_name: str, commit_hash: str) -> str:
    """The sample's image name, R2E's `namanjain12/<repo>_final:<commit>` under our own prefix (`local/`, which no
    registry serves); `python -m envs.r2e images` builds it."""
    return f"local/{repo_name}_final:{commit_hash}"


def sample_rows() -> list[R2ERow]:
    raw = []
    for task in sorted(SAMPLES.glob("*/task.json")):
        data = json.loads(task.read_text())
        raw.append({**data, "docker_image": sample_image(data["repo_name"], data["commit_hash"])})
    return validate_rows(raw, str(SAMPLES))


def build_from_samples(cache_dir: Path) -> dict[str, dict[str, Any]]:
    cache_dir.mkdir(parents=True, exist_ok=True)
    index = read_index(cache_dir)
    for row in sample_rows():
        target = cache_dir / row.instance_id
        if row.instance_id in index and target.is_dir():
            continue
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(SAMPLES / row.repo_name / "repo", target,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache"))
        index[row.instance_id] = _entry(row, target)
        _write_index(cache_dir, index)
    return index


def build_from_files(cache_dir: Path, repos: list[tuple[R2ERow, dict[str, str]]]) -> dict[str, dict[str, Any]]:
    """Write each row's repository from its files (repo-relative path -> text), as `build_from_samples` copies a
    sample's: for generated tasks (envs/r2e/generated.py), no Docker, no network. A cached entry is kept."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    index = read_index(cache_dir)
    todo = [(row, files) for row, files in repos
            if not (row.instance_id in index and (cache_dir / row.instance_id).is_dir())]
    for row, files in todo:
        target = cache_dir / row.instance_id
        shutil.rmtree(target, ignore_errors=True)
        for rel, text in files.items():
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            (target / rel).write_text(text)
        index[row.instance_id] = _entry(row, target)
    if todo:  # once for the lot: tiny repos, and a folder left without its entry is simply written again
        _write_index(cache_dir, index)
    return index


def build_from_docker(cache_dir: Path, rows: list[R2ERow], max_entries: int | None, skip_existing: bool,
                      dry_run: bool, log=print) -> dict[str, dict[str, Any]]:
    """Copy `/testbed` out of each row's image (docker CLI): pulled only when the engine lacks it (our offline
    images from `python -m envs.r2e images` never are), a stopped container created, archived and removed."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    index = read_index(cache_dir)
    todo = [r for r in rows if not (skip_existing and r.instance_id in index)][: max_entries or None]
    if dry_run:
        for row in todo:
            log(f"would cache {row.instance_id} from {row.docker_image}")
        return index
    from envs.r2e.docker_runtime import OWNER_LABEL, ROLE_LABEL, DockerError, docker, image_exists, owner_label

    for row in todo:
        target = cache_dir / row.instance_id
        try:
            if not image_exists(row.docker_image):
                docker("pull", row.docker_image, timeout=3600)
            cid = docker("create", "--network", "none", "--label", f"{ROLE_LABEL}=cache", "--label",
                         f"{OWNER_LABEL}={owner_label()}", row.docker_image, "true").stdout.decode().strip()
            try:
                archive = docker("cp", f"{cid}:/testbed", "-", timeout=600).stdout
            finally:
                docker("rm", "-f", cid, check=False)
        except DockerError as exc:
            raise DatasetError(f"{row.instance_id}: {exc}") from None
        with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
            with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
                tar.extractall(tmp, filter="data")
            shutil.rmtree(target, ignore_errors=True)
            os.rename(Path(tmp) / "testbed", target)
        index[row.instance_id] = _entry(row, target)
        _write_index(cache_dir, index)
        log(f"cached {row.instance_id} ({index[row.instance_id]['file_count']} files)")
    return index


def repo_path(cache_dir: Path, instance_id: str) -> Path:
    index = read_index(cache_dir)
    if instance_id not in index:
        raise DatasetError(f"instance {instance_id} is not in the repo cache {cache_dir} (build it with "
                           "`python -m envs.r2e cache`)")
    return cache_dir / index[instance_id]["cache_path"]
