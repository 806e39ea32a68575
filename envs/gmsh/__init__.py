"""gmsh meshing env: parametric geometry tasks, a gmsh tool service, and its client."""
