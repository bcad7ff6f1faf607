"""Hydra launcher ``hydra/launcher=members``: a sweep's jobs trained as members of one model."""
