"""How the CLI shows results. The runtime returns objects (generations, scores, summaries, bench rows) and
never prints; this CLI-side module is where they become text.

    code = infer(model, ["def get_"], {"max_new_tokens": 16, "json": False})   # `edgekit infer`, to stdout
    text = bench_table(bench_model("phase3.onnx"))                             # `edgekit bench`

Each family has one writer here (``WRITERS``, keyed like the registry): it checks the options that apply
to the family, reads its inputs (arguments, '-' for stdin, .npy files) and formats the results.
"""
from __future__ import annotations

import json
import sys
from typing import Iterable, Iterator

import numpy as np

from edgekit.errors import UsageError
from edgekit.runtime.gpt_sampling import SamplingOptions, cli_flag

# generation options (SamplingOptions' fields): GPT's; the other families refuse them instead of ignoring them
GENERATION_OPTIONS = tuple(n for n in SamplingOptions.names() if n != "seed")
BYTECNN_REFUSED = SamplingOptions.names()  # in this order: the error names the first given
STDIN_CHUNK = 8192  # words read from stdin before each scoring call (bytecnn)
SEQAE_TEXT_HINT = ('this model file carries no vocabulary; make a .npy of MiniLM token vectors with '
                   '`python -m edgekit.train.vectors tokens "TEXT" -o x.npy` (needs edgekit[all]) and pass that')
AMN_TEXT_HINT = ("amn models take sentence vectors, and the MiniLM encoder (90 MB) is not in the model file; make a "
                 '.npy with `python -m edgekit.train.vectors sentences "TEXT" -o ctx.npy` (needs edgekit[all])')


def _given(opts: dict, names: Iterable[str]) -> list[str]:
    return [k for k in names if opts.get(k) not in (None, [], (), "")]


def _reject_generation_options(opts: dict, *, family: str) -> None:
    """GPT's generation options mean nothing for vector models: say so instead of ignoring them."""
    given = [cli_flag(k) for k in _given(opts, GENERATION_OPTIONS)]
    if given:
        raise UsageError(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} to GPT models only; "
                         f"{family} models take vectors (.npy)")


# ----- gpt --------------------------------------------------------------------------------------------
def gpt(model, inputs: list[str], opts: dict) -> int:
    """MODEL PROMPT: the prompt, then the completion streamed as it is decoded; one JSON object with --json."""
    if len(inputs) != 1:
        raise UsageError(f"give exactly one prompt (quote it, or '-' to read stdin); got {len(inputs)} arguments")
    prompt = inputs[0]
    if prompt == "-":
        data = sys.stdin.buffer.read()
        try:
            prompt = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise UsageError(f"stdin is not valid UTF-8 (byte {e.start}); give UTF-8 text") from None
    options = model.options(**{k: opts[k] for k in SamplingOptions.names() if opts.get(k) not in (None, ())})
    model.encode(prompt)  # a bad prompt or option is refused before anything is written
    out = sys.stdout
    if opts.get("json"):
        g = model.generate(prompt, options=options)
        out.write(json.dumps(g.to_dict(), ensure_ascii=False) + "\n")
        return 0
    out.write(prompt)
    out.flush()
    for piece in model.stream(prompt, options=options):
        out.write(piece)
        out.flush()
    out.write("\n")
    return 0


# ----- bytecnn ----------------------------------------------------------------------------------------
def _stdin_words() -> Iterator[str]:
    from edgekit.runtime.bytecnn import check_word

    for n, line in enumerate(sys.stdin, 1):
        if line.strip():  # blank lines in word lists are skipped
            yield check_word(line.rstrip("\r\n"), f"stdin line {n}")


