"""The MLflow contract: the store, runs and their parameters, how a model is logged and
loaded back, where exports live on a version, registration and aliases, the probe a sweep
logs. Training writes through it and serving reads through it."""
