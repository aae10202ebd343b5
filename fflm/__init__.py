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

__version__ = "0.1.0"

__all__ = [
    "FflmError",
    "FflmWarning",
    "NGramLM",
    "TextConfig",
    "Vocabulary",
    "Windows",
    "perplexity",
    "read_sentences",
]
