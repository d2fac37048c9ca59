"""model-zoo catalogue: model architectures, losses, data sources and metrics.

``zoo`` knows nothing of MLflow or BentoML; ``training`` and ``serving`` build on it.
"""
__version__ = "0.1.0"
