"""Front doors: convert a caller's traffic to the engine's view and back, nothing else."""
