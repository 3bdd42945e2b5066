"""Trainer configuration: every pathology and its fix as a switch of its own, and the presets."""
