"""The model file's metadata, read once into a typed, frozen ``ModelCard`` (the format: docs/model-file.md).

    card = ModelCard.from_json(raw, path="phase3.onnx")    # raw: the ``edgekit`` metadata_props value
    card.family, card.config["n_layer"], card.block_size, card.window_keep, card.tokenizer
    card.quantization.scheme, card.deploy.target, card.source.sha256, card.verification["final"]
    card.to_dict()                                          # the JSON object again (what export writes)

Every stage reads the metadata through this class (the runtime's ``load``, ``inspect``, ``bench``, export's
own checks) and export validates what it writes with it, so no file is written that a reader refuses.
Validation lives in one place, ``ModelCard.from_dict``: a reader refuses (``ModelFileError``) a missing or
non-JSON entry, a format other than ``FORMAT_VERSION``, a missing or mistyped required key, a family
config without the keys its runtime needs, and values out of range (window, end-of-text id, target).
Unknown top-level keys are kept in ``family_fields`` (bytecnn's ``max_len``, a vector family's ``preset``):
a newer writer may add optional keys within one format version; a reader ignores what it does not use.
"""
from __future__ import annotations

import json
import types
from dataclasses import dataclass, field
from typing import Any, Mapping

from edgekit.errors import ModelFileError
from edgekit.limits import LIMITS, check_gpt_config, check_range, json_depth

META_KEY = "edgekit"  # the one ONNX metadata_props key edgekit writes
FORMAT_VERSION = 1  # bumped when a key changes meaning or a reader must refuse older files
TARGETS = ("cpu", "web")  # deploy.target: native onnxruntime (CPU) or onnxruntime-web (wasm, in a browser)
# deploy.session_config: the onnxruntime session entries a file may ask its readers to set, and their values
# (int8-weights files: fold the weights' DequantizeLinear at load); anything else is refused
SESSION_CONFIG = {"session.disable_quant_qdq": ("0", "1")}
# what each known family's runtime reads from ``config`` (positive integers); other families: nothing checked
REQUIRED_CONFIG = {"gpt": ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"),
                   "seqae": ("input_dim", "bottleneck"), "amn": ("dim", "ctx"), "bytecnn": ()}
REQUIRED_KEYS = {"gpt": ("tokenizer",)}  # top-level keys a family's file must have (a tokenizer: the text keys)
_KNOWN = ("format", "edgekit_version", "family", "config", "tokenizer", "vocab_size", "special_tokens", "block_size",
          "generation", "window", "quantization", "verification", "deploy", "source_checkpoint", "source_sha256",
          "source_format", "source_iter", "source_best_val_loss")


