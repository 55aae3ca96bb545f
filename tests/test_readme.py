"""The README's embedding example is executed, so it cannot rot."""
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


def test_readme_serve_example_runs_against_the_real_server():
    from serving import Server

    section = (ROOT / "README.md").read_text().split("## Serve", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    with Server(ROOT / "examples" / "reference" / "soma-stdlib.onnx") as s:
        r = subprocess.run([sys.executable, "-c", code.replace("http://127.0.0.1:8080", s.url)],
                           capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "completion_tokens=24" in r.stdout
