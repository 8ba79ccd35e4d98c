"""One module per CLI command: its config dataclass (the options) and its `run_*` workflow."""
