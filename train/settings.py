"""Training settings of every family: preset defaults, then CLI options, then ``--set KEY=VALUE``.

    s = resolve(preset, opts, model_keys=True)   # seqae/amn: --set reaches the model config too
    s.train["lr"], s.model["hidden"], s.threads  # typed like the dataclass field each key names

One parser for all families: a key is a field of the preset's ``TrainDefaults`` (or, where the family
allows it, of its model config) or ``threads`` (torch intra-op threads, any family); its value is typed
by the field's annotation. An unknown key, a bad value or a key given twice is one ``UsageError``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from edgekit.errors import UsageError

# CLI options that override TrainDefaults fields of the same name (every family's TrainDefaults has them)
OPTION_FIELDS = ("max_iters", "batch_size", "lr", "eval_interval", "patience")
GENERIC_KEYS = ("threads",)  # --set keys every family takes (not fields of TrainDefaults)


@dataclass(frozen=True)
class Settings:
    train: dict  # TrainDefaults fields after options and --set, plus seed, device, data
    model: dict  # the preset's model config after --set (unchanged unless the family allows model keys)
    threads: int | None  # --set threads=N: torch intra-op threads for this run; None = torch's default


def _kind(annotation) -> str:
    """'bool', 'int', 'float' or 'str' from a field's annotation (a string under postponed annotations)."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    for kind in ("bool", "int", "float"):
        if text.split("|")[0].strip() == kind or text == kind:
            return kind
    return "str"


def parse_value(key: str, raw: str, annotation) -> object:
    """``raw`` typed like the field ``key`` (``none`` for optional fields); UsageError if it does not parse."""
    raw, kind = raw.strip(), _kind(annotation)
    if raw.lower() == "none" and "None" in str(annotation):
        return None
    if kind == "bool":
        if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
            raise UsageError(f"--set {key}={raw}: expected true or false")
        return raw.lower() in ("1", "true", "yes")
    try:
        return int(raw) if kind == "int" else float(raw) if kind == "float" else raw
    except ValueError:
        raise UsageError(f"--set {key}={raw}: expected {'an integer' if kind == 'int' else 'a number'}") from None


def _fields(obj) -> dict:
    return {f.name: f.type for f in dataclasses.fields(obj)} if dataclasses.is_dataclass(obj) else {}


def resolve(preset, opts, *, model_keys: bool = False, resumable: bool = True) -> Settings:
    """The run's settings for ``preset`` (with ``.train``, ``.model``, ``.family``) and ``TrainOptions``.

    ``model_keys``: ``--set`` may change the model config; ``resumable``: False refuses ``--resume``."""
    if opts.resume and not resumable:
        raise UsageError(f"{preset.family} training takes minutes and does not resume; run it again without --resume")
    train, train_types = dataclasses.asdict(preset.train), _fields(preset.train)
    model = preset.model.to_dict() if hasattr(preset.model, "to_dict") else dataclasses.asdict(preset.model)
    model_types = _fields(preset.model) if model_keys else {}
    given = {name: getattr(opts, name) for name in OPTION_FIELDS if getattr(opts, name) is not None}
    if opts.tokens is not None:
        given["tokens"] = opts.tokens
    if opts.full_corpus:
        given["tokens"] = None
    train.update(given)
    threads = None
    known = [*train_types, *model_types, *GENERIC_KEYS]
    for kv in opts.extra:
        key, _, raw = kv.partition("=")
        key = key.strip().replace("-", "_")
        if key not in known:
            raise UsageError(f"--set {key}: not a {preset.family} setting; known: {', '.join(known)}")
        if key in given:
            raise UsageError(f"--set {key}: given twice (also as an option or an earlier --set); give it once")
        if key == "threads":
            threads = parse_value(key, raw, "int")
            if threads < 1:
                raise UsageError(f"--set threads={threads}: must be at least 1")
        elif key in train_types:
            train[key] = parse_value(key, raw, train_types[key])
        else:
            model[key] = parse_value(key, raw, model_types[key])
        given[key] = True
    train.update(seed=opts.seed, device=opts.device, data=opts.data)
    return Settings(train=train, model=model, threads=threads)
