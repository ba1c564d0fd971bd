"""Model files for a cluster: `models download` (from the original sources or a site mirror),
`models verify`, the folder's manifest, and resolving models on the login node before `submit`.

No torch in this package: it runs on login nodes and in the planner.
"""
