"""The engine: the training loop and what turns its wheels (optimisers and their parameter
groups, batch mixing, data parallelism, checkpoints). It knows configs and torch, not MLflow's
registry, and no command."""
