"""Static checks of the deployment files: compose files, Dockerfiles, .env.example, k8s.

Settings have their defaults in one place, shared/settings.py: a deploy file gives only
what must differ there (addresses, devices) and the secrets. So every XAIQ_* name in a deploy
file is a setting, every value it gives is valid, and a value equal to the default is a copy
to drop (copies drift: this file once required them, and they went stale).

Needs the `docker-compose` binary (validates without a Docker engine):
    apt-get install -y --no-install-recommends docker-compose     # Debian, v1.29
Run: .venv/bin/python -m pytest tests/deploy
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
MULTIHOST = ROOT / "deploy" / "compose.multihost.yml"
WORKER_HOST = ROOT / "deploy" / "compose.worker-host.yml"
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
ENV_EXAMPLE = ROOT / ".env.example"
# Every file that names settings, prose included (a stale name there misleads as much).
DEPLOY_TEXTS = [COMPOSE, MULTIHOST, WORKER_HOST, ENV_EXAMPLE, DEPLOY / "SCALING.md",
                *sorted(K8S.glob("*.yaml")), *sorted(DEPLOY.glob("Dockerfile.*"))]
XAIQ_NAME = re.compile(r"\bXAIQ_[A-Z0-9_]*[A-Z0-9]\b")

# The secrets compose refuses to start without.
SECRETS = {
    "XAIQ_S3_ACCESS_KEY": "xaiq-admin",
    "XAIQ_S3_SECRET_KEY": "test-secret-123456",
    "XAIQ_API_KEY": "test-api-key",
}
# The test project's .env (compose passes it whole to the API and the workers): a setting
# changed, and an address that compose's own must win over.
DOTENV = "XAIQ_UNIT_GFLOP=500\nXAIQ_REDIS_URL=redis://from-dotenv:6379/0\n"
# Each compose file set under test: (files, extra required env).
FILESETS = {
    "single-host": ([COMPOSE], {}),
    "multihost": ([COMPOSE, MULTIHOST], {"REDIS_PASSWORD": "0123abcd"}),
    "worker-host": ([WORKER_HOST], {"XAIQ_REDIS_URL": "redis://:pw@10.0.0.5:6379/0",
                                    "XAIQ_S3_ENDPOINT": "http://10.0.0.5:9000"}),
}
# Variables compose reads from the environment / .env besides the XAIQ_* ones.
COMPOSE_ONLY_VARS = {"IMAGE_TAG", "API_PORT", "API_WORKERS", "MINIO_PORT",
                     "MINIO_CONSOLE_PORT", "FLOWER_PORT", "REDIS_PASSWORD", "REDIS_BIND"}


# --------------------------------------------------------------------------- helpers

@pytest.fixture(scope="session")
def compose_bin() -> str:
    path = shutil.which("docker-compose")
    if path is None:
        pytest.fail(
            "docker-compose is not installed; these tests need it (no Docker engine needed). "
            "Install: apt-get update && apt-get install -y --no-install-recommends docker-compose"
        )
    return path


def _clean_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("XAIQ_", "COMPOSE_")) and k not in COMPOSE_ONLY_VARS}
    env.update(extra)
    return env


def project(tmp_path: Path, dotenv: str = DOTENV, edit=lambda text: text) -> Path:
    """A copy of the compose files with a .env of its own: a developer's .env must not make
    the tests pass or fail. `edit` changes docker-compose.yml's text."""
    (tmp_path / "deploy").mkdir(exist_ok=True)
    (tmp_path / "docker-compose.yml").write_text(edit(COMPOSE.read_text()))
    for f in (MULTIHOST, WORKER_HOST):
        shutil.copy(f, tmp_path / "deploy" / f.name)
    (tmp_path / ".env").write_text(dotenv)
    return tmp_path


def run_config(compose_bin: str, files: list[Path], env: dict[str, str], tmp_path: Path, **kw):
    """`docker-compose config` of `files` (paths of the repository) in a copy of them."""
    root = project(tmp_path, **kw)
    cmd = [compose_bin, "--env-file", str(root / ".env")]
    for f in files:
        cmd += ["-f", str(root / f.relative_to(ROOT))]
    cmd.append("config")
    return subprocess.run(cmd, cwd=root, env=_clean_env(env), capture_output=True,
                          text=True, timeout=60)


