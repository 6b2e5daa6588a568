"""Training system: optimiser recipe, jitted sharded steps, checkpoints, the run loop."""
