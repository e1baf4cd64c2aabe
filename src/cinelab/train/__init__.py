"""cinelab.train."""
