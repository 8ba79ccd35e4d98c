"""Triplet datasets: types, readers, generators."""
