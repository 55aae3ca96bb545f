"""The edgekit command line. Heavy modules (torch, onnx) are imported inside commands only.

    edgekit presets
    edgekit train phase3 --out runs/p3
    edgekit export runs/p3/phase3.pt [--quant auto|fp32|int8|int4] [--target cpu|web] [-o model.onnx]
    edgekit infer runs/p3/phase3.onnx "def get_"
    edgekit inspect runs/p3/phase3.onnx
    edgekit bench runs/p3/phase3.onnx --budget benchmarks/budgets.toml
    edgekit web soma-web.onnx -o site/

Errors print one line ``edgekit: error: ...`` on stderr and exit non-zero; EDGEKIT_DEBUG=1 shows tracebacks.
"""
from __future__ import annotations

import json
import os
import sys

import click

from edgekit.errors import EdgekitError
from edgekit.export.schemes import QUANT_CHOICES  # the one --quant vocabulary (torch-free)
from edgekit.options import ExportOptions, TrainOptions

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_BUDGET = 3


def _debug() -> bool:
    return os.environ.get("EDGEKIT_DEBUG", "") not in ("", "0")


def _fail(message: str, code: int = EXIT_ERROR):
    from edgekit.guard import safe_text

    # one line, whatever a file put in the message: control characters escaped, length bounded
    click.echo(f"edgekit: error: {safe_text(message, 600)}", err=True)
    sys.exit(code)


def _one_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return " ".join(text.split())


class _Group(click.Group):
    """Turns every exception into one ``edgekit: error:`` line (tracebacks only with EDGEKIT_DEBUG=1)."""

    def main(self, *args, **kwargs):
        from edgekit.guard import is_panic, quiet_onnxruntime

        kwargs["standalone_mode"] = False
        if not _debug():
            quiet_onnxruntime()
        try:
            rv = super().main(*args, **kwargs)
            if isinstance(rv, int) and rv:
                sys.exit(rv)
            return rv
        except click.exceptions.Exit as e:
            sys.exit(e.exit_code)
        except click.exceptions.Abort:
            _fail("aborted", 130)
        except click.UsageError as e:
            hint = f" (see 'edgekit {e.ctx.info_name} --help')" if e.ctx and e.ctx.parent else " (see 'edgekit --help')"
            _fail(_one_line(e) + hint, EXIT_USAGE)
        except click.ClickException as e:
            _fail(_one_line(e), EXIT_USAGE)
        except EdgekitError as e:
            if _debug():
                raise
            _fail(_one_line(e))
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        except BrokenPipeError:
            sys.exit(0)
        except MemoryError:
            if _debug():
                raise
            _fail("out of memory")
        except RecursionError:
            if _debug():
                raise
            _fail("input nested too deeply (recursion limit)")
        except Exception as e:  # a bug, not bad input: say so in one line, keep the traceback behind the flag
            if _debug():
                raise
            _fail(f"unexpected {type(e).__name__}: {_one_line(e)} (set EDGEKIT_DEBUG=1 for the traceback)")
        except BaseException as e:  # tiktoken's Rust panic (pyo3 PanicException) derives from BaseException
            if _debug() or not is_panic(e):
                raise
            _fail(f"a library panicked on this input ({_one_line(e)[:200]}); the file is invalid")


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edgekit", prog_name="edgekit")
def cli():
    """Small PyTorch models from training to fast CPU inference."""


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def presets(as_json):
    """List every preset with its family and exact parameter count."""
    from edgekit.registry import FAMILIES

    rows = []
    for fam in FAMILIES.values():
        models = fam.models()
        for name, p in models.PRESETS.items():
            rows.append({"preset": name, "family": fam.name, "params": int(models.num_params(p)), "note": p.note})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"{'preset':<14}{'family':<9}{'params':>12}  note")
    for r in rows:
        click.echo(f"{r['preset']:<14}{r['family']:<9}{r['params']:>12,}  {r['note']}")