def _chunks(words: Iterable[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for w in words:
        chunk.append(w)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def bytecnn(model, inputs: list[str], opts: dict) -> int:
    """MODEL WORD...: ``word<TAB>score`` lines, or a JSON list with --json; '-' (or nothing) reads stdin."""
    from edgekit.runtime.bytecnn import check_word

    given = _given(opts, BYTECNN_REFUSED)
    if given:
        raise UsageError(f"{cli_flag(given[0])} does not apply to word scorers (bytecnn); "
                         "give words and optionally --json or --threads")
    if not inputs or inputs == ["-"]:
        source: Iterable[str] = _stdin_words()
    elif "-" in inputs:
        raise UsageError("'-' (read stdin) must be the only input; give words or '-'")
    else:
        source = [check_word(w, f"argument {i + 1}") for i, w in enumerate(inputs)]
    as_json, n = bool(opts.get("json")), 0
    out = sys.stdout
    for chunk in _chunks(source, STDIN_CHUNK):
        scores = model.score(chunk)
        if as_json:
            out.write("".join(("[" if n == 0 and i == 0 else ",\n")
                              + json.dumps({"word": w, "score": round(float(s), 6)}, ensure_ascii=False)
                              for i, (w, s) in enumerate(zip(chunk, scores))))
        else:
            out.write("".join(f"{w}\t{s:.4f}\n" for w, s in zip(chunk, scores)))
        n += len(chunk)
    if n == 0:
        raise UsageError("no words to score; give words as arguments or one per line on stdin")
    if as_json:
        out.write("]\n")
    out.flush()
    return 0


# ----- seqae and amn (vector families) -----------------------------------------------------------------
def _summaries(model, inputs: list[str], opts: dict, *, what: str, hint: str, summarize) -> list[dict]:
    """One ``{"input": file, **summarize(model, x)}`` per .npy input."""
    from edgekit.runtime.vectors import load_npy

    _reject_generation_options(opts, family=model.family)
    if not inputs:
        raise UsageError(f"give one or more .npy files of (T, {model.dim}) or (B, T, {model.dim}) {what}")
    results = []
    for item in inputs:
        if not item.endswith(".npy"):
            raise UsageError(f"{item!r} is not a .npy file; {hint}")
        results.append({"input": item, **summarize(model, load_npy(item, dim=model.dim))})
    return results


def _write_json(results: list[dict]) -> None:
    sys.stdout.write(json.dumps(results if len(results) > 1 else results[0]) + "\n")


def _vector_results(model, inputs: list[str], opts: dict, *, family: str, what: str, hint: str) -> list[dict]:
    """The family runtime's summaries of each .npy input; with --json they are written here and [] returned."""
    import importlib

    summarize = importlib.import_module(f"edgekit.runtime.{family}").summarize
    results = _summaries(model, inputs, opts, what=what, hint=hint, summarize=summarize)
    if opts.get("json"):
        _write_json(results)
        return []
    return results


def seqae(model, inputs: list[str], opts: dict) -> int:
    """MODEL x.npy [...]: codes and reconstruction quality per sequence."""
    out = sys.stdout
    for r in _vector_results(model, inputs, opts, family="seqae", what="token vectors", hint=SEQAE_TEXT_HINT):
        n = len(r["code"])
        out.write(f"{r['input']}: {n} sequence{'s' * (n != 1)} {tuple(r['shape'])}\n")
        for i, code in enumerate(r["code"]):
            out.write(f"  [{i}] code {' '.join(f'{v:+.3f}' for v in code)}\n"
                      f"      reconstruction: token cosine {r['token_cosine'][i]:.3f}, "
                      f"sequence cosine {r['sequence_cosine'][i]:.3f}\n")
    return 0


def amn(model, inputs: list[str], opts: dict) -> int:
    """MODEL ctx.npy [...]: the predicted next vector of each document."""
    out = sys.stdout
    for r in _vector_results(model, inputs, opts, family="amn", what="sentence vectors", hint=AMN_TEXT_HINT):
        for i, v in enumerate(r["next"]):
            head = " ".join(f"{t:+.3f}" for t in v[:6])
            out.write(f"{r['input']}[{i}]: next vector ({len(v)}-d, norm {np.linalg.norm(v):.3f}) {head} ...; "
                      f"cosine to last {r['cosine_to_last'][i]:.3f}, "
                      f"to context mean {r['cosine_to_context_mean'][i]:.3f}\n")
    return 0


# ----- dispatch ---------------------------------------------------------------------------------------
WRITERS = {"gpt": gpt, "bytecnn": bytecnn, "seqae": seqae, "amn": amn}  # one per registered family


def infer(model, inputs: list[str], opts: dict) -> int:
    """Run a loaded model (``edgekit.runtime.load``) on CLI inputs and write its results to stdout."""
    return WRITERS[model.family](model, inputs, opts)


# ----- edgekit bench ---------------------------------------------------------------------------------
def bench_table(result: dict) -> str:
    """`edgekit bench`'s table: one row per metric with its budget, status and source; BROKEN lines last."""
    w = max([len("metric"), *(len(r["metric"]) for r in result["rows"])]) + 2
    lines = [f"{result['model']} ({result['family']}, {result['scheme']}, {result['threads']} thread(s))",
             f"{'metric':<{w}}{'measured':>14}  {'budget':<16}{'status':<8}source"]
    for r in result["rows"]:
        bound = " ".join(f"{'>=' if k == 'min' else '<='} {v:g}" for k, v in r["budget"].items())
        status = "-" if not r["budget"] else ("ok" if r["ok"] else "BROKEN")
        lines.append(f"{r['metric']:<{w}}{r['measured']:>14,.3f}  {bound:<16}{status:<8}{r['source']}")
    broken = [r["message"] for r in result["rows"] if not r["ok"]]
    lines += [f"BROKEN {m}" for m in broken]
    return "\n".join(lines)


# ----- edgekit web ---------------------------------------------------------------------------------
def site_summary(summary: dict) -> str:
    """`edgekit web`'s report: what was written, its size, and how to serve it."""
    mb = 1024 * 1024
    return (f"wrote {summary['site']}: {len(summary['files'])} files, {summary['bytes'] / mb:.1f} MB "
            f"({summary['gzip_bytes'] / mb:.1f} MB gzipped; model {summary['model_gzip_bytes'] / mb:.2f} MB gzipped, "
            f"{summary['scheme']})\n"
            f"serve it with any static file server, e.g. python -m http.server -d {summary['site']} 8000")
