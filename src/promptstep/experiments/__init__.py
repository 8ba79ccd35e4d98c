"""The paper's experiment algorithms: several contexts per update, controls, transfer.

The names of the choices live here (no torch import), so commands check them before loading models.
"""

MODES = ("sequential", "batched")  # several contexts per update: one step each, or one step on all
# The knowledge-injection benchmark's settings (experiments/injection.py): no context, the one-step model, the same
# with the document in the prompt, the untrained model's step, k-step AdamW, the document(s) in the prompt.
INJECTION_METHODS = ("nc", "meta", "meta+prompt", "untrained", "adamw", "prompt", "prompt-all")
