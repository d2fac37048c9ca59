"""The one reader of an MLflow store that the trainer and the server share: where the store
is, which registered version (and run) a model URI names, and a version's files fetched.

``training/`` and ``serving/`` both import it, so the two never disagree on what a URI
names; it imports MLflow and ``zoo`` only, never either of them. A built Bento does not
import it at all: its model is packed (``serving/model/packaging.py``), and it runs without
MLflow.

- ``mlflow_source.store``: the embedded store's URI, and pointing MLflow at the store;
- ``mlflow_source.uris``: ``models:/<name>@<alias>``, ``models:/<name>/<version>``,
  ``models:/m-<id>`` and ``runs:/<run>/<path>`` resolved, a miss saying what exists;
- ``mlflow_source.fetch``: a version's bundle (what the server loads), its weights, its record.
"""
