"""Wire messages of the gmsh service, shared by the service and its client."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, model_validator


class RunRequest(BaseModel):
    script: str = Field(max_length=200_000)
    geometry_file: str | None = Field(default=None, description="a file name in the service's task store")
    geometry_b64: str | None = Field(default=None, description="uploaded geometry bytes, base64")
    geometry_name: str = Field(default="geometry.step", pattern=r"^[A-Za-z0-9_.-]{1,100}$")
    timeout: float = Field(default=30.0, gt=0, le=600)

    @model_validator(mode="after")
    def one_geometry(self) -> RunRequest:
        if (self.geometry_file is None) == (self.geometry_b64 is None):
            raise ValueError("give exactly one of geometry_file and geometry_b64")
        return self


class RunResult(BaseModel):
    ok: bool
    exit_code: int | None
    stdout: str
    stderr: str
    elapsed: float
    timed_out: bool
    stats: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None
