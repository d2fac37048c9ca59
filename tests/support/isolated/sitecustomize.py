"""Put on ``PYTHONPATH`` by the tests (``support.process.isolated_env``): this process, and
every process it starts, runs as a container would, where the checkout is not installed.

- ``ZOO_TEST_HIDE=training,mlflow``: those top-level packages cannot be imported at all;
- ``ZOO_TEST_NO_CHECKOUT=1``: the editable install's finder and the checkout's folder are
  dropped, so ``serving`` and ``zoo`` come only from what ``sys.path`` holds (a Bento's
  ``src``), or not at all.

Python imports ``sitecustomize`` at start-up, after the ``.pth`` files that install the
editable finder, so removing it here takes effect before any project import.
"""
import os
import sys
from importlib.abc import MetaPathFinder

_HIDDEN = tuple(name for name in os.environ.get("ZOO_TEST_HIDE", "").split(",") if name)
_CHECKOUT = os.environ.get("ZOO_TEST_CHECKOUT", "")


class _Hide(MetaPathFinder):
    """Refuses the hidden packages as if they were not installed."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in _HIDDEN:
            raise ModuleNotFoundError(f"No module named {name!r} (hidden by the test)", name=name)
        return None


if _HIDDEN:
    sys.meta_path.insert(0, _Hide())
if os.environ.get("ZOO_TEST_NO_CHECKOUT") == "1":
    sys.meta_path[:] = [f for f in sys.meta_path
                        if not getattr(f, "__module__", "").startswith("__editable__")]
    if _CHECKOUT:
        sys.path[:] = [p for p in sys.path
                       if os.path.realpath(p or os.getcwd()) != os.path.realpath(_CHECKOUT)]
