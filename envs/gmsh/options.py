"""The gmsh env's options: one frozen dataclass whose fields are its train.py flags (envs/options.py makes them)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class GmshOptions:
    """Meshing scripts run by a gmsh service, scored on the mesh."""

    # Where the service runs, not what the run learns: never in the config hash (a resume may use other nodes).
    gmsh_url: tuple[str, ...] = field(default=(), metadata={
        "action": "append", "metavar": "URL", "hash": "skip",
        "help": "gmsh service URL, or @FILE of URLs one a line (repeat for several nodes; token from "
                "GMSH_SERVICE_TOKEN); default: start one locally"})

    def validate(self) -> None:
        """A URL that is not http(s), or an unreadable @FILE: one line naming the flag."""
        from envs.local_service import check_service_urls

        check_service_urls("--gmsh-url", self.gmsh_url)
