"""Family registry: maps a checkpoint's or model file's ``family`` to the modules that handle it.

    fam = get_family("gpt")
    fam.models()      # the module with PRESETS and build(config) (imports torch)
    fam.runtime()     # the runtime module with load(session, meta) (torch-free)

Entries are dotted module paths imported lazily, so reading the registry imports neither torch
nor onnx (``edgekit --help`` stays fast and torch-free). Each family provides:
  models/<family>.py   PRESETS {name: preset with .name, .note, .family}, build(config) -> nn.Module,
                       preset_config(preset) -> dict, num_params(preset) -> int
  train/<family>.py    train(preset_name | None, opts: TrainOptions) -> dict (summary)
  export/<family>.py   export(ckpt: Checkpoint, opts: ExportOptions) -> ExportReport
  runtime/<family>.py  load(session, meta) -> model object; infer_cli(model, inputs, opts) -> exit code
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

from edgekit.errors import EdgekitError


@dataclass(frozen=True)
class Family:
    name: str  # the ``family`` string recorded in checkpoints and model files
    description: str  # one line for `edgekit presets`
    models_module: str
    train_module: str
    export_module: str
    runtime_module: str

    def models(self):
        return importlib.import_module(self.models_module)

    def trainer(self):
        return importlib.import_module(self.train_module)

    def exporter(self):
        return importlib.import_module(self.export_module)

    def runtime(self):
        return importlib.import_module(self.runtime_module)


def _family(name: str, description: str, module: str | None = None) -> Family:
    module = module or name
    return Family(name, description, f"edgekit.models.{module}", f"edgekit.train.{module}",
                  f"edgekit.export.{module}", f"edgekit.runtime.{module}")


FAMILIES: dict[str, Family] = {
    "gpt": _family("gpt", "nanoGPT decoder language model (KV-cache ONNX, streaming generation)"),
    "seqae": _family("seqae", "sequence autoencoder over token vectors, 16-d code (RNN/GRU/LSTM, optional attention)"),
    "amn": _family("amn", "next concept vector from the previous 5 sentence vectors (attention + MLP)"),
    "bytecnn": _family("bytecnn", "byte-level CNN word-rarity scorer (UTF-8 bytes -> normalized ICF in [0, 1])"),
}


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except (KeyError, TypeError):
        raise EdgekitError(f"unknown family {name!r}; known: {', '.join(FAMILIES)}") from None


def all_presets() -> dict:
    """Every preset of every registered family, by preset name (imports torch)."""
    out = {}
    for fam in FAMILIES.values():
        out.update(fam.models().PRESETS)
    return out


def find_preset(name: str):
    """(family, preset) for a preset name, or an error listing the valid names."""
    for fam in FAMILIES.values():
        presets = fam.models().PRESETS
        if name in presets:
            return fam, presets[name]
    raise EdgekitError(f"unknown preset {name!r}; known: {', '.join(all_presets())}")
