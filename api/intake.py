"""Reading a request's spec within limits and checking it against the registry, the model's
manifest and the tenant's limits, and the job's cost estimate (`api.submit` turns a checked
request into a job)."""
from __future__ import annotations

import json
import re
import uuid

import numpy as np
from flask import request

from api import auth, connections, records
from api.errors import ApiError
from shared import methods as registry
from shared.jobs import LimitExceeded
from shared.schemas import shortcut_passes

JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')


def new_id() -> str:
    return uuid.uuid4().hex


def parse_json(raw: bytes | str, what: str):
    """JSON within the size and depth limits, checked before parsing; no NaN or Infinity."""
    s = connections.get().settings
    raw = raw.encode() if isinstance(raw, str) else raw
    if len(raw) > s.max_json_mb * 2**20:
        raise ApiError(413, f"{what} is larger than {s.max_json_mb} MB")
    plain = np.frombuffer(JSON_STRING.sub(b'""', raw), np.uint8)   # brackets outside strings
    depth = np.cumsum(np.isin(plain, (91, 123)).astype(np.int32) - np.isin(plain, (93, 125)))
    if len(depth) and depth.max() > s.max_json_depth:
        raise ApiError(400, f"{what} is nested deeper than {s.max_json_depth} levels")
    try:
        return json.loads(raw, parse_constant=_no_constants)
    except (ValueError, RecursionError) as e:
        raise ApiError(400, f"{what} is not valid JSON: {str(e)[:200]}") from None


def _no_constants(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def parse_spec(model, raw: bytes, what: str):
    """A spec from JSON bytes, validated by the pydantic `model`."""
    body = parse_json(raw, what)
    if not isinstance(body, dict):
        raise ApiError(400, "the spec must be a JSON object")
    return model.model_validate(body)


def job_model(spec) -> tuple[dict, str]:
    """The spec's model, ready, with the spec's methods checked against it: (manifest, scope)."""
    info, scope = ready_model(spec.model)
    check_methods(spec.methods, info)
    return info, scope


def read_spec(model):
    """The spec (validated by the pydantic `model`) from a multipart field `spec` or a
    JSON body, plus the uploaded files."""
    if request.mimetype == "multipart/form-data":
        raw = request.form.get("spec")
        if raw is None:
            raise ApiError(400, "multipart requests need a form field 'spec' holding the JSON spec")
        body = parse_json(raw, "the 'spec' field")
        files = [f for key in request.files for f in request.files.getlist(key)]
    elif request.mimetype == "application/json":
        limit = connections.get().settings.max_json_mb * 2**20
        body = parse_json(request.stream.read(limit + 1), "the JSON body")
        files = []
    else:
        raise ApiError(400, "send multipart/form-data with images and a 'spec' field, or a JSON body")
    if not isinstance(body, dict):
        raise ApiError(400, "the spec must be a JSON object")
    return model.model_validate(body), files


def read_query(model):
    """The query string, validated by the pydantic `model` (422 on a bad value)."""
    return model.model_validate(request.args.to_dict())


def check_count(n: int, what: str = "a job") -> None:
    limit = connections.get().settings.max_images_per_job
    if n > limit:
        raise ApiError(413, f"{n} images; {what} takes at most {limit}")


def ready_model(name: str) -> tuple[dict, str]:
    """The model's current manifest and its owner ('tenant' or 'shared'); 409 unless ready."""
    info, scope = records.find_model(name)
    if info["status"] != "ready":
        raise ApiError(409, f"model {name!r} is {info['status']}" + (f": {info['error']}" if info.get("error") else ""))
    return info, scope


def check_methods(methods: dict[str, dict], info: dict) -> None:
    """Each method's own rules (layers, filters, hooks) against the model's manifest."""
    for name, params in methods.items():
        try:
            registry.get(name).check(params, info)
        except ValueError as e:
            raise ApiError(422, str(e)) from None


def resolve_label(lab, i: int, classes: list[str]) -> int:
    """A label as a class index (given as an index or a class name); 422 otherwise."""
    if isinstance(lab, str) and lab in classes:
        return classes.index(lab)
    if isinstance(lab, int) and not isinstance(lab, bool) and 0 <= lab < len(classes):
        return lab
    raise ApiError(422, f"labels[{i}]: {str(lab)[:100]!r} is not a class index 0..{len(classes) - 1} or a class name")


def estimate(methods: dict, info: dict, n: int, units: int, options: dict | None = None) -> float:
    """The job's cost in GFLOP: forward passes (registry costs, plus an audit's faithfulness,
    quality metrics, sanity checks and shortcut tests, plus one prediction per image) x the model's
    GFLOP per image."""
    passes = n + sum(registry.get(m).cost(p, n, units, info) for m, p in methods.items())
    if options is not None:
        passes += n * len(methods) * 4 * (options["faithfulness_steps"] + 1)
        runs = options["correlation_runs"]
        passes += n * len(methods) * (runs + 1) if runs else 0       # faithfulness correlation: one pass per run
        noisy = min(n, options["sensitivity_sample"]) * options["sensitivity_perturbations"]
        passes += sum(registry.get(m).cost(p, noisy, min(units, noisy), info) for m, p in methods.items())  # re-explained
        layers = max(1, sum(1 for layer in info.get("layers", []) if layer.get("out_channels")))
        sample = min(n, options["sanity_sample"])
        passes += sum(layers * registry.get(m).cost(p, sample, 1, info) for m, p in methods.items())
        if options.get("shortcuts", True):
            passes += shortcut_passes(options["shortcut_candidates"], options["shortcut_images"],
                                      options["shortcut_controls"], n)
    return float(passes) * float(info.get("gflops") or 1.0)


def admit_cost(gflop: float, units: int) -> dict:
    """413 when the job alone passes the tenant's limits; 429 when the tenant's queued work
    would (a check before anything is stored; `jobs.create` checks again atomically)."""
    c, tenant = connections.get(), auth.current().tenant
    limits = c.tenants.limits(tenant)
    if gflop > limits["max_job_gflop"]:
        raise ApiError(413, f"the job's estimated cost is {gflop:.3g} GFLOP; a job may cost at most "
                            f"{limits['max_job_gflop']:.3g}", {"estimate": gflop, "limit": limits["max_job_gflop"]})
    if units > limits["max_tenant_units"]:
        raise ApiError(413, f"the job has {units} work units; at most {limits['max_tenant_units']:g} may be queued "
                            "(use a larger unit_size)", {"units": units, "limit": limits["max_tenant_units"]})
    usage = c.jobs.usage(tenant)
    for what, adding, limit in (("jobs", 1, "max_tenant_jobs"), ("units", units, "max_tenant_units"),
                                ("gflop", gflop, "max_tenant_gflop")):
        if usage[what] + adding > limits[limit]:
            too_busy(LimitExceeded(what, usage[what], adding, limits[limit]))
    return limits


def too_busy(e: LimitExceeded):
    raise ApiError(429, f"your queued and running work would pass a limit: {e}; try again when some has finished",
                   {"limit": e.what, "in_use": e.current, "adding": e.adding, "max": e.limit},
                   headers={"Retry-After": "30"})
