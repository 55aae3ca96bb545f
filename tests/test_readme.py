"""The README's embedding example is executed, so it cannot rot; the examples/ server runs."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _runtime_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Use the runtime in your app", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_starts_with_the_two_commands():
    first = (ROOT / "README.md").read_text().split("```")[1].strip().splitlines()
    assert first[0].startswith("make demo") and first[1].startswith("make test")


def test_readme_runtime_example_runs(tiny_soma):
    code = _runtime_example().replace("runs/demo/soma.onnx", str(tiny_soma["onnx"]))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "tok/s" in r.stdout


def test_serve_example_shares_one_model_between_threads(tiny_soma):
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "serve.py"), str(tiny_soma["onnx"]),
                        "--workers", "3", "--requests", "6", "--max-new-tokens", "8"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "6 requests, 48 tokens" in r.stdout
