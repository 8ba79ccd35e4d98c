"""The paper's experiment algorithms: several contexts per update, controls, transfer.

The names of the choices live here (no torch import), so commands check them before loading models.
"""

MODES = ("sequential", "batched")  # several contexts per update: one step each, or one step on all
