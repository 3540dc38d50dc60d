"""A steady heap for the fuzz tests' thousands of requests.

- django.request's "Bad Request"/"Not Found" warnings (one per refused case) are not logged: pytest keeps every
  captured record until the test ends, and each holds its request (environ, POST data, user, session), so the
  heap grew by ~300 objects a request and each full garbage collection walked all of them. A 5xx is still
  logged (ERROR), and the tests find those by status and traceback anyway.
- What exists when the requests start (Django, the URL map, schemathesis, the seeded objects) is frozen out of
  the garbage collector's walks (gc.freeze): it lives to the end of the test and is never garbage.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def steady_heap() -> Iterator[None]:
    logger = logging.getLogger("django.request")
    level = logger.level
    logger.setLevel(logging.ERROR)
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
        logger.setLevel(level)
