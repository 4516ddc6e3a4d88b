"""The confined model inspection (`worker.confine`, `worker.models.inspection`) and the operator allowlist
(`worker.models.opcheck`) against hostile TorchScript: reading and writing files from
`forward` and from `__setstate__` (which runs inside `torch.jit.load`), `torch.save`,
endless loops, unbounded allocation and exception messages carrying secrets.

Every inspection is a real child process; they run side by side (a few at a time) in a
module fixture, so that the file stays within about a minute on two cores."""
from __future__ import annotations

import io
import json
import logging
import os
import secrets
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from torch import nn

from worker.models import digits
from worker.models.architectures import DigitsCNN
from worker.models.opcheck import ALLOWED, ForbiddenOperator, check_operators, check_torchscript
from worker.compute.client import inspect_untrusted

ROOT = os.geteuid() == 0
C, H, W = 1, 8, 8
TINY = {"architecture": "custom", "format": "torchscript", "input": {"channels": C, "height": H, "width": W},
        "mean": [0.5], "std": [0.5], "classes": ["a", "b", "c"]}
LOOP_TIMEOUT_S = 8
HOARD_MEMORY_MB = 1536
HOARD_TIMEOUT_S = 40


# --- hostile models (TorchScript needs their source, hence module level) ---------------------

class _OnFile(nn.Module):
    def __init__(self, path: str, n: int):
        super().__init__()
        self.path, self.n = path, n


class _FileInState(_OnFile):
    """Keeps the path through `torch.jit.save`; subclasses touch the file in `__setstate__`,
    which `torch.jit.load` runs while it restores the model, before anyone can check it."""

    def __init__(self, path: str, n: int):
        super().__init__(path, n)
        self.touched = torch.zeros(1)

    @torch.jit.export
    def __getstate__(self) -> tuple[str, int, bool]:
        return (self.path, self.n, self.training)

    def forward(self, x):
        return x.flatten(1)[:, :3] + self.touched.sum() * 0


class ReadsInForward(_OnFile):
    def forward(self, x):
        stolen = torch.from_file(self.path, False, self.n, dtype=torch.uint8)
        return x.flatten(1)[:, :3] + stolen.float().sum() * 0


class ReadsInSetstate(_FileInState):
    @torch.jit.export
    def __setstate__(self, state: tuple[str, int, bool]):
        self.path, self.n, self.training = state[0], state[1], state[2]
        self.touched = torch.from_file(self.path, False, self.n, dtype=torch.uint8).float()


class WritesInForward(_OnFile):
    def forward(self, x):
        target = torch.from_file(self.path, True, self.n, dtype=torch.uint8)  # a shared mapping of the file
        target.copy_(torch.full([self.n], 65, dtype=torch.uint8))
        return x.flatten(1)[:, :3] + target.float().sum() * 0


class WritesInSetstate(_FileInState):
    @torch.jit.export
    def __setstate__(self, state: tuple[str, int, bool]):
        self.path, self.n, self.training = state[0], state[1], state[2]
        target = torch.from_file(self.path, True, self.n, dtype=torch.uint8)
        target.copy_(torch.full([self.n], 65, dtype=torch.uint8))
        self.touched = target.float()


class Saves(nn.Module):
    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def forward(self, x):
        torch.save(x, self.path)
        return x.flatten(1)[:, :3]


class Loops(nn.Module):
    """Only allowed operators, never returns."""

    def forward(self, x):
        y = x
        while bool(y.sum() > -1.0):
            y = y + 1.0
        return y.flatten(1)[:, :3]


class Hoards(nn.Module):
    """Only allowed operators, allocates 64 MiB after 64 MiB."""

    def forward(self, x):
        chunks: list[torch.Tensor] = []
        while len(chunks) >= 0:
            chunks.append(torch.ones(1 << 24) + x.sum())
        return x.flatten(1)[:, :3]


class Raises(nn.Module):
    def __init__(self, message: str):
        super().__init__()
        self.message = message

    def forward(self, x):
        if bool(x.sum() >= 0.0):
            raise ValueError(self.message)
        return x.flatten(1)[:, :3]


class Hooked(nn.Module):
    def forward(self, x):
        return x.flatten(1)[:, :3]


def _pre_hook_reads(module: Hooked, inputs: tuple[torch.Tensor]) -> tuple[torch.Tensor]:
    return (inputs[0] + torch.from_file("/etc/hostname", False, 1, dtype=torch.uint8).float().sum() * 0,)


def scripted_bytes(module: nn.Module) -> bytes:
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(module), buf)
    return buf.getvalue()


