"""Every error is JSON: {"error": {"code", "message", "details"}}."""
from __future__ import annotations

from flask import Flask, jsonify
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException


class ApiError(Exception):
    def __init__(self, code: int, message: str, details=None):
        super().__init__(message)
        self.code, self.message, self.details = code, message, details


def error_response(code: int, message: str, details=None):
    return jsonify({"error": {"code": code, "message": message, "details": details}}), code


def validation_details(e: ValidationError) -> list[dict]:
    return [{"loc": ".".join(str(p) for p in err["loc"]), "message": err["msg"]} for err in e.errors()]


def validation_message(e: ValidationError) -> str:
    return "; ".join(f"{d['loc'] or 'body'}: {d['message']}" for d in validation_details(e))


def init_app(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api(e: ApiError):
        return error_response(e.code, e.message, e.details)

    @app.errorhandler(ValidationError)
    def _validation(e: ValidationError):
        return error_response(422, validation_message(e), validation_details(e))

    @app.errorhandler(HTTPException)
    def _http(e: HTTPException):
        messages = {
            404: "not found: see /docs for the API",
            405: "method not allowed on this path",
            413: f"request too large: the limit is {app.config.get('MAX_CONTENT_LENGTH', 0) // 2**20} MB",
        }
        return error_response(e.code or 500, messages.get(e.code, e.description))

    @app.errorhandler(Exception)
    def _internal(e: Exception):
        app.logger.exception("unhandled error")
        return error_response(500, f"internal error: {type(e).__name__}")
