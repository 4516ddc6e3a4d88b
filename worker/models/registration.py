"""A registered model version checked by the confined inspection (`sandbox`), and the
result recorded in its manifest and in the model's current manifest."""
from __future__ import annotations

import hashlib
import json
import logging

from shared.settings import Settings
from shared.storage import Keys, Storage
from worker.compute.client import inspect_untrusted

log = logging.getLogger("xaiq.worker")
RESULT = ("status", "error", "layers", "hooks", "parameters", "gflops")


def checked(r, info: dict, data: bytes, s: Settings) -> dict:
    """The confined inspection's result; a `ready` one is remembered by what it depends on
    (the weights and how they are read), so the same model registered again, under any
    name or tenant, is ready at once."""
    basis = {k: info.get(k) for k in ("format", "architecture", "input", "preprocess")} | {"classes": len(info["classes"])}
    key = "xaiq:inspected:" + hashlib.sha256(data + json.dumps(basis, sort_keys=True).encode()).hexdigest()
    if r is not None and (hit := r.get(key)):
        return json.loads(hit)
    result = inspect_untrusted(info, data, timeout_s=s.model_inspect_timeout_s, memory_mb=s.model_inspect_memory_mb,
                               warm=s.model_inspect_warm)
    if r is not None and result.get("status") == "ready":
        r.set(key, json.dumps(result), ex=7 * 24 * 3600)
    return result


def inspect_version(st: Storage, keys: Keys, name: str, version: str, s: Settings, r=None) -> dict:
    info = st.get_json(keys.version(name, version))
    result = checked(r, info, st.get(keys.weights(name, version)), s)
    info.update({k: result.get(k) for k in RESULT if k in result})
    if info["status"] != "ready":
        info.update(layers=[], error=result.get("error") or "the model could not be inspected")
    st.put_json(keys.version(name, version), info)
    current = st.get_json_or_none(keys.model(name))
    if current is not None:
        versions = [{**v, "status": info["status"], "error": info.get("error")} if v["version"] == version else v
                    for v in current.get("versions", [])]
        current = {**info, "versions": versions} if current.get("version") == version else {**current, "versions": versions}
        st.put_json(keys.model(name), current)
    log.info("model %s version %s: %s %s", name, version, info["status"], info.get("error") or "")
    return info
