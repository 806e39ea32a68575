"""Runs one model-written gmsh script, then measures whatever mesh the gmsh model holds (inside the sandbox).

`python script_runner.py SCRIPT STATS_JSON`. `gmsh.finalize` is deferred so the mesh can be analysed after the
script ends, whether it saved the mesh, crashed half way, or called sys.exit. The stats file is written last:
if the sandbox kills this process, there are no stats, and the service reports that. It runs inside the sandbox
(`envs.sandbox`: bubblewrap, a uid of its own) because the script it runs is model-written; the service trusts
nothing it writes beyond the stats JSON it parses.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
import traceback


def analyse(gmsh) -> dict:
    stats: dict = {"initialized": bool(gmsh.isInitialized())}
    if not stats["initialized"]:
        return stats
    elements_by_dim: dict[str, int] = {}
    elements_by_type: dict[str, int] = {}
    for dim in range(4):
        types, tags, _ = gmsh.model.mesh.getElements(dim)
        elements_by_dim[str(dim)] = int(sum(len(t) for t in tags))
        for etype, etags in zip(types, tags, strict=False):
            name = gmsh.model.mesh.getElementProperties(etype)[0]
            elements_by_type[name] = elements_by_type.get(name, 0) + len(etags)
    node_tags, _, _ = gmsh.model.mesh.getNodes()
    top = max((d for d in range(4) if elements_by_dim[str(d)] > 0), default=0)
    quality = {"measure": "minSICN", "dim": top, "min": None, "mean": None}
    if top >= 2:
        _, tags, _ = gmsh.model.mesh.getElements(top)
        all_tags = [t for block in tags for t in block]
        if all_tags:
            q = gmsh.model.mesh.getElementQualities(all_tags, "minSICN")
            quality |= {"min": float(min(q)), "mean": float(sum(q) / len(q))}
    groups = []
    for dim, tag in gmsh.model.getPhysicalGroups():
        groups.append({"name": gmsh.model.getPhysicalName(dim, tag), "dim": int(dim), "tag": int(tag),
                       "entity_count": len(gmsh.model.getEntitiesForPhysicalGroup(dim, tag))})
    try:
        bbox = list(gmsh.model.getBoundingBox(-1, -1))
    except Exception:
        bbox = None
    mesh_files = [f for f in os.listdir(".") if f.endswith((".msh", ".vtk", ".med", ".inp", ".unv"))]
    stats |= {
        "nodes": len(node_tags), "elements_by_dim": elements_by_dim, "elements_by_type": elements_by_type,
        "quality": quality, "physical_groups": groups, "bbox": bbox,
        "mesh_files": mesh_files, "written_mesh_bytes": sum(os.path.getsize(f) for f in mesh_files),
    }
    return stats


def main() -> int:
    script, stats_path = sys.argv[1], sys.argv[2]
    import gmsh

    real_finalize = gmsh.finalize
    gmsh.finalize = lambda: None  # keep the model alive for analyse()
    error = None
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as exc:
        if exc.code not in (None, 0):
            error = f"SystemExit({exc.code})"
    except BaseException:
        error = traceback.format_exc(limit=5)
        print(error, file=sys.stderr)
    try:
        stats = analyse(gmsh)
    except Exception as exc:  # the script left gmsh in a state that cannot be read
        stats = {"initialized": True, "analysis_error": f"{exc.__class__.__name__}: {exc}"}
    stats["script_error"] = error
    with open(stats_path + ".tmp", "w") as f:
        json.dump(stats, f)
    os.replace(stats_path + ".tmp", stats_path)
    if gmsh.isInitialized():
        real_finalize()
    return 1 if error else 0


if __name__ == "__main__":
    sys.exit(main())
