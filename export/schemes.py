"""The one quantization vocabulary: what ``--quant`` may say, and how a family's spec reads it.

    choice = resolve(spec.schemes, spec.int8, "int8", family="gpt")   # -> Choice("int8-nbits", ("int8-nbits",))

Torch-free (the CLI's ``--quant`` choices come from here). Every family reads the same words:

- ``auto``: every recipe the family has; the pipeline keeps the smallest that passes its checks and is not
  slower than fp32.
- ``fp32``: no quantization.
- ``int8``: the one alias, the family's default 8-bit scheme (its spec's ``int8``).
- ``int8-dynamic``, ``int8-nbits``, ``int8-static``, ``int4``: the schemes in ``VOCABULARY`` below, where the
  family declares them.

A word the family does not declare is refused before any work, in one line naming the family's choices.
"""
from __future__ import annotations

from dataclasses import dataclass

from edgekit.errors import UsageError

VOCABULARY = {
    "int8-dynamic": "onnxruntime quantize_dynamic: int8 weights, activations quantized on the fly",
    "int8-nbits": "8-bit MatMulNBits blocks (int8 compute), the tied embedding stored once",
    "int8-static": "static QDQ int8, calibrated on training windows",
    "int4": "4-bit MatMulNBits where the quality budget allows, 8-bit elsewhere",
    "int8-weights": "int8 weights dequantized to fp32 when the file loads: int8 size, fp32 compute (the web's 8-bit)",
}
QUANT_CHOICES = ("auto", "fp32", "int8", *VOCABULARY)  # the CLI's --quant choices, in this order


@dataclass(frozen=True)
class Choice:
    """What ``--quant`` resolved to: ``name`` is auto, fp32 or a scheme; ``candidates`` the recipes to build."""

    asked: str
    name: str
    candidates: tuple[str, ...]

    @property
    def auto(self) -> bool:
        return self.name == "auto"


def choices(schemes: dict[str, tuple[str, ...]], int8: str) -> list[str]:
    """The ``--quant`` words a family accepts, in the vocabulary's order."""
    own = ["auto", "fp32"] + (["int8"] if int8 else [])
    return own + [s for s in VOCABULARY if s in schemes] + [s for s in schemes if s not in VOCABULARY and s not in own]


def resolve(schemes: dict[str, tuple[str, ...]], int8: str, quant: str, *, family: str) -> Choice:
    """``quant`` for a family whose spec declares ``schemes`` (word -> recipes) and ``int8`` (the alias's target)."""
    valid = choices(schemes, int8)
    if quant not in valid:
        raise UsageError(f"--quant {quant} does not apply to {family} models; choose one of {', '.join(valid)}")
    if quant == "fp32":
        return Choice(quant, "fp32", ())
    if quant == "auto":
        every = [r for recipes in schemes.values() for r in recipes]
        return Choice(quant, "auto", tuple(dict.fromkeys(every)))
    name = int8 if quant == "int8" else quant
    return Choice(quant, name, tuple(schemes[name]))
