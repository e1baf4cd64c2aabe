"""cinelab.formats."""
