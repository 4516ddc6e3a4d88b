"""The `xaiq` command line as a new user meets it: help on every flag, one-line errors
with hints, job ids by prefix, models as tables, labels and names, folders scanned with
a report of what was skipped, tenants' keys and limits."""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.conftest import wait_final

ROOT = Path(__file__).resolve().parents[2]


def xaiq(capsys, monkeypatch, key: str, *argv: str) -> tuple[int, str]:
    code, out, _ = xaiq_err(capsys, monkeypatch, key, *argv)
    return code, out


def xaiq_err(capsys, monkeypatch, key: str, *argv: str) -> tuple[int, str, str]:
    from client.cli import main

    monkeypatch.setenv("XAIQ_API_KEY", key)
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_error_line(err: str) -> str:
    """The error: one line, no traceback."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_every_flag_of_every_command_has_help():
    from client.cli import build_parser

    missing = []
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    helped = {c.dest for c in sub._choices_actions if c.help}
    assert helped == set(sub.choices), set(sub.choices) - helped
    for name, parser in sub.choices.items():
        for action in parser._actions:
            if not isinstance(action, argparse._HelpAction) and not (action.help or "").strip():
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, missing


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("argv,code,says", [
    (["submit", "{png}", "--model", "m", "--params", "{{bad"], 2, "--params is not valid JSON"),
    (["submit", "{tmp}/nowhere", "--model", "m"], 2, "no such file or folder: {tmp}/nowhere"),
    (["submit", "{png}", "--model", "m", "--labels", "1,2"], 2, "--labels: 2 label(s) for 1 image(s)"),
    (["submit", "{png}", "--model", "m", "--labels", "{tmp}/labels.txt"], 2, "--labels: no such file"),
    (["register", "{png}", "--spec", "{tmp}/spec.json"], 2, "no such spec file: {tmp}/spec.json"),
    (["register", "{tmp}/w.pt", "--spec", "{png}"], 2, "no such weights file: {tmp}/w.pt"),
    (["status", "abcd", "--server", "http://127.0.0.1:{port}"], 1,
     "cannot reach http://127.0.0.1:{port}: is `xaiq up` running?"),
    (["submit", "{png}", "--model", "m", "--server", "http://127.0.0.1:{port}"], 1, "cannot reach"),
    (["audit", "{tmp}/set.zip", "--model", "m"], 2, "no such file: {tmp}/set.zip"),
    (["audit", "sets/x", "--model", "m", "--option", "novalue", "--server", "http://127.0.0.1:{port}"], 2,
     "--option 'novalue': give key=value"),
    (["keys", "create"], 2, "keys create needs --tenant"),
    (["down", "--dir", "{tmp}/nostack"], 1, "no stack in {tmp}/nostack"),
])
def test_errors_are_one_line_with_a_hint(capsys, monkeypatch, tmp_path, argv, code, says):
    from client.cli import main

    png = tmp_path / "a.png"
    png.write_bytes(b"\x89PNG")
    fill = {"png": str(png), "tmp": str(tmp_path), "port": str(free_port())}
    monkeypatch.delenv("XAIQ_SERVER", raising=False)
    rc = main([a.format(**fill) for a in argv])
    assert rc == code
    assert says.format(**fill) in one_error_line(capsys.readouterr().err)


def test_the_installed_command_prints_no_traceback(tmp_path):
    """The same through a separate process, as a shell runs it."""
    run = subprocess.run([sys.executable, "-m", "client.cli", "submit", str(tmp_path / "missing"), "--model", "m"],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT,
                         check=False)
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.strip() == f"error: no such file or folder: {tmp_path / 'missing'}"


def test_api_errors_print_their_message_as_it_comes(stack, tenant_key, digits_model, capsys, monkeypatch, tmp_path):
    for name, png in [("a.png", b"x")]:
        (tmp_path / name).write_bytes(png)
    code, _, err = xaiq_err(capsys, monkeypatch, tenant_key, "status", "0" * 32, "--server", stack.api_url)
    assert code == 1 and one_error_line(err) == f"error: unknown job {'0' * 32!r}"
    answer = requests.post(f"{stack.api_url}/v1/jobs", json={"model": "digits-cnn", "methods": {"nosuch": {}}},
                           headers={"Authorization": f"Bearer {tenant_key}"}, timeout=10)
    assert answer.status_code == 422
    code, _, err = xaiq_err(capsys, monkeypatch, tenant_key, "submit", str(tmp_path), "--model", "digits-cnn",
                            "--method", "nosuch", "--server", stack.api_url)
    assert code == 1 and one_error_line(err) == f"error: {answer.json()['error']['message']}"


def test_results_into_a_closed_pipe_end_quietly(stack, client, tenant_key, digits_model, digit_pngs):
    """`xaiq results JOB | head`: the reader goes away; no traceback, no message."""
    job = client.submit(digit_pngs[0][:8], model="digits-cnn")
    wait_final(client, job)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XAIQ_API_KEY": tenant_key, "XAIQ_SERVER": stack.api_url}
    shell = subprocess.run(f"{sys.executable} -m client.cli results {job[:10]} | head -c 10",
                           shell=True, capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    assert shell.returncode == 0 and len(shell.stdout) == 10 and shell.stderr == ""
    proc = subprocess.Popen([sys.executable, "-m", "client.cli", "results", job], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, cwd=ROOT)
    proc.stdout.close()                   # the reader is gone before the first line
    assert proc.stderr.read() == b"" and proc.wait(60) == 141


def test_job_commands_take_a_unique_prefix(stack, client, tenant_key, digits_model, digit_pngs, capsys, monkeypatch):
    job = client.submit(digit_pngs[0][:2], model="digits-cnn", name="prefixed")
    server = ["--server", stack.api_url]
    prefix = next(job[:n] for n in range(6, 33) if all(not j["id"].startswith(job[:n]) or j["id"] == job
                                                      for j in client.jobs(500)))
    code, out = xaiq(capsys, monkeypatch, tenant_key, "wait", prefix, *server)
    assert code == 0 and out.strip() == f"{job} succeeded: 2/2 done, 0 failed"
    code, out = xaiq(capsys, monkeypatch, tenant_key, "status", prefix, *server)
    assert code == 0 and f"job {job}" in out and "prefixed" in out and "2/2 done" in out
    code, out = xaiq(capsys, monkeypatch, tenant_key, "status", prefix, "--json", *server)
    assert json.loads(out)["id"] == job
    code, out = xaiq(capsys, monkeypatch, tenant_key, "results", prefix, *server)
    assert [json.loads(line)["index"] for line in out.splitlines()] == [0, 1]
    code, out = xaiq(capsys, monkeypatch, tenant_key, "cancel", prefix, *server)
    assert code == 0 and out.strip() == f"{job} succeeded"      # cancelling a finished job changes nothing
    code, _, err = xaiq_err(capsys, monkeypatch, tenant_key, "status", "fffffffffffffffffffffffffffffff", *server)
    assert code == 1 and "no job of yours starts with" in one_error_line(err)


def test_an_ambiguous_prefix_lists_the_candidates(stack, admin, digits_model, digit_pngs, capsys, monkeypatch):
    key = admin.create_key("ambiguous", "tests")["key"]
    from client.sdk import Client

    c = Client(stack.api_url, key)
    jobs = [c.submit(digit_pngs[0][:1], model="digits-cnn") for _ in range(17)]
    first = next(j[0] for j in jobs if sum(k[0] == j[0] for k in jobs) > 1)
    code, _, err = xaiq_err(capsys, monkeypatch, key, "status", first, "--server", stack.api_url)
    assert code == 1 and "Traceback" not in err
    assert err.startswith(f"error: {sum(j[0] == first for j in jobs)} jobs start with '{first}'")
    assert all(j in err for j in jobs if j[0] == first)
    for job in jobs:
        wait_final(c, job)


def test_models_as_a_table_and_one_model_in_words(stack, tenant_key, digits_model, capsys, monkeypatch):
    server = ["--server", stack.api_url]
    code, out = xaiq(capsys, monkeypatch, tenant_key, "models", *server)
    header, *rows = out.splitlines()
    assert code == 0 and header.split() == ["NAME", "STATUS", "FORMAT", "CLASSES", "INPUT", "VERSIONS", "SHARED"]
    row = next(r.split() for r in rows if r.startswith("digits-cnn "))
    assert row[1:5] == ["ready", "safetensors", "10", "1x32x32"] and row[6] == "yes"
    code, out = xaiq(capsys, monkeypatch, tenant_key, "models", "digits-cnn", *server)
    assert code == 0 and "classes  10: 0, 1, 2" in out and digits_model["version"][:16] in out
    assert "PATH" in out and any(line.split()[:2] == ["cnn.4", "Conv2d"] for line in out.splitlines())
    code, out = xaiq(capsys, monkeypatch, tenant_key, "models", "--json", *server)
    assert any(m["name"] == "digits-cnn" for m in json.loads(out))


def test_register_prints_a_summary_and_conflicts_say_use_replace(stack, tenant_key, capsys, monkeypatch, tmp_path):
    from worker.models import digits

    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({**digits.manifest(), "name": "cli-digits"}))
    weights = str(digits.WEIGHTS / "digits-cnn.safetensors")
    server = ["--server", stack.api_url]
    code, out = xaiq(capsys, monkeypatch, tenant_key, "register", weights, "--spec", str(spec), *server)
    assert code == 0 and out.startswith("model cli-digits (version ") and "is ready: 10 classes, input 1x32x32" in out
    code, _, err = xaiq_err(capsys, monkeypatch, tenant_key, "register", weights, "--spec", str(spec), *server)
    line = one_error_line(err)
    assert code == 1 and "use --replace" in line and "replace=1" not in line
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not weights")
    code, out, err = xaiq_err(capsys, monkeypatch, tenant_key, "register", str(bad), "--spec", str(spec), "--replace",
                              "--json", *server)
    assert code == 1 and json.loads(out)["status"] == "invalid" and "the model is invalid" in one_error_line(err)


def test_submit_scans_folders_reports_what_it_skipped_and_takes_labels(stack, client, tenant_key, digits_model,
                                                                       digit_pngs, capsys, monkeypatch, tmp_path):
    (tmp_path / "set" / "deep" / "deeper").mkdir(parents=True)
    (tmp_path / "set" / ".git").mkdir()
    names = ["set/a.png", "set/deep/b.png", "set/deep/deeper/c.png"]
    for name, (_, png) in zip(names, digit_pngs[0]):
        (tmp_path / name).write_bytes(png)
    (tmp_path / "set" / "notes.txt").write_text("x")
    (tmp_path / "set" / ".hidden.png").write_bytes(digit_pngs[0][5][1])
    (tmp_path / "set" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    (tmp_path / "labels.txt").write_text("0\n1\n2\n")
    code, out, err = xaiq_err(capsys, monkeypatch, tenant_key, "submit", str(tmp_path / "set"), "--model", "digits-cnn",
                              "--labels", str(tmp_path / "labels.txt"), "--name", "scanned", "--wait",
                              "--server", stack.api_url)
    assert code == 0, err
    assert "skipped 4 file(s) or folder(s)" in err
    for why in ("notes.txt: not a .png/.jpg/.jpeg file", ".hidden.png: hidden file", ".git: hidden folder",
                "gone.png: unreadable"):
        assert why in err
    job = out.split()[0]
    assert client.status(job)["name"] == "scanned"
    items = list(client.results(job))
    assert [(it["name"], it["target"]) for it in items] == [("a.png", 0), ("b.png", 1), ("c.png", 2)]
    code, out = xaiq(capsys, monkeypatch, tenant_key, "submit", str(tmp_path / "set"), "--model", "digits-cnn",
                     "--labels", "0,one,2", "--server", stack.api_url)
    assert code == 1          # 'one' is no class of the digits: the API's 422


def test_colliding_names_are_refused_but_an_upload_mirrors_the_tree(stack, client, tenant_key, digit_pngs, capsys,
                                                                     monkeypatch, tmp_path):
    for cls, (_, png) in zip(("cat", "dog"), digit_pngs[0]):
        (tmp_path / "tree" / cls).mkdir(parents=True)
        (tmp_path / "tree" / cls / "a.png").write_bytes(png)
    before = len(client.jobs(500))
    code, out, err = xaiq_err(capsys, monkeypatch, tenant_key, "submit", str(tmp_path / "tree"), "--model",
                              "digits-cnn", "--server", stack.api_url)
    assert code == 2 and out == "" and "1 name(s) occur more than once" in err
    assert f"a.png: {tmp_path}/tree/cat/a.png, {tmp_path}/tree/dog/a.png" in err
    assert len(client.jobs(500)) == before
    code, out = xaiq(capsys, monkeypatch, tenant_key, "upload", str(tmp_path / "tree"), "--folder", "sets/x",
                     "--server", stack.api_url)
    assert code == 0 and out.split() == ["sets/x/cat/a.png", "sets/x/dog/a.png"]
    assert {"sets/x/cat/a.png", "sets/x/dog/a.png"} <= set(client.uploads("sets/x"))


def test_skip_invalid_is_asked_of_the_server_and_its_report_printed(stack, tenant_key, digits_model, digit_pngs,
                                                                     capsys, monkeypatch, tmp_path):
    (tmp_path / "good.png").write_bytes(digit_pngs[0][0][1])
    (tmp_path / "bad.png").write_bytes(b"not a png at all")
    code, _, err = xaiq_err(capsys, monkeypatch, tenant_key, "submit", str(tmp_path), "--model", "digits-cnn",
                            "--skip-invalid", "--server", stack.api_url)
    if code != 0 and "skip_invalid" in err:
        pytest.skip(f"this API does not take skip_invalid yet: {one_error_line(err)}")
    assert code == 0, err
    assert "the server skipped 1 file(s):" in err and "bad.png:" in err


def test_audit_options_reach_the_report(stack, tenant_key, digits_model, digit_pngs, capsys, monkeypatch, tmp_path):
    pngs, labels = digit_pngs
    for i in range(6):
        (tmp_path / "set" / str(labels[i])).mkdir(parents=True, exist_ok=True)
        (tmp_path / "set" / str(labels[i]) / f"{i}.png").write_bytes(pngs[i][1])
    code, _, err = xaiq_err(capsys, monkeypatch, tenant_key, "audit", str(tmp_path / "set"), "--model",
                            "digits-cnn", "--faithfulness-steps", "3", "--sanity-sample", "0", "--no-shortcuts",
                            "--seed", "5", "--option", 'precision="fp32"', "--out", str(tmp_path / "report"),
                            "--server", stack.api_url)
    assert code == 0, err
    report = json.loads(next((tmp_path / "report").glob("*/report.json")).read_text())
    set_here = {"faithfulness_steps": 3, "sanity_sample": 0, "shortcuts": False, "seed": 5, "precision": "fp32"}
    assert {k: report["meta"]["options"][k] for k in set_here} == set_here     # the others keep their defaults
    code, _, err = xaiq_err(capsys, monkeypatch, tenant_key, "audit", str(tmp_path / "set"), "--model", "digits-cnn",
                            "--option", "bogus=1", "--server", stack.api_url)
    assert code == 1 and "bogus" in one_error_line(err)


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
    assert code == 1                                        # a tenant's key manages no keys
    code, out = xaiq(capsys, monkeypatch, stack.api_key, "keys", "revoke", key_id, *server)
    assert code == 0 and key_id in out
    assert requests.get(f"{stack.api_url}/v1/usage", headers={"Authorization": f"Bearer {key}"},
                        timeout=10).status_code == 401
