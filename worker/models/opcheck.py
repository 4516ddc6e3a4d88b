"""An operator allowlist for uploaded models: the tensor math and control flow that
image classifiers use, and nothing that touches files, processes, the network or raw
memory.

Uploaded TorchScript is hostile code: `torch.from_file(path, False, n)` reads any file,
`torch.from_file(path, True, n)` plus an in-place copy writes one, `aten::save` writes
files, `prim::Print` writes to the worker's log. A model passes when every operator in
every graph it carries (methods, `__setstate__`, hooks, methods of TorchScript classes)
is in `ALLOWED`; `check_operators` applies the same list to the operator names of a
`torch.export` program.

How `ALLOWED` was made: the node kinds of scripted and traced `torch.nn` building blocks
(convolutions 1d/2d/3d, transposed and depthwise; batch/group/layer/instance/RMS norms;
the activations; max/avg/adaptive/LP/fractional pooling; upsampling and `F.interpolate`
in every mode; padding; dropout; linear, bilinear, embedding; multi-head attention and
transformer layers; LSTM/GRU/RNN; fold/unfold; a small ResNet/MobileNet-style CNN, a ViT
and hand-written attention), of TorchScript functions using the common tensor methods,
list/dict/string/math builtins and the error checks of `torch.nn.functional`, and the
`call_function` targets of `torch.export.export` programs of the same networks (before and
after `run_decompositions()`, static and dynamic batch), then reviewed by hand.

Left out on purpose: `aten::from_file`, `aten::save`, `prim::Print`, `aten::set_`, the
`_load*` operators, `aten::empty`/`aten::empty_like`/`aten::new_empty` (uninitialised
memory: heap contents of the worker), `aten::manual_seed` (the worker's global RNG),
`aten::is_set_to`, `aten::storage_offset`, `aten::_unsafe_index` (no bounds checks),
`prim::PythonOp`, fork/wait/RPC, and every namespace other than `aten` and `prim` (custom
and quantized operators). A model that needs one of them is refused; widen the list only
after reading what the operator does.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch

ALLOWED: frozenset[str] = frozenset({
    "aten::Bool",
    "aten::Delete",
    "aten::Float",
    "aten::FloatImplicit",
    "aten::Int",
    "aten::IntImplicit",
    "aten::ScalarImplicit",
    "aten::__and__",
    "aten::__contains__",
    "aten::__derive_index",
    "aten::__getitem__",
    "aten::__is__",
    "aten::__isnot__",
    "aten::__not__",
    "aten::__or__",
    "aten::__range_length",
    "aten::__xor__",
    "aten::_adaptive_avg_pool2d",
    "aten::_adaptive_avg_pool3d",
    "aten::_assert_scalar",
    "aten::_assert_tensor_metadata",
    "aten::_convolution",
    "aten::_log_softmax",
    "aten::_native_batch_norm_legit",
    "aten::_native_batch_norm_legit_functional",
    "aten::_native_batch_norm_legit_no_training",
    "aten::_native_multi_head_attention",
    "aten::_nested_tensor_from_mask",
    "aten::_nested_tensor_from_mask_left_aligned",
    "aten::_scaled_dot_product_flash_attention_for_cpu",
    "aten::_set_item",
    "aten::_softmax",
    "aten::_to_copy",
    "aten::_transformer_encoder_layer_fwd",
    "aten::_unique2",
    "aten::_unsafe_view",
    "aten::_unwrap_optional",
    "aten::_upsample_bicubic2d_aa",
    "aten::_upsample_bilinear2d_aa",
    "aten::_upsample_lanczos2d_aa",
    "aten::_upsample_nearest_exact1d",
    "aten::_upsample_nearest_exact2d",
    "aten::_upsample_nearest_exact3d",
    "aten::abs",
    "aten::abs_",
    "aten::acos",
    "aten::acosh",
    "aten::adaptive_avg_pool1d",
    "aten::adaptive_avg_pool2d",
    "aten::adaptive_avg_pool3d",
    "aten::adaptive_max_pool1d",
    "aten::adaptive_max_pool2d",
    "aten::adaptive_max_pool3d",
    "aten::add",
    "aten::add_",
    "aten::addcdiv",
    "aten::addcmul",
    "aten::addmm",
    "aten::affine_grid_generator",
    "aten::alias",
    "aten::all",
    "aten::allclose",
    "aten::alpha_dropout",
    "aten::alpha_dropout_",
    "aten::amax",
    "aten::amin",
    "aten::aminmax",
    "aten::any",
    "aten::append",
    "aten::arange",
    "aten::argmax",
    "aten::argmin",
    "aten::as_tensor",
    "aten::asin",
    "aten::asinh",
    "aten::atan",
    "aten::atan2",
    "aten::atanh",
    "aten::atleast_2d",
    "aten::avg_pool1d",
    "aten::avg_pool2d",
    "aten::avg_pool3d",
    "aten::baddbmm",
    "aten::batch_norm",
    "aten::bilinear",
    "aten::binary_cross_entropy_with_logits",
    "aten::bitwise_and",
    "aten::bitwise_not",
    "aten::bitwise_or",
    "aten::bitwise_xor",
    "aten::bmm",
    "aten::broadcast_tensors",
    "aten::bucketize",
    "aten::cat",
    "aten::cdist",
    "aten::ceil",
    "aten::celu",
    "aten::celu_",
    "aten::channel_shuffle",
    "aten::chunk",
    "aten::clamp",
    "aten::clamp_",
    "aten::clamp_max",
    "aten::clamp_max_",
    "aten::clamp_min",
    "aten::clamp_min_",
    "aten::clear",
    "aten::clone",
    "aten::col2im",
    "aten::constant_pad_nd",
    "aten::contiguous",
    "aten::conv1d",
    "aten::conv2d",
    "aten::conv3d",
    "aten::conv_transpose1d",
    "aten::conv_transpose2d",
    "aten::conv_transpose3d",
    "aten::convolution",
    "aten::copy",
    "aten::copy_",
    "aten::cos",
    "aten::cosh",
    "aten::cosine_similarity",
    "aten::count",
    "aten::count_nonzero",
    "aten::cpu",
    "aten::cross_entropy_loss",
    "aten::cumprod",
    "aten::cumsum",
    "aten::detach",
    "aten::diag",
    "aten::diagonal",
    "aten::dim",
    "aten::div",
    "aten::div_",
    "aten::divmod",
    "aten::dropout",
    "aten::dropout_",
    "aten::dstack",
    "aten::einsum",
    "aten::element_size",
    "aten::elu",
    "aten::elu_",
    "aten::embedding",
    "aten::embedding_bag",
    "aten::endswith",
    "aten::eq",
    "aten::equal",
    "aten::erf",
    "aten::erfinv",
    "aten::exp",
    "aten::exp2",
    "aten::exp_",
    "aten::expand",
    "aten::expand_as",
    "aten::expand_copy",
    "aten::expm1",
    "aten::exponential_",
    "aten::extend",
    "aten::eye",
    "aten::feature_alpha_dropout",
    "aten::feature_alpha_dropout_",
    "aten::feature_dropout",
    "aten::feature_dropout_",
    "aten::fill_",
    "aten::find",
    "aten::flatten",
    "aten::flip",
    "aten::floor",
    "aten::floor_divide",
    "aten::floordiv",
    "aten::fmod",
    "aten::format",
    "aten::frac",
    "aten::fractional_max_pool2d",
    "aten::full",
    "aten::full_like",
    "aten::gather",
    "aten::ge",
    "aten::gelu",
    "aten::get",
    "aten::get_device",
    "aten::glu",
    "aten::grid_sampler",
    "aten::group_norm",
    "aten::gru",
    "aten::gt",
    "aten::hardshrink",
    "aten::hardsigmoid",
    "aten::hardsigmoid_",
    "aten::hardswish",
    "aten::hardswish_",
    "aten::hardtanh",
    "aten::hardtanh_",
    "aten::hash",
    "aten::hstack",
    "aten::hypot",
    "aten::im2col",
    "aten::index",
    "aten::index_add",
    "aten::index_copy",
    "aten::index_fill",
    "aten::index_put_",
    "aten::index_select",
    "aten::insert",
    "aten::instance_norm",
    "aten::iota",
    "aten::is_autocast_enabled",
    "aten::is_contiguous",
    "aten::is_floating_point",
    "aten::is_grad_enabled",
    "aten::is_leaf",
    "aten::isfinite",
    "aten::isinf",
    "aten::isnan",
    "aten::item",
    "aten::items",
    "aten::join",
    "aten::keys",
    "aten::kl_div",
    "aten::kron",
    "aten::kthvalue",
    "aten::l1_loss",
    "aten::layer_norm",
    "aten::le",
    "aten::leaky_relu",
    "aten::leaky_relu_",
    "aten::len",
    "aten::lerp",
    "aten::lift_fresh",
    "aten::lift_fresh_copy",
    "aten::linear",
    "aten::linspace",
    "aten::list",
    "aten::log",
    "aten::log10",
    "aten::log1p",
    "aten::log2",
    "aten::log_sigmoid",
    "aten::log_softmax",
    "aten::logical_and",
    "aten::logical_not",
    "aten::logical_or",
    "aten::logical_xor",
    "aten::logit",
    "aten::logsumexp",
    "aten::lower",
    "aten::lstm",
    "aten::lt",
    "aten::mT",
    "aten::masked_fill",
    "aten::masked_fill_",
    "aten::masked_scatter",
    "aten::masked_select",
    "aten::matmul",
    "aten::max",
    "aten::max_pool1d",
    "aten::max_pool2d",
    "aten::max_pool2d_with_indices",
    "aten::max_pool3d",
    "aten::maximum",
    "aten::mean",
    "aten::median",
    "aten::meshgrid",
    "aten::min",
    "aten::minimum",
    "aten::mish",
    "aten::mish_",
    "aten::mm",
    "aten::mode",
    "aten::movedim",
    "aten::mse_loss",
    "aten::mul",
    "aten::mul_",
    "aten::nan_to_num",
    "aten::nanmean",
    "aten::narrow",
    "aten::native_batch_norm",
    "aten::native_dropout",
    "aten::native_group_norm",
    "aten::native_layer_norm",
    "aten::ne",
    "aten::neg",
    "aten::neg_",
    "aten::new_full",
    "aten::new_ones",
    "aten::new_zeros",
    "aten::nll_loss_nd",
    "aten::nonzero",
    "aten::norm",
    "aten::normal_",
    "aten::numel",
    "aten::numpy_T",
    "aten::one_hot",
    "aten::ones",
    "aten::ones_like",
    "aten::outer",
    "aten::pad",
    "aten::pairwise_distance",
    "aten::permute",
    "aten::permute_copy",
    "aten::pixel_shuffle",
    "aten::pixel_unshuffle",
    "aten::pop",
    "aten::pow",
    "aten::pow_",
    "aten::prelu",
    "aten::prod",
    "aten::quantile",
    "aten::rand",
    "aten::rand_like",
    "aten::randint",
    "aten::randn",
    "aten::randn_like",
    "aten::reciprocal",
    "aten::reflection_pad1d",
    "aten::reflection_pad2d",
    "aten::relu",
    "aten::relu6",
    "aten::relu6_",
    "aten::relu_",
    "aten::remainder",
    "aten::remove",
    "aten::repeat",
    "aten::repeat_interleave",
    "aten::replace",
    "aten::replication_pad1d",
    "aten::replication_pad2d",
    "aten::requires_grad_",
    "aten::reshape",
    "aten::reshape_as",
    "aten::reverse",
    "aten::rms_norm",
    "aten::rnn_tanh",
    "aten::roll",
    "aten::round",
    "aten::rrelu",
    "aten::rrelu_",
    "aten::rsqrt",
    "aten::rsub",
    "aten::scalar_tensor",
    "aten::scaled_dot_product_attention",
    "aten::scatter",
    "aten::scatter_",
    "aten::scatter_add",
    "aten::searchsorted",
    "aten::select",
    "aten::select_scatter",
    "aten::selu",
    "aten::selu_",
    "aten::setdefault",
    "aten::sigmoid",
    "aten::sigmoid_",
    "aten::sign",
    "aten::silu",
    "aten::silu_",
    "aten::sin",
    "aten::sinh",
    "aten::size",
    "aten::slice",
    "aten::slice_scatter",
    "aten::smooth_l1_loss",
    "aten::softmax",
    "aten::softplus",
    "aten::softshrink",
    "aten::sort",
    "aten::sorted",
    "aten::split",
    "aten::split_with_sizes",
    "aten::sqrt",
    "aten::sqrt_",
    "aten::square",
    "aten::squeeze",
    "aten::squeeze_",
    "aten::squeeze_copy",
    "aten::stack",
    "aten::startswith",
    "aten::std",
    "aten::str",
    "aten::stride",
    "aten::strip",
    "aten::sub",
    "aten::sub_",
    "aten::sum",
    "aten::sym_numel",
    "aten::sym_size",
    "aten::sym_stride",
    "aten::t",
    "aten::tan",
    "aten::tanh",
    "aten::tanh_",
    "aten::tensor",
    "aten::tensor_split",
    "aten::tensordot",
    "aten::threshold",
    "aten::threshold_",
    "aten::tile",
    "aten::to",
    "aten::to_padded_tensor",
    "aten::topk",
    "aten::trace",
    "aten::transpose",
    "aten::tril",
    "aten::triu",
    "aten::trunc",
    "aten::type_as",
    "aten::unbind",
    "aten::unflatten",
    "aten::unfold",
    "aten::uniform_",
    "aten::unique_dim",
    "aten::unsqueeze",
    "aten::unsqueeze_",
    "aten::update",
    "aten::upper",
    "aten::upsample_bicubic2d",
    "aten::upsample_bilinear2d",
    "aten::upsample_linear1d",
    "aten::upsample_nearest1d",
    "aten::upsample_nearest2d",
    "aten::upsample_nearest3d",
    "aten::upsample_trilinear3d",
    "aten::values",
    "aten::var",
    "aten::var_mean",
    "aten::view",
    "aten::view_as",
    "aten::view_copy",
    "aten::vstack",
    "aten::warn",
    "aten::where",
    "aten::zero_",
    "aten::zeros",
    "aten::zeros_like",
    "prim::CallFunction",
    "prim::CallMethod",
    "prim::Constant",
    "prim::CreateObject",
    "prim::DictConstruct",
    "prim::GetAttr",
    "prim::If",
    "prim::ListConstruct",
    "prim::ListUnpack",
    "prim::Loop",
    "prim::NumToTensor",
    "prim::RaiseException",
    "prim::SetAttr",
    "prim::TupleConstruct",
    "prim::TupleIndex",
    "prim::TupleUnpack",
    "prim::Uninitialized",
    "prim::abs",
    "prim::data",
    "prim::device",
    "prim::dtype",
    "prim::is_cuda",
    "prim::is_mkldnn",
    "prim::is_nested",
    "prim::is_quantized",
    "prim::is_sparse",
    "prim::isinstance",
    "prim::layout",
    "prim::max",
    "prim::min",
    "prim::requires_grad",
    "prim::type",
    "prim::unchecked_cast",
})

# Not node kinds: what `torchscript_operators` reports for constructs whose code cannot be
# known without running the model. None of them is allowed.
INTERFACE = "prim::InterfaceType"  # a value or attribute of a TorchScript interface type
ANY = "prim::AnyType"  # an attribute of type Any: the object (and its __setstate__) is unknown
CUSTOM_CLASS = "prim::CustomClass"  # a C++ custom class object (torch.classes.*)
DYNAMIC_CALL = "prim::DynamicCall"  # a call of a function value that inlining could not resolve

# Python callables that torch.export puts in graphs (getitem of multi-output operators,
# arithmetic on symbolic sizes), as the operator that does the same.
_PYTHON_TARGETS = {
    "getitem": "aten::__getitem__", "add": "aten::add", "sub": "aten::sub", "mul": "aten::mul",
    "floordiv": "aten::floordiv", "truediv": "aten::div", "mod": "aten::remainder", "neg": "aten::neg",
    "eq": "aten::eq", "ne": "aten::ne", "lt": "aten::lt", "le": "aten::le", "gt": "aten::gt", "ge": "aten::ge",
}


class ForbiddenOperator(ValueError):
    """An uploaded model uses an operator outside `ALLOWED`."""

    def __init__(self, op: str):
        self.op = op
        super().__init__(f"operator {op} is not allowed in an uploaded model")


def is_allowed(op: str) -> bool:
    """Exact comparison; only the `aten` and `prim` namespaces can be allowed at all."""
    return op.partition("::")[0] in ("aten", "prim") and op in ALLOWED


def _raise_first(ops: Iterable[str]) -> None:
    for op in sorted(set(ops)):
        if not is_allowed(op):
            raise ForbiddenOperator(op[:200])


# --- TorchScript ----------------------------------------------------------------------------

def _scan_type(t, kinds: set[str], classes: dict, *, attribute: bool) -> None:
    """Collect the class types reachable from `t`; flag interfaces and, for attributes, Any."""
    stack = [t]
    while stack:
        t = stack.pop()
        if isinstance(t, torch._C.InterfaceType):
            kinds.add(INTERFACE)
        elif isinstance(t, torch._C.ClassType):
            classes.setdefault(t.qualified_name(), t)
        elif t.kind().startswith("Any"):  # AnyType, AnyListType, AnyTupleType, AnyClassType, ...
            if attribute:
                kinds.add(ANY)
        else:
            stack.extend(t.containedTypes())


def _scan_graph(graph, kinds: set[str], classes: dict) -> None:
    g = graph.copy()
    torch._C._jit_pass_inline(g)
    for v in g.inputs():
        _scan_type(v.type(), kinds, classes, attribute=False)
    nodes = list(g.nodes())
    while nodes:
        node = nodes.pop()
        kind = node.kind()
        # Inlining resolves calls of known functions and of methods of known classes; what is
        # left of CallFunction calls a function value nobody can name in advance.
        kinds.add(DYNAMIC_CALL if kind == "prim::CallFunction" else kind)
        for v in node.outputs():
            _scan_type(v.type(), kinds, classes, attribute=False)
        for block in node.blocks():
            nodes.extend(block.nodes())


def _scan_object(c, t, kinds: set[str], classes: dict) -> None:
    """The graphs of every method of a script object `c` and the types of its attributes (`t`: its type)."""
    for name in c._method_names():
        _scan_graph(c._get_method(name).graph, kinds, classes)
    for at in t.containedTypes():
        _scan_type(at, kinds, classes, attribute=True)


def torchscript_operators(module: torch.jit.ScriptModule) -> set[str]:
    """Every node kind (`aten::conv2d`, `prim::If`, ...) of every graph `module` can run:
    all methods of every submodule (`__setstate__`/`__getstate__` included), their forward
    hooks and pre-hooks, and all methods of the TorchScript classes that its attributes and
    graphs mention, after inlining calls, nested blocks included. Constructs that cannot be
    followed statically show up as the pseudo-kinds `INTERFACE`, `ANY`, `CUSTOM_CLASS` and
    `DYNAMIC_CALL`. Nothing of the model runs."""
    kinds: set[str] = set()
    classes: dict[str, object] = {}
    done: set[str] = set()
    for _, sub in module.named_modules():
        c = sub._c
        t = c._type()
        if t.qualified_name() in done:
            continue
        done.add(t.qualified_name())
        _scan_object(c, t, kinds, classes)
        for hook in [*c._get_forward_pre_hooks(), *c._get_forward_hooks()]:
            _scan_graph(hook.graph, kinds, classes)
    # TorchScript classes: read their methods from an empty object of the type, so that nothing
    # of the model runs, and classes unknown to this Python process (a fresh process) work too.
    while pending := [q for q in classes if q not in done]:
        for qname in pending:
            done.add(qname)
            t = classes[qname]
            if qname.startswith("__torch__.torch.classes."):
                kinds.add(CUSTOM_CLASS)
                continue
            _scan_object(torch._C._create_object_with_type(t), t, kinds, classes)
    return kinds


def check_torchscript(module: torch.jit.ScriptModule) -> None:
    """Raise `ForbiddenOperator` for the first operator (in sorted order) not in `ALLOWED`."""
    _raise_first(torchscript_operators(module))


# --- torch.export ---------------------------------------------------------------------------

def normalize(name: str) -> str:
    """`torch.ops.aten.conv2d.default`, `aten.conv2d.default`, `aten.conv2d` or
    `aten::conv2d.default` -> `aten::conv2d`; `<built-in function getitem>` ->
    `aten::__getitem__`. Anything else comes back unchanged (and is then refused)."""
    name = str(name).strip()
    if name.startswith("<built-in function ") and name.endswith(">"):
        return _PYTHON_TARGETS.get(name[len("<built-in function "):-1], name)
    bare = name.removeprefix("torch.ops.")
    if "::" in bare:
        ns, _, rest = bare.partition("::")
        parts = [ns, *rest.split(".")]
    else:
        parts = bare.split(".")
    if len(parts) not in (2, 3) or not all(p.isidentifier() for p in parts):
        return name
    return f"{parts[0]}::{parts[1]}"


def check_operators(names: Iterable[str]) -> None:
    """The same check for operator names from a `torch.export` graph (`str(node.target)` of
    its `call_function` nodes): the overload name is dropped, the rest compared exactly."""
    _raise_first(normalize(n) for n in names)
