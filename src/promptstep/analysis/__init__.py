"""ICL-vs-GD instruments: recording hooks, similarity and distribution metrics, GD / Layer-Causal GD, baselines."""

from promptstep.analysis.command import AnalyzeConfig, run_analyze

__all__ = ["AnalyzeConfig", "run_analyze"]
