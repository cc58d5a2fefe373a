"""What to run: specs, source references, grids, the planner (no torch at import)."""
