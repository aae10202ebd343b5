"""The README's examples run as written."""

import re
import subprocess
import sys

from conftest import REPO


def test_the_from_python_example_runs(tmp_path):
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## From Python"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    code = code.replace('"data/synth/', f'"{REPO}/data/synth/')
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    neural, kn = map(float, lines[0].split())
    assert 1 < neural < kn  # the neural model beats KN3 on the embedded corpus
    assert (tmp_path / "m.npz").exists()
