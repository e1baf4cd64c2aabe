"""cinelab.synth."""
