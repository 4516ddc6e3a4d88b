"""Models prepared once per loaded version for forward-only passes: batch norm folded,
NHWC, a copy per dtype; the registered model itself is left as it was, and a copy of it
(the sanity check randomises one) never gets the prepared forward of a run."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from tests.worker.explain.conftest import _digits_model, _tiny_model
from worker.explain.context import RunContext
from worker.models.prepare import Options, Prepared, fold_batchnorm, foldable, prepare


@pytest.mark.parametrize("make", [_tiny_model, _digits_model], ids=["tiny", "digits"])
def test_the_prepared_forward_gives_the_models_outputs(make):
    model = make()
    before = copy.deepcopy(model.state_dict())
    shape = (4, 3, 24, 24) if make is _tiny_model else (4, 1, 32, 32)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(x)
    p = prepare(model)
    run = RunContext(prepared=p)
    got = run.forward(model)(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert run.forward(model) is p(torch.float32)                  # built once, then kept
    assert foldable(model)                                         # the model itself still has its batch norms
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks for m in model.modules())
    low = run.forward(model, torch.bfloat16)(x)
    assert low.dtype == torch.float32 and (low - want).abs().max() < 0.1 * want.abs().max()


def test_folding_removes_the_batch_norms_of_a_copy():
    model = _tiny_model()
    folded = copy.deepcopy(model)
    assert fold_batchnorm(folded) == 2 and not foldable(folded)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.rand(2, 3, 24, 24)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-5)


def test_a_copy_of_a_prepared_model_runs_as_it_is():
    """The sanity check deep-copies the model and re-initialises its layers: a prepared copy
    made before would be stale, so a copy must use its own, current weights."""
    model = _tiny_model()
    run = RunContext(prepared=prepare(model))
    run.forward(model)   # the prepared copy exists
    rand = copy.deepcopy(model)
    torch.nn.init.zeros_(rand.head.weight)
    torch.nn.init.ones_(rand.head.bias)
    out = run.forward(rand)(torch.rand(2, 3, 24, 24))
    torch.testing.assert_close(out, torch.ones(2, 5))


def test_options_are_honoured():
    model = _tiny_model()
    plain = Prepared(model, Options(fold_batchnorm=False, channels_last="off"))
    x = torch.rand(2, 3, 24, 24)
    with torch.no_grad():
        torch.testing.assert_close(plain(torch.float32)(x), model(x))
    nhwc = Prepared(model, Options(channels_last="on"))
    nhwc(torch.bfloat16)(x)
    copies = [c for c in nhwc(torch.bfloat16).__closure__ or () if isinstance(c.cell_contents, nn.Module)]
    conv = [m for m in copies[0].cell_contents.modules() if isinstance(m, nn.Conv2d)][0]
    assert conv.weight.dtype == torch.bfloat16 and conv.weight.is_contiguous(memory_format=torch.channels_last)
