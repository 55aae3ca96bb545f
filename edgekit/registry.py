"""Family registry: maps a checkpoint's or model file's ``family`` to the modules that handle it.

    fam = get_family("gpt")
    fam.models()      # the module with PRESETS and build(config) (imports torch)
    edgekit.runtime.family_runtime("gpt")   # the runtime module (torch-free): the one way to find it

Entries are dotted module paths imported lazily, so reading the registry imports neither torch nor onnx:
the runtime reads it without importing models/ (``edgekit --help`` stays fast and torch-free).
What each family provides is listed in docs/architecture.md ("Adding a family").
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

from edgekit.errors import EdgekitError


@dataclass(frozen=True)
class Family:
    name: str  # the ``family`` string recorded in checkpoints and model files
    models_module: str  # models/<family>.py: PRESETS, build(config), preset_config, num_params (torch)
    train_module: str  # train/<family>.py: train(preset_name, opts) -> summary dict
    export_module: str  # export/<family>.py: export(ckpt, opts) -> report
    runtime_module: str  # runtime/<family>.py: load, bench_metrics, bench_workload, weight_group (torch-free)

    def models(self):
        return importlib.import_module(self.models_module)

    def trainer(self):
        return importlib.import_module(self.train_module)

    def exporter(self):
        return importlib.import_module(self.export_module)


def _family(name: str) -> Family:
    return Family(name, f"edgekit.models.{name}", f"edgekit.train.{name}", f"edgekit.export.{name}",
                  f"edgekit.runtime.{name}")


FAMILIES: dict[str, Family] = {name: _family(name) for name in ("gpt", "seqae", "amn", "bytecnn")}


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
