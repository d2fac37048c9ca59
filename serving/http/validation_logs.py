"""A request BentoML refuses as invalid is logged at INFO, in one line, without its body.

BentoML answers a body that fails validation with a 400, and logs it at ERROR with the
traceback, whose pydantic message quotes the input (``input_value=...``): rows of personal
data and image bytes in the server's log, and an ERROR for every bad request a client sends.
Here such a record becomes one INFO line with where each error is and what it is, never the
value.
"""
from __future__ import annotations

import logging

from serving.http.bentoml_private import LOG_EXCEPTION

#: the logger of BentoML's ``log_exception`` (its module's logger)
BENTOML_LOGGER = LOG_EXCEPTION.module


class ValidationErrorsAtInfo(logging.Filter):
    """Rewrites records of pydantic ``ValidationError``s; leaves every other record alone."""

    def filter(self, record: logging.LogRecord) -> bool:
        from pydantic import ValidationError

        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, ValidationError):
            return True
        where = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}"
                          for e in error.errors(include_input=False, include_context=False)[:5])
        given = record.args if isinstance(record.args, tuple) else ()
        path, method = (*given, "?", "?")[:2]
        record.msg = "400 %s [%s]: %d validation error(s): %s"
        record.args = (path, method, error.error_count(), where[:500])
        record.levelno, record.levelname = logging.INFO, "INFO"
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        return logging.getLogger(record.name).isEnabledFor(logging.INFO)


def install() -> None:
    LOG_EXCEPTION.load()  # the module whose logger this filters is still there
    logger = logging.getLogger(BENTOML_LOGGER)
    if not any(isinstance(f, ValidationErrorsAtInfo) for f in logger.filters):
        logger.addFilter(ValidationErrorsAtInfo())
