"""Client of one or several gmsh services (see `services.client` for balancing and retries)."""

from __future__ import annotations

from dataclasses import dataclass

from envs.gmsh.wire import RunRequest, RunResult
from services.client import ServiceClient, ServiceUnavailable

__all__ = ["GmshClient", "ServiceUnavailable"]


@dataclass
class GmshClient(ServiceClient):
    name: str = "gmsh"  # names its nodes in the step metrics (nodes/gmsh/nodeI/...)
    slack_s: float = 30.0  # beyond the script's own timeout: queueing and mesh analysis

    async def run(self, request: RunRequest) -> RunResult:
        answer = await self.post("/run", request.model_dump(), timeout=request.timeout + self.slack_s)
        return RunResult.model_validate(answer)
