"""cinelab.explain."""
