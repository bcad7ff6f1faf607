"""Multi-run procedures built from train() calls (e.g. the two-stage augmentation)."""
