"""What edgekit shows from files it did not write itself, and the panics of the libraries that read them.

    safe_text(value, 80)               # control characters escaped (\\x1b, \\n), cut to 80 characters
    with tiktoken_guard("model.onnx"): # a Rust panic inside tiktoken becomes a TokenizerError
        enc = tiktoken.Encoding(...)
    quiet_onnxruntime()                # onnxruntime logs errors only through the exceptions edgekit reports

A model file's metadata, a checkpoint's config and a meta.pkl come from strangers: anything from them that
reaches a terminal goes through ``safe_text`` first, so escape sequences cannot retitle the terminal or
hide text. Torch-free and onnx-free: the runtime imports it.
"""
from __future__ import annotations

import contextlib
import re
import reprlib

from edgekit.errors import TokenizerError

# C0 and C1 control characters, DEL, and the Unicode bidi and line/paragraph separators that reorder or
# break what a terminal shows; tab is escaped too (one line means one line)
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


# repr of values from files, bounded: a pickle's shared references can make a 230-byte list whose full repr is
# gigabytes; reprlib stops at a few levels and a few items
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict, _REPR.maxstring, _REPR.maxother = 3, 6, 6, 6, 80, 80
_REPR.maxlong = 40


def _escape(m: re.Match) -> str:
    c = m.group(0)
    return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")


def safe_text(value, limit: int | None = 200) -> str:
    """``value`` as text fit for a terminal: control characters escaped repr-style, at most ``limit`` characters."""
    text = value if isinstance(value, str) else _REPR.repr(value)
    if limit is not None and len(text) > limit:
        text = text[:limit] + "..."
    return _CONTROL.sub(_escape, text)


def shown(value, limit: int = 80) -> str:
    """``value`` repr-style (strings in quotes), bounded and escaped: for naming a file's value in a message."""
    return safe_text(_REPR.repr(value), limit)


def is_panic(e: BaseException) -> bool:
    """A Rust panic surfaced by PyO3 (``pyo3_runtime.PanicException``, a BaseException, not an Exception)."""
    return type(e).__name__ == "PanicException"


@contextlib.contextmanager
def tiktoken_guard(what: str):
    """Turn tiktoken's Rust panics (and its ValueErrors) inside the block into a TokenizerError about ``what``."""
    try:
        yield
    except TokenizerError:
        raise
    except (ValueError, TypeError, OverflowError) as e:
        raise TokenizerError(f"{what}: the tokenizer is invalid ({safe_text(str(e).splitlines()[0] if str(e) else type(e).__name__, 160)})") from None
    except BaseException as e:
        if not is_panic(e):
            raise
        first = (str(e).strip().splitlines() or ["panic"])[0]
        raise TokenizerError(f"{what}: the tokenizer failed inside tiktoken ({safe_text(first, 160)}); "
                             "the file's tokenizer is invalid") from None


def quiet_onnxruntime() -> None:
    """onnxruntime's default logger at ERROR (3) and above: its colour-coded warning lines never reach the terminal
    (a session's own failures still raise, and edgekit reports them in one line)."""
    import onnxruntime as ort

    if hasattr(ort, "set_default_logger_severity"):  # older onnxruntime builds lack it; logging is then theirs
        ort.set_default_logger_severity(3)
