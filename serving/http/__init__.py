"""The HTTP edge: everything between a client's bytes and an endpoint's arguments.

Keys (``keys``), body limits (``limits``), answers put right (``rewrites``), metrics by
route (``route_metrics``), BentoML's form reader replaced (``multipart``), refused bodies
logged in one line without the body (``request_logs``), slow clients cut off
(``connections``), one image as the body (``raw_body``),
BentoML's timers (``latency``), and OpenAI's embeddings API (``openai_api``). The order a
request passes them, BentoML's own layers included, is written once, in ``chain``; every
private BentoML name patched is listed in ``bentoml_private``.
"""
