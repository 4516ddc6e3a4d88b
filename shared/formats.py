"""The one list of model formats and built-in architectures.

A model's *format* says how its file is read and what its mechanics allow; the API checks a
job's methods against it (a method that needs what a format lacks is a 422 that names the
formats that have it), names it in the manifest (`ModelInfo.format`), the worker loads by it
(one loader per format, `worker.models.loading.LOADERS`), and the README's table comes from it
(`python -m shared.formats`). Built-in architectures are named here once, with the import
path of their `nn.Module` (the worker builds them; this package never imports torch)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelFormat:
    name: str
    summary: str
    hooks: bool          # forward hooks on named layers work (layer methods: Grad-CAM, filters)
    modules: bool        # a tree of torch.nn modules a method may re-wire for its own backward rules
    program: bool        # the file is a program (TorchScript, torch.export): its operators pass an allowlist
    randomisable: bool   # layers can be re-initialised (the audit's weight-randomisation check)
    own_architecture: bool = True   # the file holds the network: the spec's `architecture` is this name
    #                                 (False: the weights of a built-in architecture, which the spec names)
    configs: str | None = None      # "module:function" reading input, mean, std, classes from the upload
    #                                 (then the spec may leave them out)
    upload: str = ""                # what to upload, for the README


MODEL_FORMATS: dict[str, ModelFormat] = {f.name: f for f in [
    ModelFormat("safetensors", "a built-in architecture's weights as safetensors",
                hooks=True, modules=True, program=False, randomisable=True, own_architecture=False,
                upload="`save_file(model.state_dict(), f)` (safetensors)"),
    ModelFormat("state_dict", "a built-in architecture's weights from torch.save(model.state_dict()), read with "
                "weights_only=True", hooks=True, modules=True, program=False, randomisable=True,
                own_architecture=False,
                upload="`torch.save(model.state_dict(), f)`, read with `weights_only=True` "
                       "(`module.` prefixes removed)"),
    ModelFormat("huggingface", "a zip of a save_pretrained folder (config.json + safetensors)",
                hooks=True, modules=True, program=False, randomisable=True,
                configs="shared.huggingface:spec_from_upload",
                upload="a zip of the folder `save_pretrained` wrote (`config.json`, `*.safetensors`, "
                       "optionally `preprocessor_config.json`)"),
    ModelFormat("export", "a torch.export program (.pt2), unflattened where module paths survive",
                hooks=True, modules=False, program=True, randomisable=False,
                upload="`torch.export.save` of a program exported with a dynamic batch dimension"),
    ModelFormat("torchscript", "a TorchScript module (no hooks: layers cannot be read)",
                hooks=False, modules=False, program=True, randomisable=False,
                upload="`torch.jit.save(torch.jit.script(model), f)`"),
]}

# name -> "module:Class" of the nn.Module the worker builds and loads a state_dict into
BUILTIN_ARCHITECTURES: dict[str, str] = {
    "food11-cnn": "worker.models.architectures:Food11CNN",
    "digits-cnn": "worker.models.architectures:DigitsCNN",
}
# formats that are their own architecture (the file holds the network)
SELF_DESCRIBING = tuple(f.name for f in MODEL_FORMATS.values() if f.own_architecture)
ARCHITECTURES = (*BUILTIN_ARCHITECTURES, *SELF_DESCRIBING)


def formats_with(capability: str) -> list[str]:
    """Names of the formats that have `capability` ('hooks', 'modules', ...)."""
    return [f.name for f in MODEL_FORMATS.values() if getattr(f, capability)]


def architectures_text() -> str:
    """The architectures a spec may name, in words (for descriptions and errors)."""
    return (f"a built-in architecture ({', '.join(map(repr, BUILTIN_ARCHITECTURES))}) with its weights, or a "
            f"format that holds its network ({', '.join(map(repr, SELF_DESCRIBING))})")


def reads_configs(architecture: str) -> bool:
    """Whether this architecture's upload can give the spec's input, mean, std and classes."""
    f = MODEL_FORMATS.get(architecture)
    return bool(f and f.own_architecture and f.configs)


def is_safetensors(data: bytes) -> bool:
    """A safetensors file: an 8-byte little-endian header length, then a JSON header."""
    return len(data) > 8 and data[8:9] == b"{" and int.from_bytes(data[:8], "little") < len(data)


def format_of(architecture: str, data: bytes) -> str:
    """The format of an upload: the architecture itself when it is a format; a built-in
    architecture's weights are safetensors or else a pickled state_dict (read with
    weights_only=True)."""
    f = MODEL_FORMATS.get(architecture)
    if f is not None and f.own_architecture:
        return f.name
    return "safetensors" if is_safetensors(data) else "state_dict"


def markdown_table() -> str:
    """The README's table of model formats, from the registry."""
    from shared.methods import METHODS  # imported here: methods imports this module

    layer_methods = ", ".join(f"`{m.name}`" for m in METHODS.values() if m.uses_hooks)
    rows = [(f"| format | `architecture` in the spec | the file | layer methods ({layer_methods}) | "
             "audit's weight randomisation | spec from the file |"), "|---|---|---|---|---|---|"]
    builtin = ", ".join(f"`{a}`" for a in BUILTIN_ARCHITECTURES)
    for f in MODEL_FORMATS.values():
        arch = f"`{f.name}`" if f.own_architecture else f"a built-in: {builtin}"
        rows.append(f"| `{f.name}` | {arch} | {f.upload} | {'yes' if f.hooks else 'no'} | "
                    f"{'yes' if f.randomisable else 'no'} | {'yes' if f.configs else 'no'} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
