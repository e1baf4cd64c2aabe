"""cinelab.infer."""
