"""Data: fetch, normalize, generate, preprocess (the pipeline's first stages)."""
