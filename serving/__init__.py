"""The server: a BentoML service (``service``) over one registered model, in rooms that
follow a request: the HTTP edge (``http/``) → decode and the face stage (``inputs/``) → the
model (``model/``) → the gallery (``gallery/``) → the answer (``schemas``). The page at
``/ui`` lives in ``page/``; ``enroll`` and ``predict`` are the offline commands
(``python -m serving.enroll``, ``python -m serving.predict``). It imports no training code."""
