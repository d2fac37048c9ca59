"""Where the server's tail latency came from, and the two fixes.

Under load, p99 was 5-11x p50 with one worker or two (bench/serve_throughput.py). The
tail was Python's full (generation-2) garbage collection, which stops a worker while it
walks every tracked object, and it grew as the server ran (measured with ``gc.callbacks``,
32 px, 32 clients):

1. **BentoML's ``TimeoutMiddleware`` left a timer per request** (BentoML 1.4.39,
   ``bentoml/_internal/server/http/traffic.py``). Each request schedules
   ``loop.call_later(timeout, ...)`` and never cancels it, so every request's timer, its
   future and its context stay alive for the whole ``traffic.timeout`` (300 s here): at
   500 requests/s, 150,000 of each. Full collections walked them all: 20 ms, then 100, then
   380 ms as they piled up. :func:`cancel_finished_request_timers` cancels the timer once
   the request has answered; a request that takes too long still gets its 504.
2. **The worker's own start-up heap.** Importing torch, timm, MLflow and BentoML leaves
   about 570,000 objects that live as long as the worker, and a full collection walked them
   each time (250-300 ms). :func:`freeze_startup_heap` moves them out of the collector's
   sight once the model is loaded (``gc.freeze``, as Instagram did for its Django workers).
"""
from __future__ import annotations

import asyncio
import gc
import logging
from typing import Any

log = logging.getLogger(__name__)


def cancel_finished_request_timers() -> None:
    """Give BentoML's ``TimeoutMiddleware`` a ``__call__`` that cancels the request's timer
    when the request is done: the same steps otherwise (a 504 when no answer has started
    within the timeout). Idempotent; skipped if BentoML's middleware has changed shape."""
    from starlette.responses import JSONResponse

    from serving.http.bentoml_private import TIMEOUT_MIDDLEWARE

    middleware = TIMEOUT_MIDDLEWARE.load()
    if getattr(middleware, "_zoo_cancels_timers", False):
        return
    if not hasattr(middleware, "_set_timer_out"):
        log.debug("BentoML's TimeoutMiddleware has changed; its timers are left as they are")
        return

    async def __call__(self: Any, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        timer = loop.call_later(self.timeout, self._set_timer_out, waiter)

        async def _send(message: dict) -> None:
            if not waiter.done():
                waiter.set_result(None)
            await send(message)

        answer = asyncio.ensure_future(self.app(scope, receive, _send), loop=loop)
        try:
            try:
                await waiter
            except asyncio.TimeoutError:
                if answer.cancel():
                    await JSONResponse({"error": f"Not able to process the request in "
                                                 f"{self.timeout} seconds"},
                                       status_code=504)(scope, receive, send)
            else:
                await answer
        finally:
            timer.cancel()

    middleware.__call__ = __call__  # type: ignore[method-assign]
    middleware._zoo_cancels_timers = True  # type: ignore[attr-defined]


def freeze_startup_heap() -> None:
    """Collect once, then move every object alive now (imports, the model, the gallery) to
    the permanent generation, so later full collections walk only what requests made."""
    gc.collect()
    gc.freeze()
    log.debug("froze %d start-up objects out of the garbage collector's walks",
              gc.get_freeze_count())
