"""The xaiq HTTP API: `create_app()` (Flask app factory)."""
from __future__ import annotations

from flask import Flask

from shared.settings import Settings, get_settings


def create_app(settings: Settings | None = None) -> Flask:
    from api import audits, auth, clients, docs, errors, health, jobs, metrics, models, openapi, ui

    settings = settings or get_settings()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_mb * 2**20
    app.json.sort_keys = False
    clients.init_app(app, settings)
    errors.init_app(app)
    auth.init_app(app)
    metrics.init_app(app)
    for bp in (health.bp, jobs.bp, models.bp, audits.bp, ui.bp, docs.bp):
        app.register_blueprint(bp)
    openapi.init_app(app)
    return app
