"""The API's clients of Redis, storage and Celery, kept in `app.extensions`."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from celery import Celery
from flask import Flask, current_app

from shared.backends import Backends
from shared.messaging import make_celery


@dataclass
class Clients(Backends):
    @cached_property
    def celery(self) -> Celery:
        return make_celery(self.settings)


def init_app(app: Flask, settings) -> None:
    app.extensions["xaiq"] = Clients(settings)


def get() -> Clients:
    return current_app.extensions["xaiq"]