@pytest.fixture(scope="session")
def resolved(compose_bin, tmp_path_factory) -> dict[str, dict]:
    """`docker-compose config` output of each file set, parsed."""
    out = {}
    for name, (files, extra) in FILESETS.items():
        r = run_config(compose_bin, files, {**SECRETS, **extra}, tmp_path_factory.mktemp(name))
        assert r.returncode == 0, f"{name}: docker-compose config failed:\n{r.stderr}"
        out[name] = yaml.safe_load(r.stdout)
    return out


def services(cfg: dict) -> dict[str, dict]:
    return cfg["services"]


def is_worker(svc: dict) -> bool:
    cmd = svc.get("command") or []
    if isinstance(cmd, str):
        cmd = cmd.split()
    return bool(cmd) and cmd[0] == "celery" and "worker" in cmd


def gpu_devices(svc: dict) -> list | None:
    return (((svc.get("deploy") or {}).get("resources") or {}).get("reservations") or {}).get("devices")


def workers(cfg: dict) -> dict[str, dict]:
    return {n: s for n, s in services(cfg).items() if is_worker(s)}


def gpu_workers(cfg: dict) -> dict[str, dict]:
    return {n: s for n, s in workers(cfg).items() if n.startswith("worker-gpu") or gpu_devices(s)}


def env_of(svc: dict) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return env


def seconds(duration) -> float:
    if isinstance(duration, (int, float)):
        return float(duration)
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", str(duration))
    assert parts, f"unparsable duration {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines, buf = [], ""
    for raw in path.read_text().splitlines():
        s = raw.strip()
        if not buf and (not s or s.startswith("#")):
            continue
        if s.startswith("#"):
            continue
        if s.endswith("\\"):
            buf += s[:-1] + " "
            continue
        lines.append(buf + s)
        buf = ""
    if buf:
        lines.append(buf)
    out = []
    for line in lines:
        instr, _, args = line.partition(" ")
        out.append((instr.upper(), args.strip()))
    return out


def pip_install_commands(path: Path) -> list[str]:
    cmds = []
    for instr, args in dockerfile_instructions(path):
        if instr == "RUN":
            cmds += [c.strip() for c in re.split(r"&&|;", args) if re.search(r"\bpip\b.*\binstall\b", c)]
    return cmds


def extras_installed(pip_cmds: list[str]) -> set[str]:
    found = set()
    for c in pip_cmds:
        for m in re.finditer(r"""["']?\.\[([^\]]+)\]["']?""", c):
            found |= {e.strip() for e in m.group(1).split(",")}
    return found


