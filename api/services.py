"""The API's clients of Redis, storage and Celery, kept in `app.extensions`."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from celery import Celery
from flask import Flask, current_app

from shared.celery_app import make_celery
from shared.jobs import JobStore
from shared.settings import Settings
from shared.storage import Storage, storage


@dataclass
class Services:
    settings: Settings

    @property
    def storage(self) -> Storage:
        return storage(self.settings)  # one per process, also under gunicorn's fork

    @cached_property
    def jobs(self) -> JobStore:
        return JobStore(self.settings)

    @cached_property
    def celery(self) -> Celery:
        return make_celery(self.settings)


def init_app(app: Flask, settings: Settings) -> None:
    app.extensions["xaiq"] = Services(settings)


def get() -> Services:
    return current_app.extensions["xaiq"]
