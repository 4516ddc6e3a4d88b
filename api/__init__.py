"""The xaiq HTTP API: `create_app()` (Flask app factory)."""
from __future__ import annotations

from flask import Flask

from shared.backends import start_reaper
from shared.settings import Settings, get_settings


def create_app(settings: Settings | None = None, reaper: bool = True) -> Flask:
    from api import (audits, auth, connections, docs, errors, health, jobs, keys, methods, metrics, models, openapi,
                     results, ui, uploads)

    settings = settings or get_settings()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_mb * 2**20
    app.config["MAX_FORM_PARTS"] = settings.max_images_per_job + 16         # files and fields of one request
    app.config["MAX_FORM_MEMORY_SIZE"] = settings.max_json_mb * 2**20       # the `spec` field
    app.json.sort_keys = False
    connections.init_app(app, settings)
    errors.init_app(app)
    auth.init_app(app)
    metrics.init_app(app)
    for bp in (health.bp, jobs.bp, results.bp, models.bp, methods.bp, audits.bp, uploads.bp, keys.bp, ui.bp, docs.bp):
        app.register_blueprint(bp)
    openapi.init_app(app)
    if reaper:
        start_reaper(app.extensions["xaiq"])   # the backstop of the workers' reapers
    return app
