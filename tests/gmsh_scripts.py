"""Reference gmsh scripts for the generated task kinds (what a model that solved the task would write)."""

from __future__ import annotations

GROUPS = {
    "box_with_hole": '''
add(3, [t for _, t in gmsh.model.getEntities(3)], "solid")
add(2, [t for _, t in gmsh.model.getEntities(2) if gmsh.model.getType(2, t) == "Cylinder"], "hole")
''',
    "plate_with_holes": '''
add(3, [t for _, t in gmsh.model.getEntities(3)], "solid")
add(2, [t for _, t in gmsh.model.getEntities(2) if gmsh.model.getType(2, t) == "Cylinder"], "holes")
''',
    "cylinder": '''
add(3, [t for _, t in gmsh.model.getEntities(3)], "solid")
add(2, [t for t in faces() if box(2, t)[5] < zmin + eps], "bottom")
add(2, [t for t in faces() if box(2, t)[2] > zmax - eps], "top")
add(2, [t for t in faces() if gmsh.model.getType(2, t) == "Cylinder"], "side")
''',
    "l_bracket": '''
add(3, [t for _, t in gmsh.model.getEntities(3)], "solid")
add(2, [t for t in faces() if box(2, t)[3] < xmin + eps], "fixed")
add(2, [t for t in faces() if box(2, t)[0] > xmax - eps], "load")
''',
    "profile_2d": '''
add(2, [t for _, t in gmsh.model.getEntities(2)], "domain")
curves = [t for _, t in gmsh.model.getEntities(1)]
add(1, [t for t in curves if gmsh.model.getType(1, t) != "Line"], "hole")
add(1, [t for t in curves if gmsh.model.getType(1, t) == "Line"], "outer")
''',
}


def reference_script(kind: str, h: float, dim: int, *, size_factor: float = 1.0, groups: str = "all",
                     suffix: str = ".step", uniform: bool = False) -> str:
    """groups: "all", "none", or "first" (only the first group, for partial credit)."""
    group_code = GROUPS[kind]
    if groups == "none":
        group_code = ""
    elif groups == "first":
        group_code = group_code.strip().splitlines()[0] + "\n"
    return f'''import gmsh
gmsh.initialize()
gmsh.option.setNumber("General.Terminal", 0)
gmsh.model.occ.importShapes("geometry{suffix}")
gmsh.model.occ.synchronize()
gmsh.option.setNumber("Mesh.MeshSizeMax", {h * size_factor})
gmsh.option.setNumber("Mesh.MeshSizeMin", {h * size_factor / (1 if uniform else 3)})
xmin, ymin, zmin, xmax, ymax, zmax = gmsh.model.getBoundingBox(-1, -1)
eps = 1e-3 * max(xmax - xmin, ymax - ymin, zmax - zmin)
box = gmsh.model.getBoundingBox
faces = lambda: [t for _, t in gmsh.model.getEntities(2)]
def add(dim, tags, name):
    gmsh.model.addPhysicalGroup(dim, tags, name=name)
{group_code}
gmsh.model.mesh.generate({dim})
gmsh.write("mesh.msh")
gmsh.finalize()
'''
