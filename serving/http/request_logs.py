"""What BentoML logs of a refused request, made safe and short: one line, never the body.

- A body that fails validation: BentoML answers 400, and logs it at ERROR with the
  traceback, whose pydantic message quotes the input (``input_value=...``): rows of personal
  data and image bytes in the server's log, and an ERROR for every bad request a client
  sends. Such a record becomes one INFO line with where each error is and what it is.
- A request BentoML refuses with a 4xx of its own (a form over the limits, a media type it
  does not take): an ERROR with a traceback for what is the client's mistake. Such a record
  becomes one INFO line with the status and the message.
- A client that hangs up before its body is read: Starlette raises ``ClientDisconnect`` and
  BentoML logs an ERROR with a 22-line traceback (590 KB/s of log from one client dropping
  bodies mid-way). Such a record becomes one DEBUG line.
"""
from __future__ import annotations

import logging

from serving.http.bentoml_private import LOG_EXCEPTION

#: the logger of BentoML's ``log_exception`` (its module's logger)
BENTOML_LOGGER = LOG_EXCEPTION.module


class RefusedRequestsInOneLine(logging.Filter):
    """Rewrites records of validation errors and client disconnects; leaves every other
    record alone."""

    def filter(self, record: logging.LogRecord) -> bool:
        from bentoml.exceptions import BentoMLException
        from pydantic import ValidationError
        from starlette.requests import ClientDisconnect

        error = record.exc_info[1] if record.exc_info else None
        given = record.args if isinstance(record.args, tuple) else ()
        path, method = (*given, "?", "?")[:2]
        if isinstance(error, ValidationError):
            where = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}"
                for e in error.errors(include_input=False, include_context=False)[:5])
            record.msg = "400 %s [%s]: %d validation error(s): %s"
            record.args = (path, method, error.error_count(), where[:500])
            level = logging.INFO
        elif isinstance(error, BentoMLException) and 400 <= error.error_code < 500:
            record.msg = "%d %s [%s]: %s"
            record.args = (int(error.error_code), path, method, str(error)[:300])
            level = logging.INFO
        elif isinstance(error, ClientDisconnect):
            record.msg = "%s [%s]: the client hung up before its request was read"
            record.args = (path, method)
            level = logging.DEBUG
        else:
            return True
        record.levelno, record.levelname = level, logging.getLevelName(level)
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        return logging.getLogger(record.name).isEnabledFor(level)


def install() -> None:
    LOG_EXCEPTION.load()  # the module whose logger this filters is still there
    logger = logging.getLogger(BENTOML_LOGGER)
    if not any(isinstance(f, RefusedRequestsInOneLine) for f in logger.filters):
        logger.addFilter(RefusedRequestsInOneLine())
