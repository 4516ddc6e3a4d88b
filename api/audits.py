"""/v1/audits: audit a whole dataset (filled in with the audit pipeline)."""
from __future__ import annotations

from flask import Blueprint

bp = Blueprint("audits", __name__, url_prefix="/v1/audits")
