"""cinelab.data."""
