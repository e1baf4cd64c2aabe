"""cinelab.prep."""
