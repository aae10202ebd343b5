"""Shared fixtures: where the shared corpora are, the embedded corpus, running the CLI in-process."""

import os
import sys
from pathlib import Path

import pytest

import fflm  # noqa: F401  (before any test module imports numpy: fflm tells OpenBLAS's threads to sleep when idle)

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FFLM_DATA", REPO.parent / "shared" / "data"))
SYNTH = REPO / "data" / "synth"
# NLTK finds corpora through NLTK_DATA, read when nltk.data is first imported: set it first
os.environ.setdefault("NLTK_DATA", str(DATA / "nltk_data"))


def shared_path(*parts):
    """A file under FFLM_DATA; skipped with a reason when absent, a failure in CI."""
    path = DATA.joinpath(*parts)
    if not path.exists():
        if os.environ.get("CI"):
            pytest.fail(f"shared data missing in CI: {path} (FFLM_DATA={DATA})")
        pytest.skip(f"shared data not found at {path}; set FFLM_DATA to the shared data folder")
    return path


@pytest.fixture(scope="session")
def synth_sentences():
    from fflm import read_sentences

    return {name: read_sentences(SYNTH / f"{name}.txt") for name in ("train", "valid", "test")}


@pytest.fixture
def run_cli(capsys):
    """Run `fflm ARGS...` in this process; returns (exit code, stdout, stderr)."""
    from fflm.cli import main

    def run(*args):
        code = 0
        try:
            main([str(a) for a in args])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture(autouse=True, scope="session")
def _no_stray_warning_hooks():
    # main() installs a one-line warning printer; restore the default after the session
    import warnings

    saved = warnings.showwarning
    yield
    warnings.showwarning = saved
    sys.stdout.flush()