def req_name(req: str) -> str:
    return re.split(r"[\s<>=!~;\[(@]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


# --------------------------------------------------------------------------- compose validity

@pytest.mark.parametrize("fileset", sorted(FILESETS))
def test_compose_config_passes(resolved, fileset):
    # `resolved` ran `docker-compose config` on each file set and asserted rc 0.
    assert services(resolved[fileset])


@pytest.mark.parametrize("missing", sorted(SECRETS))
def test_compose_refuses_without_secret(compose_bin, tmp_path, missing):
    env = {k: v for k, v in SECRETS.items() if k != missing}
    r = run_config(compose_bin, [COMPOSE], env, tmp_path, dotenv="")
    assert r.returncode != 0, f"docker-compose config passed without {missing}"
    assert missing in r.stderr and "set it in .env" in r.stderr, r.stderr


@pytest.mark.parametrize("fileset,missing", [
    ("multihost", "REDIS_PASSWORD"),
    ("worker-host", "XAIQ_REDIS_URL"),
    ("worker-host", "XAIQ_S3_ENDPOINT"),
])
def test_other_compose_files_refuse_without_required(compose_bin, tmp_path, fileset, missing):
    files, extra = FILESETS[fileset]
    env = {k: v for k, v in {**SECRETS, **extra}.items() if k != missing}
    r = run_config(compose_bin, files, env, tmp_path, dotenv="")
    assert r.returncode != 0, f"{fileset}: config passed without {missing}"


def test_compose_rejects_a_misspelled_key(compose_bin, tmp_path):
    """Guards the guard: the validator really validates."""
    def misspell(text):
        assert "stop_grace_period: 30s" in text
        return text.replace("stop_grace_period: 30s", "stop_grace_periods: 30s", 1)

    r = run_config(compose_bin, [COMPOSE], SECRETS, tmp_path, edit=misspell)
    assert r.returncode != 0 and "stop_grace_periods" in r.stderr, r.stderr


# --------------------------------------------------------------------------- services

def test_expected_services(resolved):
    svcs = services(resolved["single-host"])
    for name in ("redis", "minio", "createbuckets", "api", "worker-gpu0", "worker-cpu", "flower"):
        assert name in svcs, f"missing service {name}"
    assert svcs["worker-cpu"].get("profiles") == ["cpu"]
    assert svcs["flower"].get("profiles") == ["monitoring"]
    assert 5555 in container_ports(svcs["flower"])
    assert 8000 in container_ports(svcs["api"])


def container_ports(svc: dict) -> set[int]:
    out = set()
    for p in svc.get("ports", []):
        if isinstance(p, dict):
            out.add(int(p["target"]))
        else:  # "[ip:]host:container[/proto]"
            out.add(int(str(p).split("/")[0].rsplit(":", 1)[-1]))
    return out


def test_images_pinned(resolved):
    for name, svc in services(resolved["single-host"]).items():
        if "build" in svc:
            continue
        image = svc["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: unpinned image {image}"


def test_raw_file_uses_the_anchors():
    raw = COMPOSE.read_text()
    assert "x-gpu-worker: &gpu-worker" in raw
    assert "x-xaiq-env: &xaiq-env" in raw
    doc = yaml.safe_load(raw)
    assert "<<" not in doc["services"]["worker-gpu0"]  # merged by the YAML loader
    assert re.search(r"worker-gpu0:\n\s+<<: \*gpu-worker\n", raw)


@pytest.mark.parametrize("fileset", sorted(FILESETS))
def test_long_running_services_have_healthchecks(resolved, fileset):
    for name, svc in services(resolved[fileset]).items():
        if svc.get("restart") == "no":  # one-shot (createbuckets)
            continue
        hc = svc.get("healthcheck")
        assert hc and not hc.get("disable"), f"{name}: no healthcheck"
        test = hc["test"]
        assert test and test[0] in ("CMD", "CMD-SHELL") and test != ["NONE"], f"{name}: {test}"
        assert svc.get("restart") in ("unless-stopped", "always"), f"{name}: restart policy"
        if is_worker(svc):
            text = " ".join(test[1:])
            assert re.search(r"celery\b.*\binspect ping\b.*-d\s+\S*celery@\$\$?HOSTNAME", text), \
                f"{name}: worker healthcheck must ping its own node: {text}"


def test_infra_healthchecks_and_start_order(resolved):
    svcs = services(resolved["single-host"])
    assert svcs["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert "--appendonly" in svcs["redis"]["command"]
    assert svcs["minio"]["healthcheck"]["test"] == ["CMD", "mc", "ready", "local"]
    assert any(str(v).split(":")[0] == "redis-data" or (isinstance(v, dict) and v.get("source") == "redis-data")
               for v in svcs["redis"]["volumes"])
    # The bucket is made by the code, with the settings the API gets: its name has one default.
    mb = svcs["createbuckets"]
    assert "ensure_bucket()" in " ".join(mb["command"]) and mb["image"] == svcs["api"]["image"]
    assert env_of(mb) == env_of(svcs["api"])
    assert svcs["minio"]["environment"]["MINIO_ROOT_USER"] == SECRETS["XAIQ_S3_ACCESS_KEY"]
    assert svcs["minio"]["environment"]["MINIO_ROOT_PASSWORD"] == SECRETS["XAIQ_S3_SECRET_KEY"]
    for name in ["api", *workers(resolved["single-host"])]:
        deps = svcs[name]["depends_on"]
        assert deps["redis"]["condition"] == "service_healthy", name
        assert deps["minio"]["condition"] == "service_healthy", name
        assert deps["createbuckets"]["condition"] == "service_completed_successfully", name
    hc = " ".join(svcs["api"]["healthcheck"]["test"])
    assert "/healthz" in hc and "urllib" in hc
    assert svcs["api"]["command"][0] == "gunicorn" and "api:create_app()" in svcs["api"]["command"]


# --------------------------------------------------------------------------- GPU workers

@pytest.mark.parametrize("fileset", sorted(FILESETS))
def test_each_gpu_worker_reserves_exactly_one_distinct_gpu(resolved, fileset):
    gws = gpu_workers(resolved[fileset])
    assert gws, "no GPU worker"
    seen: dict[str, str] = {}
    for name, svc in gws.items():
        devices = gpu_devices(svc)
        assert devices and len(devices) == 1, f"{name}: needs exactly one device entry"
        dev = devices[0]
        assert dev.get("driver") == "nvidia", name
        assert "count" not in dev, f"{name}: use device_ids, not count"
        ids = dev.get("device_ids") or []
        assert len(ids) == 1, f"{name}: exactly one device id, got {ids}"
        assert "gpu" in (dev.get("capabilities") or []), f"{name}: capabilities must include gpu"
        gid = str(ids[0])
        assert gid not in seen, f"{name} and {seen.get(gid)} share GPU {gid}"
        seen[gid] = name
        assert env_of(svc)["XAIQ_DEVICE"] == "cuda", name
        cmd = svc["command"]
        assert cmd[cmd.index("--concurrency") + 1] == "1", name


@pytest.mark.parametrize("fileset", sorted(FILESETS))
def test_worker_policies(resolved, fileset):
    limit = Settings.model_fields["task_time_limit_s"].default
    for name, svc in workers(resolved[fileset]).items():
        assert seconds(svc.get("stop_grace_period", "10s")) >= limit, \
            f"{name}: stop_grace_period shorter than a unit may take"
        assert svc.get("restart") == "unless-stopped", name
        cmd = svc["command"]
        assert cmd[:3] == ["celery", "-A", "worker.app"], name
        assert "-Q" not in cmd, f"{name}: the queue comes from XAIQ_QUEUE (a -Q copies it)"
        if name not in gpu_workers(resolved[fileset]):
            assert env_of(svc)["XAIQ_DEVICE"] == "cpu", name
            assert "cpu" in svc.get("profiles", []), f"{name}: CPU workers run under profile cpu"
            # scalable with --scale: no fixed name, no host port
            assert "container_name" not in svc and "ports" not in svc, name
            assert not gpu_devices(svc), name


# --------------------------------------------------------------------------- settings: defaults in one place

def setting_of(name: str) -> str:
    field = name.removeprefix("XAIQ_").lower()
    assert field in Settings.model_fields, f"{name} is no setting of shared/settings.py"
    return field


def check_overrides(where: str, values: dict[str, str]) -> None:
    """The XAIQ_* values a deploy file gives: settings, valid, and none equal to its default."""
    given = {setting_of(n): str(v) for n, v in values.items() if n.startswith("XAIQ_")}
    parsed = Settings(_env_file=None, **given)       # validates types and bounds
    copies = [f"XAIQ_{f.upper()}={given[f]}" for f in given
              if getattr(parsed, f) == Settings.model_fields[f].default]
    assert not copies, (f"{where}: {copies} repeat the defaults of shared/settings.py; drop them "
                        "(deploy files give only what must differ, and the secrets)")


def test_the_check_catches_copies_and_bad_values():
    """Guards the guard: a copied default, an unknown name and a bad value all fail."""
    for values, says in [({"XAIQ_UNIT_RETRIES": "3"}, "repeat the defaults"),
                         ({"XAIQ_UNIT_RETRIES": "4"}, None),
                         ({"XAIQ_MODEL_CACHE_SIZE": "4"}, "no setting"),
                         ({"XAIQ_PNG_LEVEL": "12"}, "less than or equal")]:
        if says is None:
            check_overrides("test", values)
            continue
        with pytest.raises(Exception, match=says):
            check_overrides("test", values)


@pytest.mark.parametrize("path", DEPLOY_TEXTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_xaiq_name_in_deploy_files_is_a_setting(path):
    assert path.exists(), path
    for name in sorted(set(XAIQ_NAME.findall(path.read_text()))):
        setting_of(name)


@pytest.mark.parametrize("path", [COMPOSE, MULTIHOST, WORKER_HOST], ids=lambda p: p.name)
def test_compose_interpolation_defaults_are_no_copies(path):
    """`${XAIQ_X:-value}` gives value where .env does not: a copy unless it differs."""
    defaults = dict(re.findall(r"\$\{(XAIQ_[A-Z0-9_]+):?-([^}]*)\}", path.read_text()))
    check_overrides(path.name, defaults)


@pytest.mark.parametrize("fileset", sorted(FILESETS))
def test_compose_gives_only_overrides_and_secrets(resolved, fileset):
    for name, svc in services(resolved[fileset]).items():
        check_overrides(f"{fileset}/{name}", env_of(svc))


@pytest.mark.parametrize("fileset", sorted(FILESETS))
def test_dotenv_reaches_the_api_and_every_worker(resolved, fileset):
    svcs = services(resolved[fileset])
    readers = [n for n in svcs if n == "api" or is_worker(svcs[n])]
    assert readers and (fileset == "worker-host" or "api" in readers)
    for name in readers:
        assert env_of(svcs[name]).get("XAIQ_UNIT_GFLOP") == "500", f"{fileset}/{name}: .env does not reach it"


def test_compose_gives_the_containers_their_addresses(resolved):
    """Compose's own addresses win over a .env written for processes outside compose."""
    for name in ("api", "worker-gpu0", "worker-cpu", "createbuckets"):
        s = Settings(_env_file=None, **{setting_of(k): v for k, v in
                                         env_of(services(resolved["single-host"])[name]).items()
                                         if k.startswith("XAIQ_")})
        assert (s.redis_url, s.s3_endpoint) == ("redis://redis:6379/0", "http://minio:9000"), name
        assert (s.s3_access_key, s.s3_secret_key, s.api_key) == tuple(SECRETS.values()), name
    worker_host = env_of(services(resolved["worker-host"])["worker-gpu0"])
    assert worker_host["XAIQ_REDIS_URL"] == FILESETS["worker-host"][1]["XAIQ_REDIS_URL"]
    d = Settings.model_fields
    assert d["task_time_limit_s"].default < d["visibility_timeout_s"].default


def test_a_worker_without_dash_q_consumes_the_queue_of_its_settings():
    from shared.messaging import make_celery

    app = make_celery(Settings(_env_file=None, queue="elsewhere"))
    assert list(app.amqp.queues) == ["elsewhere"]


def test_multihost_gives_the_password_url_to_all_redis_clients(resolved):
    svcs = services(resolved["multihost"])
    for name in ["api", *workers(resolved["multihost"])]:
        assert env_of(svcs[name])["XAIQ_REDIS_URL"] == "redis://:0123abcd@redis:6379/0", name
    assert "--requirepass" in " ".join(svcs["redis"]["command"])
    assert env_of(svcs["redis"])["REDISCLI_AUTH"] == "0123abcd"


# --------------------------------------------------------------------------- .env.example

def test_env_example_sets_the_secrets_and_documents_what_it_names():
    text = ENV_EXAMPLE.read_text()
    lines = text.splitlines()
    documented = {}
    for i, line in enumerate(lines):
        m = re.match(r"^#?\s?([A-Z][A-Z0-9_]*)=", line)
        if m:
            documented[m.group(1)] = i
            # each variable has a comment right above it
            assert i > 0 and lines[i - 1].startswith("#"), f"{m.group(1)} has no comment"
    for secret in SECRETS:
        assert re.search(rf"^{secret}=\S+", text, re.M), f"{secret} must be set in .env.example"
    # the settings it sets or shows (examples in comments too): real, valid, no defaults
    check_overrides(".env.example", dict(re.findall(r"\b(XAIQ_[A-Z0-9_]+)=(\S+)", text)))
    referenced = set()
    for path in (COMPOSE, MULTIHOST, WORKER_HOST):
        referenced |= set(re.findall(r"(?<!\$)\$\{([A-Z][A-Z0-9_]*)", path.read_text()))
    missing = sorted(referenced - set(documented))
    assert not missing, f".env.example lacks {missing}"


# --------------------------------------------------------------------------- Dockerfiles

DOCKERFILES = {
    "api": DEPLOY / "Dockerfile.api",
    "worker-gpu": DEPLOY / "Dockerfile.worker-gpu",
    "worker-cpu": DEPLOY / "Dockerfile.worker-cpu",
}


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_dockerfile_basics(kind):
    instrs = dockerfile_instructions(DOCKERFILES[kind])
    froms = [a for i, a in instrs if i == "FROM"]
    assert froms and froms[0].startswith("python:3.11-slim"), froms
    users = [a for i, a in instrs if i == "USER"]
    assert users and users[-1] not in ("root", "0", "0:0"), f"{kind}: must run as non-root"
    assert [i for i, _ in instrs][-1] == "CMD" or "CMD" in [i for i, _ in instrs]


def test_api_dockerfile_installs_no_torch():
    pip = pip_install_commands(DOCKERFILES["api"])
    assert pip, "no pip install in Dockerfile.api"
    for c in pip:
        assert "torch" not in c.lower(), f"torch in an API pip line: {c}"
        assert "download.pytorch.org" not in c
    assert extras_installed(pip) == {"api"}, f"API image must install only the api extra: {pip}"


@pytest.mark.parametrize("kind,index", [("worker-gpu", "download.pytorch.org/whl/cu"),
                                        ("worker-cpu", "download.pytorch.org/whl/cpu")])
def test_worker_dockerfiles_take_torch_from_the_right_index(kind, index):
    path = DOCKERFILES[kind]
    text = path.read_text()
    pip = pip_install_commands(path)
    torch_lines = [c for c in pip if "torch" in c and "--index-url" in c]
    assert torch_lines, f"{kind}: torch must come from an explicit index"
    m = re.search(r"ARG TORCH_INDEX_URL=(\S+)", text)
    url = " ".join(torch_lines) + (m.group(1) if m else "")
    assert index in url, f"{kind}: expected torch from {index}"
    assert extras_installed(pip) == {"worker"}, pip
    # the worker extra must not replace that torch build
    assert any(".[worker]" in c and ("-c " in c or "--constraint" in c) for c in pip), pip


def test_dockerignore_keeps_secrets_and_venv_out():
    entries = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    for must in (".env", ".venv", ".git"):
        assert must in entries, f".dockerignore lacks {must}"


# --------------------------------------------------------------------------- pyproject

HEAVY = {"torch", "torchvision", "captum", "lime", "scikit-image", "skimage"}


def test_api_extra_pulls_no_torch():
    path = ROOT / "pyproject.toml"
    if not path.exists():
        pytest.skip("pyproject.toml not written yet")
    import tomllib

    project = tomllib.loads(path.read_text())["project"]
    extras = project.get("optional-dependencies", {})
    assert "api" in extras and "worker" in extras, "extras api and worker expected"
    # the API image installs core dependencies + the api extra
    for req in [*project.get("dependencies", []), *extras["api"]]:
        name = req_name(req)
        if name == "xaiq":  # self-reference such as xaiq[shared]
            continue
        assert name not in HEAVY, f"{req!r} would put {name} into the API image"


# --------------------------------------------------------------------------- Kubernetes

def k8s_docs() -> list[dict]:
    docs = []
    for f in sorted(K8S.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(f.read_text()) if d]
    return docs


def by_kind(kind: str) -> list[dict]:
    return [d for d in k8s_docs() if d["kind"] == kind]


def test_k8s_worker_has_one_gpu_per_pod():
    deps = {d["metadata"]["name"]: d for d in by_kind("Deployment")}
    worker = deps["xaiq-worker-gpu"]
    (c,) = worker["spec"]["template"]["spec"]["containers"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert c["resources"].get("requests", {}).get("nvidia.com/gpu", 1) == 1
    assert {"name": "XAIQ_DEVICE", "value": "cuda"} in c["env"]
    assert worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= \
        Settings.model_fields["task_time_limit_s"].default
    assert "xaiq-api" in deps
    svc = {d["metadata"]["name"] for d in by_kind("Service")}
    assert "xaiq-api" in svc


def test_k8s_gives_only_overrides_and_secrets():
    config = {}
    for cm in by_kind("ConfigMap"):
        config |= cm["data"]
    for sec in by_kind("Secret"):
        config |= sec.get("stringData", {}) | sec.get("data", {})
    for d in by_kind("Deployment"):
        name = d["metadata"]["name"]
        for c in d["spec"]["template"]["spec"]["containers"]:
            refs = {next(iter(e)) for e in c.get("envFrom", [])}
            assert {"configMapRef", "secretRef"} <= refs, name
            check_overrides(f"k8s {name}", {**config, **{e["name"]: e["value"] for e in c.get("env", [])}})
            assert "-Q" not in c.get("args", []), f"{name}: the queue comes from XAIQ_QUEUE"
    check_overrides("k8s ConfigMap + Secret", config)
    worker = next(d for d in by_kind("Deployment") if d["metadata"]["name"] == "xaiq-worker-gpu")
    port = worker["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"]
    assert port == config["XAIQ_WORKER_METRICS_PORT"], "the scrape port is the workers' metrics port"


def test_keda_scales_on_the_celery_queue_list():
    (so,) = by_kind("ScaledObject")
    assert so["spec"]["scaleTargetRef"]["name"] == "xaiq-worker-gpu"
    (trig,) = [t for t in so["spec"]["triggers"] if t["type"] == "redis"]
    assert trig["metadata"]["listName"] == Settings.model_fields["queue"].default
    assert int(trig["metadata"]["listLength"]) >= 1
