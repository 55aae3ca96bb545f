"""edgekit: small PyTorch models from training to fast CPU inference.

    edgekit train phase3 --out runs/p3       # train a preset on the stdlib
    edgekit export runs/p3/phase3.pt         # -> runs/p3/phase3.onnx, verified and quantized
    edgekit infer runs/p3/phase3.onnx "def get_"

The runtime (``edgekit.runtime``) needs numpy, onnxruntime and tiktoken only.
"""
from edgekit.errors import EdgekitError

__version__ = "0.2.0"
__all__ = ["EdgekitError", "__version__"]
