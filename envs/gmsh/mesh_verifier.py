"""Measures a mesh file against the task's geometry, in a fresh sandboxed process that runs no model code.

`python mesh_verifier.py MESH GEOMETRY STATS_JSON`. Why a second process: the model's script runs inside
`script_runner.py`, so anything that process reports (a stats file, its stdout, its exit code, even the gmsh
module's functions, which the script may have replaced) is the model's to forge. This process starts clean, so
its gmsh is the real one, and it trusts only two inputs: the geometry (the service's own copy of the task's file)
and the mesh file, which it treats as a claim to check, not a result: the mesh counts only when it matches the
geometry (its bounding box and volume or area are the geometry's, its nodes lie in or on the shape, and points
just off each face of the shape fall on the right side of the mesh: in it inside the shape, out of it outside,
which a mesh of another shape, a box over a holed block say, fails). So a
forged stats file, a printed verdict, an early exit, or a mesh written by hand scores as no mesh; a hand-made
mesh that passes these checks is a valid mesh of the task's shape. The stats file it writes is the only one the
service reads; on a mismatch it holds `rejected` (the reason) and no elements.
"""

from __future__ import annotations

import json
import math
import os
import sys

# A legitimate mesh of a curved shape has straight-edged elements, so its volume and bounding box differ a little
# from the CAD's; these bounds leave room for very coarse meshes (a hole as a hexagon) and none for another shape.
MEASURE_TOLERANCE = 0.12  # relative difference of the mesh's volume (area in 2-D) from the geometry's
BBOX_TOLERANCE = 0.02  # of the geometry's largest extent, per bounding-box coordinate
INSIDE_TOLERANCE = 0.01  # of the largest extent: how far off the shape a node may sit (curved faces, chords)
MAX_CHECKED_NODES = 300  # nodes checked to lie in the shape (an even sample of larger meshes)
FACE_OFFSET = 0.02  # of the largest extent: how far off each geometry face the shape probes sit
SAMPLE_FRACTIONS = (0.2, 0.5, 0.8)  # where on each face's parameter range the probes sit


def _geometry(gmsh, path: str) -> dict:
    """The geometry's top dimension, its volume (area in 2-D), bounding box and entities, from the task's file."""
    gmsh.model.add("geometry")
    gmsh.model.occ.importShapes(path)
    gmsh.model.occ.synchronize()
    dim = max((d for d, _ in gmsh.model.getEntities()), default=-1)
    tags = [t for _, t in gmsh.model.getEntities(dim)]
    measure = sum(gmsh.model.occ.getMass(dim, t) for t in tags)
    return {"dim": dim, "tags": tags, "measure": float(measure), "bbox": list(gmsh.model.getBoundingBox(-1, -1))}


def _mesh_stats(gmsh) -> dict:
    """What the reward reads, measured on the mesh model (the file's nodes, elements and physical groups)."""
    elements_by_dim: dict[str, int] = {}
    elements_by_type: dict[str, int] = {}
    for dim in range(4):
        types, tags, _ = gmsh.model.mesh.getElements(dim)
        elements_by_dim[str(dim)] = int(sum(len(t) for t in tags))
        for etype, etags in zip(types, tags, strict=False):
            name = gmsh.model.mesh.getElementProperties(etype)[0]
            elements_by_type[name] = elements_by_type.get(name, 0) + len(etags)
    node_tags, coords, _ = gmsh.model.mesh.getNodes()
    top = max((d for d in range(4) if elements_by_dim[str(d)] > 0), default=0)
    quality: dict = {"measure": "minSICN", "dim": top, "min": None, "mean": None}
    measure = 0.0
    if top >= 2:
        _, tags, _ = gmsh.model.mesh.getElements(top)
        all_tags = [t for block in tags for t in block]
        if all_tags:
            q = gmsh.model.mesh.getElementQualities(all_tags, "minSICN")
            quality |= {"min": float(min(q)), "mean": float(sum(q) / len(q))}
            measure = float(sum(abs(v) for v in gmsh.model.mesh.getElementQualities(all_tags, "volume")))
    groups = [{"name": gmsh.model.getPhysicalName(dim, tag), "dim": int(dim), "tag": int(tag),
               "entity_count": len(gmsh.model.getEntitiesForPhysicalGroup(dim, tag))}
              for dim, tag in gmsh.model.getPhysicalGroups()]
    xyz = [coords[i:i + 3] for i in range(0, len(coords), 3)]
    bbox = ([min(p[k] for p in xyz) for k in range(3)] + [max(p[k] for p in xyz) for k in range(3)]) if xyz else None
    return {"initialized": True, "nodes": len(node_tags), "elements_by_dim": elements_by_dim,
            "elements_by_type": elements_by_type, "quality": quality, "physical_groups": groups, "bbox": bbox,
            "mesh_measure": measure, "_xyz": xyz}


def _inside_geometry(gmsh, geometry: dict, point: list[float]) -> bool:
    return any(gmsh.model.isInside(geometry["dim"], t, point) for t in geometry["tags"])


def _in_mesh(gmsh, dim: int, point: list[float]) -> bool:
    try:
        return gmsh.model.mesh.getElementByCoordinates(*point, dim=dim, strict=True)[0] > 0
    except Exception:  # gmsh raises when no element holds the point
        return False


