"""The life of a deployment: the version answering in each worker, the alias it follows, and
the migration that carries the enrolled people to the next version before it takes over."""
