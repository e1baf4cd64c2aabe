"""cinelab.report."""
