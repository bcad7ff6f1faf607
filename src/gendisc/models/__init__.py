"""LightningModules: training logic (losses, optimisation, logging) around the nets."""
