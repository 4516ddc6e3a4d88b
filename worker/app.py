"""The worker entry: `celery -A worker.app worker --concurrency 1` (it consumes XAIQ_QUEUE).

CUDA does not survive fork: nothing here touches the device; each worker child
initialises torch lazily when its first unit arrives."""
from __future__ import annotations

import ctypes
import ctypes.util

from shared.messaging import make_celery
from shared.settings import get_settings


def not_dumpable() -> None:
    """Other processes of this user (an uploaded model being inspected, when the worker
    cannot switch it to another user) may not read this process's environment or memory
    under /proc: the storage credentials live there."""
    try:
        ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).prctl(4, 0, 0, 0, 0)   # PR_SET_DUMPABLE, 0
    except (OSError, AttributeError):
        pass


not_dumpable()   # forked pool children inherit it
app = make_celery(get_settings())

from worker import tasks  # noqa: E402,F401  (registers the tasks on `app`)
