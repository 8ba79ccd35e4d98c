"""ICL-vs-GD instruments: recording hooks, similarity and distribution metrics, GD / Layer-Causal GD, baselines."""
