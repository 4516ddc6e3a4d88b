"""The `xaiq` commands of tenants and models against the running stack: keys made, listed,
used and revoked; a tenant's limits set; a model registered and waited for."""
from __future__ import annotations

import json

import requests


def xaiq(capsys, monkeypatch, key: str, *argv: str) -> tuple[int, str]:
    from client.cli import main

    monkeypatch.setenv("XAIQ_API_KEY", key)
    code = main(list(argv))
    return code, capsys.readouterr().out


def test_keys_are_made_listed_used_and_revoked(stack, capsys, monkeypatch):
    server = ["--server", stack.api_url]
    code, out = xaiq(capsys, monkeypatch, stack.api_key, "keys", "create", "--tenant", "cli-tenant", "--name", "ci",
                     *server)
    assert code == 0
    key = out.strip().splitlines()[-1]
    key_id = out.split("(id ")[1].split(")")[0]
    assert requests.get(f"{stack.api_url}/v1/usage", headers={"Authorization": f"Bearer {key}"}, timeout=10).ok
    code, out = xaiq(capsys, monkeypatch, stack.api_key, "keys", "list", *server)
    assert code == 0 and key_id in out and "cli-tenant" in out and key not in out
    code, out = xaiq(capsys, monkeypatch, stack.api_key, "tenants", "cli-tenant", "--max-tenant-jobs", "7", *server)
    assert code == 0 and json.loads(out)["limits"]["max_tenant_jobs"] == 7
    code, out = xaiq(capsys, monkeypatch, key, "keys", "list", *server)
    assert code == 2                                        # a tenant's key manages no keys
    code, out = xaiq(capsys, monkeypatch, stack.api_key, "keys", "revoke", key_id, *server)
    assert code == 0 and key_id in out
    assert requests.get(f"{stack.api_url}/v1/usage", headers={"Authorization": f"Bearer {key}"},
                        timeout=10).status_code == 401


def test_register_waits_for_the_check(stack, tenant_key, capsys, monkeypatch, tmp_path):
    from worker.models import digits

    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({**digits.manifest(), "name": "cli-digits"}))
    code, out = xaiq(capsys, monkeypatch, tenant_key, "register", str(digits.WEIGHTS / "digits-cnn.safetensors"),
                     "--spec", str(spec), "--server", stack.api_url)
    assert code == 0 and json.loads(out)["status"] == "ready"
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not weights")
    code, out = xaiq(capsys, monkeypatch, tenant_key, "register", str(bad), "--spec", str(spec), "--replace",
                     "--server", stack.api_url)
    assert code == 1 and json.loads(out)["status"] == "invalid"
