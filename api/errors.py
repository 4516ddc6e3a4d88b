"""Every error is JSON: {"error": {"code", "message", "details"}}. Redis or storage being
down or hung is a 503 with Retry-After, never a 500."""
from __future__ import annotations

import urllib3
from flask import Flask, jsonify
from kombu.exceptions import OperationalError
from minio.error import InvalidResponseError, ServerError
from pydantic import ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from werkzeug.exceptions import HTTPException

from shared.storage import StorageUnavailable

UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, StorageUnavailable, urllib3.exceptions.HTTPError,
               ServerError, InvalidResponseError, OperationalError, ConnectionError, TimeoutError)
RETRY_AFTER_S = 5


class ApiError(Exception):
    def __init__(self, code: int, message: str, details=None, headers: dict | None = None):
        super().__init__(message)
        self.code, self.message, self.details, self.headers = code, message, details, headers or {}


def error_response(code: int, message: str, details=None, headers: dict | None = None):
    return jsonify({"error": {"code": code, "message": message, "details": details}}), code, headers or {}


def validation_details(e: ValidationError) -> list[dict]:
    return [{"loc": ".".join(str(p) for p in err["loc"]), "message": err["msg"]} for err in e.errors()]


def validation_message(e: ValidationError) -> str:
    return "; ".join(f"{d['loc'] or 'body'}: {d['message']}" for d in validation_details(e))[:2000]


def init_app(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api(e: ApiError):
        return error_response(e.code, e.message, e.details, e.headers)

    @app.errorhandler(ValidationError)
    def _validation(e: ValidationError):
        return error_response(422, validation_message(e), validation_details(e)[:50])

    @app.errorhandler(HTTPException)
    def _http(e: HTTPException):
        messages = {
            404: "not found: see /docs for the API",
            405: "method not allowed on this path",
            413: f"request too large: the limit is {app.config.get('MAX_CONTENT_LENGTH', 0) // 2**20} MB, "
                 f"{app.config.get('MAX_FORM_PARTS')} files and fields per request",
        }
        resp = error_response(e.code or 500, messages.get(e.code, e.description))
        if e.code == 405 and getattr(e, "valid_methods", None):
            resp[2]["Allow"] = ", ".join(e.valid_methods)
        return resp

    @app.errorhandler(RecursionError)
    def _deep(e: RecursionError):
        return error_response(400, "the request is nested too deeply")

    @app.errorhandler(Exception)
    def _internal(e: Exception):
        if isinstance(e, UNAVAILABLE):
            app.logger.warning("backend unavailable: %r", e)
            return error_response(503, "storage or the job store is unavailable; try again shortly",
                                  headers={"Retry-After": str(RETRY_AFTER_S)})
        app.logger.exception("unhandled error")
        return error_response(500, f"internal error: {type(e).__name__}")
