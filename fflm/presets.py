"""The recipes behind BENCHMARKS.md's best figures, by corpus: `fflm train --preset NAME` sets
these flags (a flag given on the command line wins). Since issue 16 they add the dual FOFE
(the history beyond the window) and SGD at 2.0 falling linearly to 0 over a fixed number of
epochs, where the first presets (BENCHMARKS.md) held 0.5 and halved it once validation
stalled. `--softmax auto` keeps the full softmax they were measured with on Brown and PTB and
takes the adaptive one on larger vocabularies.
Keys are `fflm train`'s option names. No imports here, so that `fflm --help` can show them
without loading numpy."""

PRESETS = {
    "brown": {"order": 6, "cross_sentence": True, "embed_dim": 256, "hidden": "1024,256", "tied": True,
              "dropout": 0.3, "embed_dropout": 0.1, "softmax": "auto",
              "fofe": "0.5,0.8", "lr": 2.0, "schedule": "linear", "epochs": 8},
    "ptb": {"order": 6, "cross_sentence": True, "embed_dim": 256, "hidden": "1024,256", "tied": True,
            "dropout": 0.3, "embed_dropout": 0.1, "softmax": "auto",
            "fofe": "0.5,0.8", "lr": 2.0, "schedule": "linear", "epochs": 10},
}

_FLAGS = {"tied": "--tie-embeddings"}


def preset_flags(name):
    """A preset as the command-line flags it stands for.

    >>> preset_flags("brown").split()[:3]
    ['--order', '6', '--cross-sentence']
    """
    out = []
    for k, v in PRESETS[name].items():
        flag = _FLAGS.get(k, "--" + k.replace("_", "-"))
        out.append(flag if v is True else f"{flag} {v}")
    return " ".join(out)