def _face_probes(gmsh, geometry: dict, offset: float) -> list[tuple[list[float], bool]]:
    """Points just off each boundary face (edge in 2-D) of the geometry, both sides: (point, inside the geometry).
    A mesh of the shape holds none of the outer ones: a hole, a notch or a curved face the mesh ignores (a box
    meshed over a holed block) puts an outer point inside the mesh."""
    dim = geometry["dim"]
    probes = []
    for _, face in gmsh.model.getBoundary([(dim, t) for t in geometry["tags"]], False, False, False):
        lo, hi = gmsh.model.getParametrizationBounds(dim - 1, abs(face))
        grid = [[lo[0] + f * (hi[0] - lo[0])] for f in SAMPLE_FRACTIONS] if dim == 2 else \
            [[lo[0] + f * (hi[0] - lo[0]), lo[1] + g * (hi[1] - lo[1])] for f in SAMPLE_FRACTIONS
             for g in SAMPLE_FRACTIONS]
        for uv in grid:
            if dim == 3 and not gmsh.model.isInside(2, abs(face), uv, True):
                continue  # outside the trimmed face (a hole in it)
            xyz = list(gmsh.model.getValue(dim - 1, abs(face), uv))
            if dim == 3:
                normal = list(gmsh.model.getNormal(abs(face), uv))
            else:
                tx, ty, _ = gmsh.model.getDerivative(1, abs(face), uv)
                normal = [-ty, tx, 0.0]
            norm = math.hypot(*normal)
            if norm == 0:
                continue
            for sign in (1, -1):
                point = [xyz[k] + sign * offset * normal[k] / norm for k in range(3)]
                probes.append((point, _inside_geometry(gmsh, geometry, point)))
    return probes


def _off_shape(gmsh, geometry: dict, xyz: list, tolerance: float) -> int:
    """How many of (a sample of) the nodes lie neither in the shape nor within `tolerance` of its boundary."""
    step = max(1, math.ceil(len(xyz) / MAX_CHECKED_NODES))
    dim, tags = geometry["dim"], geometry["tags"]
    boundary = [t for _, t in gmsh.model.getBoundary([(dim, t) for t in tags], False, False, False)]
    off = 0
    for point in xyz[::step]:
        point = list(point)
        if _inside_geometry(gmsh, geometry, point):
            continue
        near = min((math.dist(point, gmsh.model.getClosestPoint(dim - 1, abs(b), point)[0]) for b in boundary),
                   default=math.inf)
        off += near > tolerance
    return off


def mismatch(geometry: dict, stats: dict, off_shape: int, wrong_side: int) -> str | None:
    """Why the mesh is not a mesh of the geometry, or None when it is (or holds no elements: nothing to claim)."""
    dim = geometry["dim"]
    if stats["elements_by_dim"].get(str(dim), 0) == 0:
        return None
    extent = max(geometry["bbox"][3 + k] - geometry["bbox"][k] for k in range(3))
    if any(abs(a - b) > BBOX_TOLERANCE * extent for a, b in zip(stats["bbox"], geometry["bbox"], strict=True)):
        return "its bounding box is not the geometry's"
    if abs(stats["mesh_measure"] - geometry["measure"]) > MEASURE_TOLERANCE * geometry["measure"]:
        return (f"its {'volume' if dim == 3 else 'area'} {stats['mesh_measure']:.4g} is not the geometry's "
                f"{geometry['measure']:.4g}")
    if off_shape:
        return f"{off_shape} of its nodes lie outside the geometry"
    if wrong_side:
        return f"it covers space outside the geometry ({wrong_side} points just off its faces)"
    return None


def verify(mesh_path: str, geometry_path: str) -> dict:
    import gmsh

    gmsh.initialize(["verifier", "-noenv"], readConfigFiles=False, interruptible=False)
    gmsh.option.setNumber("General.Terminal", 0)
    try:
        geometry = _geometry(gmsh, geometry_path)
        if not os.path.isfile(mesh_path):
            return {"initialized": False, "geometry": {k: geometry[k] for k in ("dim", "measure", "bbox")}}
        gmsh.model.add("mesh")
        gmsh.merge(mesh_path)
        stats = _mesh_stats(gmsh)
        xyz = stats.pop("_xyz")
        gmsh.model.setCurrent("geometry")
        extent = max(geometry["bbox"][3 + k] - geometry["bbox"][k] for k in range(3))
        claimed = stats["elements_by_dim"].get(str(geometry["dim"]), 0) > 0
        off = _off_shape(gmsh, geometry, xyz, INSIDE_TOLERANCE * extent) if claimed and xyz else 0
        probes = _face_probes(gmsh, geometry, FACE_OFFSET * extent) if claimed else []
        gmsh.model.setCurrent("mesh")
        # Only outer points count: a coarse mesh of a convex curved face may miss an inner one (its chords cut
        # inside), and what a mesh leaves out shows in its volume anyway.
        wrong = sum(_in_mesh(gmsh, geometry["dim"], point) for point, inside in probes if not inside)
        stats["geometry"] = {k: geometry[k] for k in ("dim", "measure", "bbox")} | {
            "nodes_off_shape": off, "face_probes": len(probes), "face_probes_wrong_side": wrong}
        reason = mismatch(geometry, stats, off, wrong)
        if reason:
            return {"initialized": True, "rejected": f"the mesh does not match the task's geometry: {reason}",
                    "geometry": stats["geometry"], "claimed_elements_by_dim": stats["elements_by_dim"]}
        return stats
    finally:
        gmsh.finalize()


def main() -> int:
    mesh_path, geometry_path, stats_path = sys.argv[1:4]
    try:
        stats = verify(mesh_path, geometry_path)
    except Exception as exc:  # an unreadable mesh file (or geometry): no mesh
        stats = {"initialized": True, "rejected": f"the mesh cannot be measured: {exc.__class__.__name__}: {exc}"}
    with open(stats_path + ".tmp", "w") as f:
        json.dump(stats, f)
    os.replace(stats_path + ".tmp", stats_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