def _frozen(value):
    """A read-only deep copy of parsed JSON: objects become mappingproxies, lists tuples."""
    if isinstance(value, dict):
        return types.MappingProxyType({k: _frozen(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    return value


def _plain(value):
    """The JSON form of a ``_frozen`` value (dicts and lists again)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class Quantization:
    """How the weights were stored: ``scheme`` (fp32, int8-nbits, int4, int8-dynamic, ...) and the recipe."""

    scheme: str = "fp32"  # the scheme's name, as `edgekit export --quant` spells it
    recipe: Mapping[str, Any] = field(default_factory=lambda: _frozen({"scheme": "fp32"}))  # the whole object


@dataclass(frozen=True)
class Deploy:
    """Where the file is meant to run and the numerics its quality figures were verified under."""

    target: str = "cpu"  # one of TARGETS
    numerics: str = "onnxruntime CPU"  # e.g. "onnxruntime-web wasm: MatMulNBits accuracy_level 0"
    session_config: Mapping[str, str] = field(default_factory=lambda: _frozen({}))  # entries of SESSION_CONFIG


@dataclass(frozen=True)
class Provenance:
    """Where the weights came from (never an absolute path)."""

    checkpoint: str | None = None  # the checkpoint's file name
    sha256: str | None = None  # of the checkpoint file
    format: str | None = None  # "edgekit" or "nanogpt"
    iteration: int | None = None  # training iteration of the checkpoint
    best_val_loss: float | None = None  # as recorded by training


@dataclass(frozen=True)
class GenerationDefaults:
    """The file's generation defaults (the runtime's when an option is not given)."""

    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy


@dataclass(frozen=True)
class ModelCard:
    """Everything edgekit wrote into a model file, typed; see docs/model-file.md for each key."""

    format: int  # FORMAT_VERSION
    family: str  # a name in edgekit.registry.FAMILIES (inspect still shows unknown families)
    config: Mapping[str, Any]  # the architecture's config (GPT: block_size, vocab_size, n_layer, n_head, n_embd, ...)
    edgekit_version: str = "?"  # the edgekit that wrote the file
    tokenizer: Mapping[str, Any] | None = None  # tokenizer spec (runtime/tokenizer.py from_spec); GPT only
    vocab_size: int | None = None  # GPT: the tokenizer's vocabulary (the logits may be wider)
    eot_id: int | None = None  # GPT: the end-of-text id, or None (character vocabularies)
    block_size: int | None = None  # GPT: the context window in tokens
    window_keep: int | None = None  # GPT: tokens the sliding window keeps when the context is full
    generation: GenerationDefaults = GenerationDefaults()
    quantization: Quantization = Quantization()
    deploy: Deploy = Deploy()
    verification: Mapping[str, Any] = field(default_factory=lambda: _frozen({}))  # the export's figures
    source: Provenance = Provenance()
    family_fields: Mapping[str, Any] = field(default_factory=lambda: _frozen({}))  # other keys (family-specific)

    # ----- reading ------------------------------------------------------------------------------------
    @classmethod
    def from_json(cls, raw: str | None, *, path: str = "model") -> "ModelCard":
        """Parse and validate the ``edgekit`` metadata value; every problem is a ModelFileError naming ``path``."""
        if raw is not None and len(raw) > LIMITS.metadata_bytes:
            raise ModelFileError(f"{path}: edgekit metadata is {len(raw):,} bytes; at most {LIMITS.metadata_bytes:,}")
        if raw is None:
            raise ModelFileError(f"{path} has no edgekit metadata; export it with `edgekit export` "
                                 "(plain ONNX files are not edgekit models)")
        try:
            meta = json.loads(raw)
        except (json.JSONDecodeError, RecursionError) as e:
            msg = e.msg if isinstance(e, json.JSONDecodeError) else "nested too deeply"
            raise ModelFileError(f"{path}: edgekit metadata is not valid JSON ({msg}); the file was altered") from None
        if json_depth(meta, LIMITS.metadata_depth) > LIMITS.metadata_depth:
            raise ModelFileError(f"{path}: edgekit metadata is nested more than {LIMITS.metadata_depth} levels deep "
                                 "(edgekit writes 4); the file was altered")
        return cls.from_dict(meta, path=path)

    @classmethod
    def from_dict(cls, meta, *, path: str = "model") -> "ModelCard":
        """Validate a parsed metadata object (the one place a reader's refusals live)."""
        if not isinstance(meta, dict):
            raise ModelFileError(f"{path}: edgekit metadata must be a JSON object; got {type(meta).__name__}")
        missing = [k for k in ("format", "family", "config") if k not in meta]
        if missing:
            raise ModelFileError(f"{path}: edgekit metadata lacks {', '.join(missing)}")
        if meta["format"] != FORMAT_VERSION:
            raise ModelFileError(f"{path}: edgekit metadata format {meta['format']!r} is not supported (this "
                                 f"edgekit reads format {FORMAT_VERSION})")
        bad = _Checker(path, meta)
        family = bad.typed("family", str, required=True)
        config = bad.typed("config", dict, required=True)
        for k in REQUIRED_CONFIG.get(family, ()):
            if not (_is_int(config.get(k)) and config[k] > 0):
                bad.fail(f"config.{k} must be a positive integer for family {family!r}; got {config.get(k)!r}")
        for k in REQUIRED_KEYS.get(family, ()):
            bad.typed(k, dict, required=True)
        _check_sizes(bad, family, config, meta)
        text = _text_fields(bad, meta, config) if "tokenizer" in meta else {}
        return cls(format=FORMAT_VERSION, family=family, config=_frozen(config),
                   edgekit_version=str(meta.get("edgekit_version", "?")), **text,
                   quantization=_quantization(bad, meta), deploy=_deploy(bad, meta),
                   verification=_frozen(bad.typed("verification", dict, {})), source=_provenance(bad, meta),
                   family_fields=_frozen({k: v for k, v in meta.items() if k not in _KNOWN}))

    # ----- writing ------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """The JSON object (what ``export`` writes under ``META_KEY``): from_dict(to_dict()) gives this card."""
        out: dict[str, Any] = {"format": self.format, "edgekit_version": self.edgekit_version, "family": self.family,
                               "config": _plain(self.config)}
        if self.tokenizer is not None:
            out.update({"vocab_size": self.vocab_size, "tokenizer": _plain(self.tokenizer),
                        "special_tokens": {"eot": self.eot_id}, "block_size": self.block_size,
                        "generation": {"max_new_tokens": self.generation.max_new_tokens,
                                       "temperature": self.generation.temperature},
                        "window": {"keep": self.window_keep}})
        out.update(_plain(self.family_fields))
        out["quantization"] = _plain(self.quantization.recipe)
        out["deploy"] = {"target": self.deploy.target, "numerics": self.deploy.numerics}
        if self.deploy.session_config:
            out["deploy"]["session_config"] = _plain(self.deploy.session_config)
        out["verification"] = _plain(self.verification)
        s = self.source
        if s.sha256 is not None:
            out.update({"source_checkpoint": s.checkpoint, "source_sha256": s.sha256, "source_format": s.format,
                        "source_iter": s.iteration, "source_best_val_loss": s.best_val_loss})
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))


class _Checker:
    """Type checks over one metadata object, failing with the path and the key."""

    def __init__(self, path: str, meta: dict):
        self.path, self.meta = path, meta

    def fail(self, msg: str):
        raise ModelFileError(f"{self.path}: edgekit metadata {msg}")

    def typed(self, key: str, kind, default=None, src: dict | None = None, *, required: bool = False):
        """``src[key]`` (``src``: the metadata or one of its objects) if it has type ``kind``; ``default`` when
        absent or null, unless ``required``."""
        src = self.meta if src is None else src
        if src.get(key) is None:
            if required:
                self.fail(f"lacks '{key}'")
            return default
        v = src[key]
        ok = _is_int(v) if kind is int else isinstance(v, (int, float)) and not isinstance(v, bool) \
            if kind is float else isinstance(v, kind)
        if not ok:
            self.fail(f"'{key}' must be {'an object' if kind is dict else 'a ' + kind.__name__}; got {json.dumps(v)[:40]}")
        return v


def _check_sizes(bad: _Checker, family: str, config: dict, meta: dict) -> None:
    """Sizes the runtime allocates by, within edgekit/limits.py's bounds, before any session or cache exists."""
    L = LIMITS
    if len(config) > L.config_items:
        bad.fail(f"config has {len(config):,} keys; at most {L.config_items:,}")
    where = f"{bad.path}: edgekit metadata config"
    if family == "gpt":
        check_gpt_config(config, where=where, error=ModelFileError)
    elif family == "bytecnn":
        max_len = meta.get("max_len", config.get("max_len"))
        check_range("max_len", max_len, 1, L.bytecnn_max_len, where=f"{bad.path}: edgekit metadata", error=ModelFileError)
    for k in REQUIRED_CONFIG.get(family, ()) if family != "gpt" else ():
        check_range(k, config.get(k), 1, L.vector_dim, where=where, error=ModelFileError)
    for k, high in (("vocab_size", L.vocab_size), ("block_size", L.block_size)):
        if _is_int(meta.get(k)):  # mistyped values are _text_fields' to report
            check_range(k, meta[k], 1, high, where=f"{bad.path}: edgekit metadata", error=ModelFileError)
    gen = meta.get("generation")
    if isinstance(gen, dict) and _is_int(gen.get("max_new_tokens")):
        check_range("generation.max_new_tokens", gen["max_new_tokens"], 1, L.max_new_tokens,
                    where=f"{bad.path}: edgekit metadata", error=ModelFileError)


def _text_fields(bad: _Checker, meta: dict, config: dict) -> dict:
    """A language model's keys: tokenizer, vocabulary, end-of-text id, context window, generation defaults."""
    tok = bad.typed("tokenizer", dict)
    if tok is None or not isinstance(tok.get("kind"), str):
        bad.fail("'tokenizer' must be an object with a 'kind' (gpt2, bpe or char)")
    vocab = bad.typed("vocab_size", int, config.get("vocab_size"))
    block = bad.typed("block_size", int, config.get("block_size"))
    if not (_is_int(vocab) and vocab > 0 and _is_int(block) and block > 0):
        bad.fail(f"vocab_size and block_size must be positive integers; got {vocab!r}, {block!r}")
    eot = bad.typed("eot", int, None, bad.typed("special_tokens", dict, {}))
    if eot is not None and not 0 <= eot < max(vocab, config.get("vocab_size", 0)):
        bad.fail(f"special_tokens.eot {eot} is outside the vocabulary (0..{vocab - 1})")
    keep = bad.typed("keep", int, block - block // 4, bad.typed("window", dict, {}))
    if not 1 <= keep <= block:
        bad.fail(f"window.keep must be from 1 to block_size {block}; got {keep}")
    gen = bad.typed("generation", dict, {})
    g = GenerationDefaults(max_new_tokens=bad.typed("max_new_tokens", int, 64, gen),
                   temperature=float(bad.typed("temperature", float, 0.0, gen)))
    return {"tokenizer": _frozen(tok), "vocab_size": vocab, "eot_id": eot, "block_size": block, "window_keep": keep,
            "generation": g}


def _quantization(bad: _Checker, meta: dict) -> Quantization:
    q = bad.typed("quantization", dict, {"scheme": "fp32"})
    return Quantization(scheme=bad.typed("scheme", str, "fp32", q), recipe=_frozen(q))


def _deploy(bad: _Checker, meta: dict) -> Deploy:
    d = bad.typed("deploy", dict, {})
    target = bad.typed("target", str, "cpu", d)
    if target not in TARGETS:
        bad.fail(f"deploy.target {target!r} is not known; known: {', '.join(TARGETS)}")
    config = bad.typed("session_config", dict, {}, d)
    for k, v in config.items():
        if v not in SESSION_CONFIG.get(k, ()):
            bad.fail(f"deploy.session_config {k}={v!r} is not allowed; allowed: "
                     + ", ".join(f"{n} in {'/'.join(vs)}" for n, vs in SESSION_CONFIG.items()))
    return Deploy(target=target, numerics=bad.typed("numerics", str, Deploy.numerics, d), session_config=_frozen(config))


def _provenance(bad: _Checker, meta: dict) -> Provenance:
    loss = bad.typed("source_best_val_loss", float)
    return Provenance(checkpoint=bad.typed("source_checkpoint", str), sha256=bad.typed("source_sha256", str),
                      format=bad.typed("source_format", str), iteration=bad.typed("source_iter", int),
                      best_val_loss=None if loss is None else float(loss))
