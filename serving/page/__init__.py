"""The page at ``/ui``: its routes (``routes.py``) and its static files, beside them."""
