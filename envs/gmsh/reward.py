"""The gmsh task-completion reward, as envs/gmsh/REWARD.md describes it.

A pure function of (requirements, bbox, service result): the score in [-1, 1] and a breakdown of every
component, so a logged rollout always says why it scored what it did. Quality uses gmsh's minSICN measure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class GmshRewardWeights:
    mesh_generated: float = 0.30
    physical_groups: float = 0.30
    mesh_density: float = 0.20
    mesh_quality: float = 0.20
    # Density: full credit while actual/expected stays within [1/band, band]; linear in |log ratio| down to 0 at
    # band * falloff. The bbox overestimates holed parts and refinement adds elements, hence a wide band.
    density_band: float = 3.0
    density_falloff: float = 8.0


LOW_END = -1.0


def expected_elements(requirements: dict[str, Any], bbox: list[float]) -> float:
    """Elements a uniform mesh of size h would need for the bounding box (equilateral triangles / regular tets)."""
    h = float(requirements["characteristic_length"])
    sides = [max(bbox[3 + k] - bbox[k], 0.0) for k in range(3)]
    if int(requirements["dimension"]) == 2:
        sides.sort(reverse=True)
        return max(sides[0] * sides[1] / (math.sqrt(3) / 4 * h * h), 1.0)
    return max(sides[0] * sides[1] * sides[2] / (h**3 / (6 * math.sqrt(2))), 1.0)


def density_score(ratio: float, w: GmshRewardWeights) -> float:
    if ratio <= 0:
        return 0.0
    excess = abs(math.log(ratio)) - math.log(w.density_band)
    return 1.0 if excess <= 0 else max(0.0, 1.0 - excess / math.log(w.density_falloff))


def quality_score(min_quality: float | None) -> float:
    if min_quality is None:
        return 0.0
    return 1.0 if min_quality > 0.3 else 0.5 if min_quality > 0.1 else 0.0


def gmsh_reward(requirements: dict[str, Any], bbox: list[float], result: dict[str, Any],
                weights: GmshRewardWeights | None = None) -> tuple[float, dict[str, float]]:
    """`result` is the service's RunResult as a dict. Returns (score, breakdown)."""
    w = weights or GmshRewardWeights()
    stats = result.get("stats") or {}
    dim = int(requirements["dimension"])
    elements = int((stats.get("elements_by_dim") or {}).get(str(dim), 0))
    expected = expected_elements(requirements, bbox)
    required = [(g["name"], int(g["dim"])) for g in requirements["physical_groups"]]
    found = {(g["name"], int(g["dim"])) for g in stats.get("physical_groups") or []}
    present = [r for r in required if r in found]
    min_q = (stats.get("quality") or {}).get("min")
    breakdown: dict[str, float] = {
        "ran": float(bool(result.get("exit_code") == 0 and not result.get("timed_out"))),
        "timed_out": float(bool(result.get("timed_out"))),
        "elements": float(elements), "expected_elements": float(expected),
        "density_ratio": elements / expected if expected else 0.0,
        "min_quality": float(min_q) if min_q is not None else -1.0,
        "groups_required": float(len(required)), "groups_found": float(len(present)),
        "groups_missing": float(len(required) - len(present)), "any_groups": float(bool(found)),
    }
    generated = breakdown["ran"] == 1.0 and elements > 0
    if not generated or not found:
        breakdown |= {"mesh_generated": float(generated), "physical_groups": 0.0, "mesh_density": 0.0,
                      "mesh_quality": 0.0, "weighted_sum": 0.0}
        return LOW_END, breakdown
    parts = {
        "mesh_generated": 1.0,
        "physical_groups": len(present) / len(required) if required else 1.0,
        "mesh_density": density_score(breakdown["density_ratio"], w),
        "mesh_quality": quality_score(min_q),
    }
    total = (w.mesh_generated * parts["mesh_generated"] + w.physical_groups * parts["physical_groups"]
             + w.mesh_density * parts["mesh_density"] + w.mesh_quality * parts["mesh_quality"])
    total /= w.mesh_generated + w.physical_groups + w.mesh_density + w.mesh_quality
    breakdown |= parts | {"weighted_sum": total}
    return 2.0 * total - 1.0, breakdown
