"""cinelab.measure."""