def digits_model() -> DigitsCNN:
    from safetensors.torch import load_file

    model = DigitsCNN()
    model.load_state_dict(load_file(digits.WEIGHTS / "digits-cnn.safetensors"))
    return model.eval()


# --- the inspections, run side by side once per module ---------------------------------------

class _Log(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def files():
    """A directory anyone may enter, holding root-owned files: a secret readable by all
    (0644), a secret readable by root only (0600), a file to be overwritten (0644)."""
    d = Path(tempfile.mkdtemp(prefix="xaiq-sandbox-test-"))
    d.chmod(0o755)
    public, private = secrets.token_hex(16), secrets.token_hex(16)
    (d / "public").write_text(public)
    (d / "public").chmod(0o644)
    (d / "private").write_text(private)
    (d / "private").chmod(0o600)
    target = secrets.token_bytes(32)
    (d / "target").write_bytes(target)
    (d / "target").chmod(0o644)
    yield {"dir": d, "public": public, "private": private, "target": target}
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module", params=["one-process-per-model", "warm-zygote"])
def inspected(files, request):
    """name -> (result, seconds the call took, what the child logged), for both ways a worker
    confines an inspection: a fresh interpreter per model, and a fork of the warm zygote."""
    warm = request.param == "warm-zygote"
    d = files["dir"]
    digits_info = {**digits.manifest(), "format": "safetensors"}
    cases = {
        "digits": (digits_info, (digits.WEIGHTS / "digits-cnn.safetensors").read_bytes(), {}),
        "digits-scripted": ({**digits_info, "format": "torchscript"}, scripted_bytes(digits_model()), {}),
        "reads-forward": (TINY, scripted_bytes(ReadsInForward(str(d / "public"), 32)), {}),
        "reads-setstate": (TINY, scripted_bytes(ReadsInSetstate(str(d / "public"), 32)), {}),
        "reads-setstate-private": (TINY, scripted_bytes(ReadsInSetstate(str(d / "private"), 32)), {}),
        "writes-forward": (TINY, scripted_bytes(WritesInForward(str(d / "target"), 32)), {}),
        "writes-setstate": (TINY, scripted_bytes(WritesInSetstate(str(d / "target"), 32)), {}),
        "saves": (TINY, scripted_bytes(Saves(str(d / "saved.pt"))), {}),
        "loops": (TINY, scripted_bytes(Loops()), {"timeout_s": LOOP_TIMEOUT_S}),
        "hoards": (TINY, scripted_bytes(Hoards()), {"timeout_s": HOARD_TIMEOUT_S, "memory_mb": HOARD_MEMORY_MB}),
        "raises": (TINY, scripted_bytes(Raises(f"the secret is {files['public']}")), {}),
    }
    log = _Log()
    logger = logging.getLogger("xaiq.confine")
    logger.addHandler(log)
    old_level = logger.level
    logger.setLevel(logging.INFO)

    def run(name: str):
        info, data, kwargs = cases[name]
        start = time.monotonic()
        result = inspect_untrusted({**info, "name": name}, data, warm=warm, **kwargs)
        return result, time.monotonic() - start

    try:
        # The slow ones first; four at a time keeps two cores busy while children wait on pipes.
        order = ["loops", "hoards", *[n for n in cases if n not in ("loops", "hoards")]]
        if warm:   # one zygote, one model at a time; the first call starts it
            done = {name: run(name) for name in ["digits", *[n for n in order if n != "digits"]]}
        else:
            with ThreadPoolExecutor(max_workers=4) as pool:
                futures = {name: pool.submit(run, name) for name in order}
                done = {name: f.result() for name, f in futures.items()}
    finally:
        logger.removeHandler(log)
        logger.setLevel(old_level)
    return {name: (*done[name], "\n".join(m for m in log.messages if repr(name) in m)) for name in cases}


def _leaks(result: dict, *secret: str) -> bool:
    text = json.dumps(result)
    return any(s in text for s in secret)


# --- well-behaved models ----------------------------------------------------------------------

@pytest.mark.slow
def test_digits_weights_are_ready_with_layers_parameters_and_flops(inspected):
    result, _, _ = inspected["digits"]
    assert result["status"] == "ready", result
    assert result["error"] is None and result["hooks"] is True
    assert result["parameters"] == sum(p.numel() for p in DigitsCNN().parameters()) == 156010
    assert result["gflops"] == pytest.approx(0.0053, abs=2e-4)
    by_path = {layer["path"]: layer for layer in result["layers"]}
    assert [p for p in by_path if p.count(".") == 1] == [f"cnn.{i}" for i in range(12)] + ["fc.0", "fc.1", "fc.2"]
    assert [(p, by_path[p]["out_channels"]) for p in by_path if by_path[p]["conv"]] == \
        [("cnn.0", 16), ("cnn.4", 32), ("cnn.8", 64)]
    assert by_path["fc.2"] == {"path": "fc.2", "type": "Linear", "out_channels": 10, "conv": False, "shape": [10]}
    assert by_path["cnn.4"]["shape"] == [32, 16, 16]


@pytest.mark.slow
def test_scripted_digits_is_ready_without_hooks(inspected):
    result, _, _ = inspected["digits-scripted"]
    plain, _, _ = inspected["digits"]
    assert result["status"] == "ready", result
    assert result["hooks"] is False
    assert result["parameters"] == plain["parameters"]
    assert result["gflops"] == pytest.approx(plain["gflops"], rel=1e-6)
    assert [(x["path"], x["type"], x["conv"]) for x in result["layers"]] == \
        [(x["path"], x["type"], x["conv"]) for x in plain["layers"]]


# --- reading files ----------------------------------------------------------------------------

@pytest.mark.slow
def test_reading_a_file_in_forward_is_refused_by_the_operator_check(inspected, files):
    result, _, log = inspected["reads-forward"]
    assert result == {"status": "invalid", "error": "operator aten::from_file is not allowed in an uploaded model"}
    assert files["public"] not in log


@pytest.mark.slow
def test_reading_a_file_in_setstate_is_refused_and_nothing_leaks(inspected, files):
    # torch.jit.load runs __setstate__: the child (as nobody) can read a world-readable file,
    # but the model is refused before anything else runs and the bytes stay in the child.
    result, _, log = inspected["reads-setstate"]
    assert result == {"status": "invalid", "error": "operator aten::from_file is not allowed in an uploaded model"}
    assert not _leaks(result, files["public"]) and files["public"] not in log


@pytest.mark.slow
@pytest.mark.skipif(not ROOT, reason="the switch to 'nobody' needs root")
def test_the_child_runs_as_nobody_and_cannot_read_root_only_files(inspected, files):
    # The same model as above, on a 0600 file: here the read itself fails, inside torch.jit.load.
    result, _, log = inspected["reads-setstate-private"]
    assert result == {"status": "invalid", "error": "loading raised RuntimeError"}
    assert "Permission denied" in log
    assert not _leaks(result, files["private"]) and files["private"] not in log


# --- writing files ----------------------------------------------------------------------------

@pytest.mark.slow
def test_writing_a_file_in_forward_is_refused_and_the_file_is_unchanged(inspected, files):
    result, _, _ = inspected["writes-forward"]
    assert result == {"status": "invalid", "error": "operator aten::from_file is not allowed in an uploaded model"}
    assert (files["dir"] / "target").read_bytes() == files["target"]


@pytest.mark.slow
@pytest.mark.skipif(not ROOT, reason="the switch to 'nobody' needs root")
def test_writing_a_file_in_setstate_fails_and_the_file_is_unchanged(inspected, files):
    result, _, log = inspected["writes-setstate"]
    assert result == {"status": "invalid", "error": "loading raised RuntimeError"}
    assert "Permission denied" in log
    assert (files["dir"] / "target").read_bytes() == files["target"]


@pytest.mark.slow
def test_torch_save_is_refused(inspected, files):
    result, _, _ = inspected["saves"]
    assert result == {"status": "invalid", "error": "operator aten::save is not allowed in an uploaded model"}
    assert not (files["dir"] / "saved.pt").exists()


# --- time, memory, messages -------------------------------------------------------------------

@pytest.mark.slow
def test_an_endless_forward_is_stopped_by_the_timeout(inspected):
    result, seconds, _ = inspected["loops"]
    assert result == {"status": "invalid", "error": f"inspection did not finish in {LOOP_TIMEOUT_S} s (stopped)"}
    print(f"endless forward stopped after {seconds:.1f} s (timeout {LOOP_TIMEOUT_S} s)")
    assert seconds < LOOP_TIMEOUT_S + 15      # it would never end; generous for four checks on two cores


@pytest.mark.slow
def test_unbounded_allocation_is_stopped_by_the_memory_limit(inspected):
    result, seconds, _ = inspected["hoards"]
    assert result["status"] == "invalid"
    assert "memory" in result["error"] or "killed" in result["error"], result
    assert "did not finish" not in result["error"]
    print(f"unbounded allocation stopped after {seconds:.1f} s")
    assert seconds < HOARD_TIMEOUT_S + 15


@pytest.mark.slow
def test_an_exception_in_forward_is_reported_without_its_message(inspected, files):
    result, _, log = inspected["raises"]
    assert result == {"status": "invalid", "error": "forward raised torch.jit.Error"}
    assert not _leaks(result, files["public"])
    assert files["public"] in log  # the whole exception is in the worker's log, and only there


def test_the_child_environment_holds_no_secrets(monkeypatch):
    from worker.confine import environment as _environment

    for name in ("XAIQ_S3_SECRET_KEY", "AWS_SECRET_ACCESS_KEY", "MINIO_ROOT_PASSWORD", "REDIS_URL"):
        monkeypatch.setenv(name, "secret")
    env = _environment("/tmp/x")
    assert "secret" not in env.values()
    assert set(env) <= {"PATH", "PYTHONPATH", "HOME", "TMPDIR", "TORCHINDUCTOR_CACHE_DIR", "LANG", "HF_HUB_OFFLINE",
                        "TRANSFORMERS_OFFLINE", "PYTHONDONTWRITEBYTECODE", "PYTHONNOUSERSITE", "MALLOC_ARENA_MAX",
                        "OMP_NUM_THREADS",
                        "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS"}


# --- the allowlist itself (in process, nothing runs) ------------------------------------------

class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        return self.head(torch.flatten(self.features(x), 1))


def test_check_operators_accepts_an_exported_cnn():
    program = torch.export.export(SmallCNN().eval(), (torch.zeros(2, C, H, W),))
    for ep in (program, program.run_decompositions()):
        names = [str(n.target) for n in ep.graph.nodes if n.op == "call_function"]
        assert "aten.conv2d.default" in names or "aten.convolution.default" in names
        check_operators(names)
    check_operators(["torch.ops.aten.conv2d.default", "aten.linear", "<built-in function getitem>"])


@pytest.mark.parametrize("name, op", [
    ("aten.from_file.default", "aten::from_file"),
    ("torch.ops.aten.save.default", "aten::save"),
    ("mylib.conv2d.default", "mylib::conv2d"),      # a custom namespace, even with an allowed name
    ("quantized.conv2d.new", "quantized::conv2d"),
    ("prim::Print", "prim::Print"),
])
def test_check_operators_refuses(name, op):
    with pytest.raises(ForbiddenOperator) as e:
        check_operators(["aten.conv2d.default", name])
    assert e.value.op == op
    assert str(e.value) == f"operator {op} is not allowed in an uploaded model"


def test_allowlist_holds_nothing_that_reaches_outside():
    assert all(op.startswith(("aten::", "prim::")) for op in ALLOWED)
    for op in ("aten::from_file", "aten::save", "prim::Print", "aten::set_", "aten::empty", "prim::PythonOp"):
        assert op not in ALLOWED


def test_check_torchscript_sees_forward_setstate_and_hooks(files):
    check_torchscript(torch.jit.script(digits_model()))
    for model in (ReadsInForward("/etc/hostname", 1), ReadsInSetstate("/etc/hostname", 1)):
        with pytest.raises(ForbiddenOperator, match="aten::from_file"):
            check_torchscript(torch.jit.script(model))
    hooked = Hooked()
    hooked.register_forward_pre_hook(_pre_hook_reads)
    with pytest.raises(ForbiddenOperator, match="aten::from_file"):
        check_torchscript(torch.jit.script(hooked))


def test_a_warm_child_gets_the_cpu_time_of_each_call(tmp_path):
    """The broker raises a child's CPU limit before each call; where it may not raise a hard
    limit (root without CAP_SYS_RESOURCE, as in many containers) the child's first limit is a
    lifetime budget. Either way a child that has worked past its first budget is not killed
    by it (a warm compute process was, after 121 CPU-seconds over several units)."""
    import resource
    import subprocess
    import sys

    from worker import confine

    first = confine.cpu_budget(5)
    child = subprocess.Popen([sys.executable, "-c", "import resource, time; resource.setrlimit("
                              f"resource.RLIMIT_CPU, ({first}, {first})); print('ok', flush=True); time.sleep(60)"],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ok"
        confine.raise_cpu_limit(child.pid, 600)
        soft, hard = resource.prlimit(child.pid, resource.RLIMIT_CPU)
        assert soft >= 600 and hard >= 600, (soft, hard, confine.may_raise_limits())
    finally:
        child.kill()
        child.wait()