@cli.command()
@click.argument("preset")
@click.option("--out", default=None, help="Output folder (default runs/<preset>).")
@click.option("--data", default=None, help="Corpus folder or file (default: the family's built-in real data).")
@click.option("--tokens", type=int, default=None, help="Cap the dataset at N tokens (items for non-text families).")
@click.option("--full-corpus", is_flag=True, help="Use all the data, ignoring any token cap (the default unless --tokens).")
@click.option("--max-iters", type=int, default=None)
@click.option("--eval-interval", type=int, default=None)
@click.option("--patience", type=int, default=None, help="Evaluations without val improvement before stopping.")
@click.option("--batch-size", type=int, default=None)
@click.option("--lr", type=float, default=None)
@click.option("--seed", type=int, default=1337, show_default=True)
@click.option("--resume", is_flag=True, help="Continue from the last checkpoint in --out.")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
@click.option("--time-budget", type=float, default=None, help="Stop after this many seconds of training.")
@click.option("--set", "extra", multiple=True, help="Family-specific option KEY=VALUE.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the run summary as JSON.")
def train(preset, out, data, tokens, full_corpus, max_iters, eval_interval, patience, batch_size, lr, seed, resume,
          device, time_budget, extra, quiet, as_json):
    """Train PRESET on real data with early stopping; writes checkpoint, log and curves."""
    for name, v, lo in (("--tokens", tokens, 2), ("--max-iters", max_iters, 1), ("--eval-interval", eval_interval, 1),
                        ("--patience", patience, 1), ("--batch-size", batch_size, 1)):
        if v is not None and v < lo:
            raise click.BadParameter(f"must be at least {lo}; got {v}", param_hint=name)
    if lr is not None and not (0 < lr < 1):
        raise click.BadParameter(f"must be in (0, 1); got {lr}", param_hint="--lr")
    from edgekit.limits import LIMITS

    if not 0 <= seed <= LIMITS.seed:
        raise click.BadParameter(f"--seed must be an integer from 0 to {LIMITS.seed}; got {seed}",
                                 param_hint="--seed")
    if time_budget is not None and not time_budget > 0:
        raise click.BadParameter(f"must be positive; got {time_budget}", param_hint="--time-budget")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise click.BadParameter(f"must be cpu or cuda; got {device!r}", param_hint="--device")
    for kv in extra:
        if "=" not in kv:
            raise click.BadParameter(f"expected KEY=VALUE; got {kv!r}", param_hint="--set")
    from edgekit.fileio import check_output_folder
    from edgekit.registry import find_preset

    fam, p = find_preset(preset)
    check_output_folder(out or os.path.join("runs", preset), reads=(data,))
    opts = TrainOptions(out=out or os.path.join("runs", preset), data=data, tokens=tokens, max_iters=max_iters,
                        eval_interval=eval_interval, patience=patience, batch_size=batch_size, lr=lr, seed=seed,
                        resume=resume, device=device, full_corpus=full_corpus, progress=not quiet,
                        time_budget=time_budget, extra=tuple(extra))
    summary = fam.trainer().train(preset, opts)
    if os.environ.get("RANK", "0") != "0":  # torchrun: only rank 0 reports
        return
    if as_json:
        click.echo(json.dumps(summary, indent=2, default=str))
    else:
        click.echo(f"checkpoint: {summary['checkpoint']}")




@cli.command()
@click.argument("checkpoint")
@click.option("-o", "--out", default=None, help="Output .onnx path (default: next to the checkpoint).")
@click.option("--quant", type=click.Choice(QUANT_CHOICES), default="auto", show_default=True,
              help="Quantization scheme; auto picks the smallest that is not slower than fp32 and within budget.")
@click.option("--target", "deploy_target", type=click.Choice(["cpu", "web"]), default="cpu", show_default=True,
              help="Where the file will run: cpu (native onnxruntime) or web (onnxruntime-web in a browser: "
                   "schemes verified under wasm's numerics, timed in wasm; needs Node.js and `npm ci` in web/).")
@click.option("--meta", default=None, help="nanoGPT character-level meta.pkl.")
@click.option("--data", default=None, help="Held-out data for the quality checks (default: the family's).")
@click.option("--threads", type=int, default=None,
              help="Threads for torch and onnxruntime (default: $OMP_NUM_THREADS; else torch uses every core and "
                   "the speed measurements 1 thread).")
