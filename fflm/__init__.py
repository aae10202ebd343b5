"""fflm: feedforward neural language models, measured against a Kneser-Ney baseline.

The library follows the five ingredients of supervised learning, one module each:
text -> vocab -> windows (I, data) -> model (II) + losses (III) -> train (IV) -> evaluate / generate (V),
with ngram as the baseline every neural result is compared with.
"""

from .errors import FflmError, FflmWarning
from .evaluate import perplexity
from .ngram import NGramLM
from .text import TextConfig, read_sentences
from .vocab import Vocabulary
from .windows import Windows


def __getattr__(name):
    # The neural model needs Numba, which takes a second to import: load it on first use,
    # so `fflm --help` and the n-gram tools stay quick.
    if name in ("FFNNLM", "ModelConfig"):
        from . import model

        return getattr(model, name)
    if name == "TrainConfig":  # the loop itself is fflm.train.train (fflm.train is the module)
        from .train import TrainConfig

        return TrainConfig
    raise AttributeError(f"module 'fflm' has no attribute {name!r}")


__version__ = "0.1.0"

__all__ = [
    "FFNNLM",
    "FflmError",
    "FflmWarning",
    "ModelConfig",
    "NGramLM",
    "TextConfig",
    "Vocabulary",
    "TrainConfig",
    "Windows",
    "perplexity",
    "read_sentences",
]
