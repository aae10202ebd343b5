"""fflm: feedforward neural language models, measured against a Kneser-Ney baseline.

The library follows the five ingredients of supervised learning, one module each:
text -> vocab -> windows (I, data) -> model (II) + losses (III) -> train (IV) -> evaluate / generate (V),
with ngram as the baseline every neural result is compared with.

The API (each with runnable examples in its docstring):

- `read_sentences(path | "nltk:NAME")`: text into token lists; `TextConfig` says how.
- `Vocabulary`: words <-> ids with `<unk>`, `<s>`, `</s>`; `Vocabulary.build(sentences, min_count)`.
- `NGramLM.train(sentences, order)`, `.load_arpa`, `.save_arpa`: the Kneser-Ney baseline.
- `fit(sentences, ModelConfig(...), valid=..., epochs=...)`: a trained `FFNNLM`; `.save`,
  `.load`, `.generate`: the neural model.
- `prepare(files, folder)`, `PreparedCorpus(folder)`: a corpus tokenised once into
  memory-mapped ids, for corpora larger than memory.
- Both language models: `.logprob(word, context)`, `.score(sentence)`, `.perplexity(sentences)`,
  in log10 as KenLM reports them (`fflm.lm.LanguageModel`).

>>> from fflm import NGramLM
>>> lm = NGramLM.train(["the cat sat", "the dog sat"], order=2, smoothing="add-k")
>>> round(10 ** lm.logprob("cat", ["the"]), 4)    # (1 + 1) / (2 + 6 words)
0.25
"""

import os
import sys

# Where numpy was imported first (a script's `import numpy` above `import fflm`), OpenBLAS has
# read its settings already and the one below comes too late: train() warns then, in fp32 (a
# bf16 step makes no BLAS call).
BLAS_LOADED_FIRST = "numpy" in sys.modules and "OPENBLAS_THREAD_TIMEOUT" not in os.environ
# OpenBLAS's threads busy-wait for a while after every matrix product, and on a small machine
# that steals the cores from the Numba kernel that runs next: measured, a softmax right after a
# GEMM took 11.4 ms instead of 6.0. Letting them sleep almost at once costs the large products
# nothing. It must be set before numpy loads OpenBLAS; a user's own setting wins.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

from .errors import FflmError, FflmWarning  # noqa: E402
from .evaluate import perplexity  # noqa: E402
from .lm import LanguageModel  # noqa: E402
from .ngram import NGramLM  # noqa: E402
from .text import TextConfig, read_sentences  # noqa: E402
from .vocab import Vocabulary  # noqa: E402
from .windows import Windows  # noqa: E402


def __getattr__(name):
    # The neural model needs Numba, which takes a second to import: load it on first use,
    # so `fflm --help` and the n-gram tools stay quick.
    if name in ("FFNNLM", "ModelConfig"):
        from . import model

        return getattr(model, name)
    if name in ("TrainConfig", "fit"):  # the loop itself is fflm.train.train (fflm.train is the module)
        from . import train

        return getattr(train, name)
    if name in ("prepare", "PreparedCorpus"):
        from . import prepared

        return getattr(prepared, name)
    raise AttributeError(f"module 'fflm' has no attribute {name!r}")


__version__ = "0.1.0"

__all__ = [
    "FFNNLM",
    "FflmError",
    "FflmWarning",
    "LanguageModel",
    "ModelConfig",
    "NGramLM",
    "PreparedCorpus",
    "TextConfig",
    "Vocabulary",
    "TrainConfig",
    "Windows",
    "fit",
    "perplexity",
    "prepare",
    "read_sentences",
]
