"""Wire messages of the test service."""

from __future__ import annotations

from pydantic import BaseModel, Field


class TestRequest(BaseModel):
    __test__ = False  # not a pytest class
    docker_image: str
    instance_id: str = Field(pattern=r"^[A-Za-z0-9_.\-]+__[0-9a-f]{12}$")
    files_tar_b64: str = Field(description="the changed files at their repo paths, a tar, base64")
    test_cmd: str = "bash run_tests.sh"
    timeout: float = Field(default=300.0, gt=0, le=3600)


class TestResult(BaseModel):
    __test__ = False
    test_output: str
    exit_code: int | None
    elapsed: float
    timed_out: bool
    # Changed files the service dropped before the run (path -> why; envs/r2e/protected.py): the task's own
    # version of each was used, or none.
    ignored_files: dict[str, str] = Field(default_factory=dict)
