"""The API's connections (Redis, storage, Celery), kept in `app.extensions`. The API is
impatient: an outage answers 503 at once rather than holding a request thread."""
from __future__ import annotations

from flask import Flask, current_app

from shared.backends import Backends


def init_app(app: Flask, settings) -> None:
    app.extensions["xaiq"] = Backends(settings, patient=False)


def get() -> Backends:
    return current_app.extensions["xaiq"]