@click.option("--quiet", is_flag=True)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def export(checkpoint, out, quant, deploy_target, meta, data, threads, quiet, as_json):
    """Export CHECKPOINT to one verified, quantized, self-describing .onnx file.

    For a karpathy/nanoGPT ckpt.pt, data/<dataset>/meta.pkl and val.bin are found as nanoGPT's
    sample.py finds them: in the working folder, then beside the checkpoint's parent folders."""
    if threads is None and os.environ.get("OMP_NUM_THREADS"):
        env = os.environ["OMP_NUM_THREADS"]
        if not env.isdigit() or int(env) < 1:
            raise click.BadParameter(f"OMP_NUM_THREADS must be a positive integer; got {env!r}", param_hint="--threads")
        threads = int(env)
    if threads is not None and threads < 1:
        raise click.BadParameter(f"must be at least 1; got {threads}", param_hint="--threads")
    from edgekit.fileio import check_writable_target
    from edgekit.registry import get_family
    from edgekit.train.checkpoint import load_checkpoint

    target = out or os.path.splitext(checkpoint)[0] + ".onnx"
    sidecar = target + ".data"  # external weights of a model over 2 GB (export/common.py write_model)
    for path in (target, sidecar):
        check_writable_target(path, reads=(checkpoint, meta, data))
    ckpt = load_checkpoint(checkpoint, meta=meta)
    found = ckpt.read_paths()  # what loading found by itself (nanoGPT's meta.pkl, val.bin, train.bin)
    for path in (target, sidecar):
        check_writable_target(path, reads=(checkpoint, meta, data, *found))
    opts = ExportOptions(out=target, quant=quant, meta=meta, data=data, threads=threads or 1, progress=not quiet,
                         torch_threads_cap=threads, target=deploy_target)
    report = get_family(ckpt.family).exporter().export(ckpt, opts)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        click.echo(report.table())
        click.echo(f"wrote {report.output} ({report.scheme}, {os.path.getsize(report.output):,} bytes) "
                   f"in {report.seconds:.1f}s")


def _sampling_flags(command):
    """One click option per ``SamplingOptions`` field (flag, type and help from the field; values are checked
    by ``SamplingOptions.validate``, the one place, so the CLI, Python and HTTP refuse the same values)."""
    from dataclasses import fields

    from edgekit.runtime.gpt_sampling import SamplingOptions, cli_flag

    for f in reversed(fields(SamplingOptions)):
        flag, text = cli_flag(f.name), f.metadata["help"] + " (GPT)"
        if f.type == "bool":  # on by default: the flag turns it off
            opt = click.option(flag, f.name, flag_value=False, default=None, help=text)
        elif f.type.startswith("tuple"):
            opt = click.option(flag, f.name, multiple=True, help=text)
        else:
            kind = int if f.type.startswith("int") else float if f.type.startswith("float") else str
            default = f" (default {f.default})" if f.default is not None else ""
            opt = click.option(flag, f.name, type=kind, default=None, help=text + default)
        command = opt(command)
    return command


@cli.command(context_settings={"ignore_unknown_options": False})
@click.argument("model")
@click.argument("inputs", nargs=-1)
@_sampling_flags
@click.option("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: all cores).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of streaming.")
def infer(model, inputs, threads, as_json, **sampling):
    """Run MODEL on INPUTS: a prompt (GPT), words (bytecnn) or a .npy/text (vector families); '-' reads stdin."""
    if threads is not None and threads < 1:
        raise click.BadParameter(f"must be at least 1; got {threads}", param_hint="--threads")
    from edgekit.present import infer as run_inputs
    from edgekit.runtime import load

    lm = load(model, threads=threads)
    return run_inputs(lm, list(inputs), {**sampling, "json": as_json})


@cli.command()
@click.argument("model")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=8080, show_default=True, help="Port (0 = any free port).")
@click.option("--parallel", type=int, default=8, show_default=True,
              help="Batch slots: requests generating at once in one batch (continuous batching).")
@click.option("--max-queue", type=int, default=64, show_default=True,
              help="Requests waiting for a slot; beyond, 503 with Retry-After.")
