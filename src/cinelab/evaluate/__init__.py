"""cinelab.evaluate."""
