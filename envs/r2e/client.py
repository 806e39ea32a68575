"""Test-service client, and what travels to it: only the files that differ from the cached repository."""

from __future__ import annotations

import base64
import filecmp
import io
import tarfile
from dataclasses import dataclass
from pathlib import Path

from envs.r2e.wire import TestRequest, TestResult
from services.client import ServiceClient, ServiceUnavailable

__all__ = ["TestServiceClient", "ServiceUnavailable", "changed_files", "tar_b64"]

IGNORED_DIRS = {"__pycache__", ".pytest_cache", ".git", ".tmp"}


def changed_files(workdir: Path, original: Path) -> list[str]:
    """Repo-relative paths of files added or modified in `workdir` (deletions do not travel)."""
    changed = []
    for path in sorted(workdir.rglob("*")):
        rel = path.relative_to(workdir)
        if not path.is_file() or path.is_symlink() or IGNORED_DIRS & set(rel.parts) or path.suffix == ".pyc":
            continue
        before = original / rel
        if not before.is_file() or not filecmp.cmp(path, before, shallow=False):
            changed.append(str(rel))
    return changed


def tar_b64(root: Path, paths: list[str]) -> str:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for rel in paths:
            tar.add(root / rel, arcname=rel)
    return base64.b64encode(buffer.getvalue()).decode()


@dataclass
class TestServiceClient(ServiceClient):
    __test__ = False
    name: str = "tests"  # names its nodes in the step metrics (nodes/tests/nodeI/...)
    slack_s: float = 60.0

    async def test(self, request: TestRequest) -> TestResult:
        answer = await self.post("/test", request.model_dump(), timeout=request.timeout + self.slack_s)
        return TestResult.model_validate(answer)
