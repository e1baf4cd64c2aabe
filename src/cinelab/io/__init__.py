"""cinelab.io."""
