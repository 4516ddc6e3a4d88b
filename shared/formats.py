"""The one list of model formats and built-in architectures.

A model's *format* says how its file is read and what its mechanics allow; the API checks a
job's methods against it (a method that needs what a format lacks is a 422 that names the
formats that have it), the worker loads by it, and the README's table comes from it.
Built-in architectures are named here once, with the import path of their `nn.Module`
(the worker builds them; this package never imports torch)."""
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


MODEL_FORMATS: dict[str, ModelFormat] = {f.name: f for f in [
    ModelFormat("safetensors", "a built-in architecture's weights as safetensors",
                hooks=True, modules=True, program=False, randomisable=True),
    ModelFormat("state_dict", "a built-in architecture's weights from torch.save(model.state_dict()), read with "
                "weights_only=True", hooks=True, modules=True, program=False, randomisable=True),
    ModelFormat("huggingface", "a zip of a save_pretrained folder (config.json + safetensors)",
                hooks=True, modules=True, program=False, randomisable=True),
    ModelFormat("export", "a torch.export program (.pt2), unflattened where module paths survive",
                hooks=True, modules=False, program=True, randomisable=False),
    ModelFormat("torchscript", "a TorchScript module (no hooks: layers cannot be read)",
                hooks=False, modules=False, program=True, randomisable=False),
]}

# name -> "module:Class" of the nn.Module the worker builds and loads a state_dict into
BUILTIN_ARCHITECTURES: dict[str, str] = {
    "food11-cnn": "worker.models.architectures:Food11CNN",
    "digits-cnn": "worker.models.architectures:DigitsCNN",
}
# formats that are their own architecture (the file holds the network)
SELF_DESCRIBING = ("torchscript", "huggingface", "export")
ARCHITECTURES = (*BUILTIN_ARCHITECTURES, *SELF_DESCRIBING)


def formats_with(capability: str) -> list[str]:
    """Names of the formats that have `capability` ('hooks', 'modules', ...)."""
    return [f.name for f in MODEL_FORMATS.values() if getattr(f, capability)]