@click.option("--api-key", envvar="EDGEKIT_API_KEY", default=None,
              help="Require 'Authorization: Bearer KEY' (default: $EDGEKIT_API_KEY; none = open).")
@click.option("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: all cores).")
@click.option("--timeout", type=float, default=600.0, show_default=True, help="Seconds a request may take (504).")
@click.option("--drain", type=float, default=30.0, show_default=True,
              help="Seconds SIGTERM/SIGINT waits for requests in flight before exiting.")
@_sampling_flags
def serve(model, host, port, parallel, max_queue, api_key, threads, timeout, drain, **sampling):
    """Serve MODEL over HTTP in OpenAI's shapes: /v1/completions (streaming, logprobs), /v1/models, /health,
    /metrics, and the family's own routes (/tokenize, /v1/embeddings, ...). Sampling flags set the defaults
    of requests that do not give them."""
    for name, v, lo, hi in (("--port", port, 0, 65535), ("--parallel", parallel, 1, 256),
                            ("--max-queue", max_queue, 1, 4096), ("--threads", threads, 1, 1024)):
        if v is not None and not lo <= v <= hi:
            raise click.BadParameter(f"must be from {lo} to {hi}; got {v}", param_hint=name)
    for name, v in (("--timeout", timeout), ("--drain", drain)):
        if not 0 < v < float("inf"):
            raise click.BadParameter(f"must be a positive number of seconds; got {v}", param_hint=name)
    if not os.path.isfile(model):
        raise click.BadParameter(f"{model!r} is not a file", param_hint="MODEL")
    try:
        from edgekit.serve.main import serve as run_server
        from edgekit.serve.app import ServeOptions
    except ImportError as e:
        raise click.ClickException(f"edgekit serve needs the serve extra ({e.name} is missing): "
                                   "pip install 'edgekit[serve]'") from None
    defaults = {k: v for k, v in sampling.items() if v not in (None, ())}
    return run_server(ServeOptions(model=model, host=host, port=port, parallel=parallel, max_queue=max_queue,
                                   api_key=api_key or None, threads=threads, timeout=timeout, drain=drain,
                                   defaults=tuple(defaults.items())))


@cli.command()
@click.argument("model")
@click.option("--json", "as_json", is_flag=True)
def inspect(model, as_json):
    """Show MODEL's metadata, operator counts and size breakdown."""
    from edgekit.export.inspect import inspect_model, render

    info = inspect_model(model)
    click.echo(json.dumps(info, indent=2, default=str) if as_json else render(info))


@cli.command()
@click.argument("model")
@click.option("--budget", "budget_file", default=None, help="Budgets TOML (default: edgekit's budgets for the family).")
@click.option("--threads", type=int, default=1, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def bench(model, budget_file, threads, as_json):
    """Measure MODEL like the benchmark suite; exit 3 when a budget is broken."""
    if threads < 1:
        raise click.BadParameter(f"must be at least 1; got {threads}", param_hint="--threads")
    from edgekit.present import bench_table
    from edgekit.runtime.bench import bench_model

    from edgekit.guard import safe_text

    result = bench_model(model, budget_file=budget_file, threads=threads)
    # names and sources come from files (the model's metadata, a budgets file): no control characters
    click.echo(json.dumps(result, indent=2, default=str) if as_json else
               "\n".join(safe_text(ln, None) for ln in bench_table(result).splitlines()))
    if any(not r["ok"] for r in result["rows"]):
        sys.exit(EXIT_BUDGET)


@cli.command()
@click.argument("model")
@click.option("-o", "--out", required=True, help="Folder to write the site into (new or empty).")
@click.option("--json", "as_json", is_flag=True)
def web(model, out, as_json):
    """Write a static site that runs MODEL (exported with --target web) in the browser, offline."""
    from edgekit.present import site_summary
    from edgekit.web.site import write_site

    summary = write_site(model, out=out)
    click.echo(json.dumps(summary, indent=2) if as_json else site_summary(summary))


def main():
    cli(prog_name="edgekit")


if __name__ == "__main__":
    main()
