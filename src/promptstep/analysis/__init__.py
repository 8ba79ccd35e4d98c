"""ICL-vs-GD instruments: recording hooks, similarity and distribution metrics, untrained baselines, tasks.

The names of the choices live here (no torch import), so the `analyze` command checks them before loading models.
"""

BASELINES = ("random-init", "trained-embeddings")
POSITIONS = ("last", "label")
