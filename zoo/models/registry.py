"""The model registry (kept apart so families can register without import cycles)."""
from zoo.registry import Registry

MODELS: Registry = Registry("model")
