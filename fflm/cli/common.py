"""What every `fflm` command shares: the top-level group, output helpers, shared options."""

import json
import math
import os
import sys

import click

from .. import __version__
from ..errors import FflmError

EPILOG_DATA = "Shared corpora: ../shared/data/brown (Bengio's Brown split), ../shared/data/ptb (Mikolov's PTB)."


# --- output helpers -------------------------------------------------------------------------
def _show_warning(message, category, filename, lineno, file=None, line=None):
    click.echo(f"fflm: warning: {message}", err=True)


def _progress(quiet):
    """A tqdm factory: bars on a terminal, nothing when piped or under --quiet."""
    from tqdm import tqdm

    disable = quiet or not sys.stderr.isatty()

    def bar(iterable=None, **kw):
        return tqdm(iterable, disable=disable, leave=False, dynamic_ncols=True, **kw)

    return bar


def _json_safe(x):
    """JSON has no inf/nan: write them as strings a reader can still parse."""
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def _echo_json(obj):
    click.echo(json.dumps(_json_safe(obj), indent=2))


def _epoch_line(row):
    """One epoch of a training history, as `fflm train` and `fflm info` print it."""
    if row.get("train_ppl") is not None:
        train = f"train ppl {row['train_ppl']:8.2f}"
    else:  # a sampled objective's loss is not a perplexity
        train = f"train loss {row['train_loss']:7.4f}"
    return (f"epoch {row['epoch']:>2}: {train}  valid ppl {row['valid_ppl']:8.2f}  "
            f"lr {row['lr']:.4g}  {row['seconds']:7.1f} s")


# --- shared options -------------------------------------------------------------------------
def text_options(f):
    """Options that say how text becomes tokens (saved in models, reused at evaluation)."""
    f = click.option(
        "--encoding-errors",
        type=click.Choice(["strict", "replace"]),
        default=None,
        help="Undecodable UTF-8: 'strict' (an error naming the line, default) or 'replace'.",
    )(f)
    f = click.option("--lowercase/--no-lowercase", default=None, help="Lowercase text before tokenizing.")(f)
    f = click.option(
        "--tokenizer",
        type=click.Choice(["whitespace", "nltk"]),
        default=None,
        help="'whitespace' for pre-tokenized text (default), 'nltk' for NLTK's Treebank tokenizer.",
    )(f)
    return f


def _text_config(base, tokenizer, lowercase, encoding_errors):
    from ..text import TextConfig

    d = base.to_dict() if base is not None else TextConfig().to_dict()
    if tokenizer is not None:
        d["tokenizer"] = tokenizer
    if lowercase is not None:
        d["lowercase"] = lowercase
    if encoding_errors is not None:
        d["encoding_errors"] = encoding_errors
    return TextConfig.from_dict(d)


def _corpus_text(corpus, tokenizer, lowercase, encoding_errors):
    """The text settings to read `corpus` with: a prepared folder's own (options given must
    agree with them), else the defaults with the options applied."""
    from ..prepared import PreparedCorpus, is_prepared_any
    from ..text import is_nltk

    if corpus is not None and not is_nltk(corpus) and is_prepared_any(corpus):
        folder = PreparedCorpus(corpus)
        config = _text_config(folder.text, tokenizer, lowercase, encoding_errors)
        folder.check_text(config)
        return config
    return _text_config(None, tokenizer, lowercase, encoding_errors)


def _check_output(path):
    """Fail before any work if `path` cannot be written (the write itself is atomic later)."""
    import tempfile

    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FflmError(f"{path}: folder {folder} does not exist")
    if os.path.isdir(path):
        raise FflmError(f"{path}: is a directory")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise FflmError(f"{path}: folder {folder} is not writable ({e.strerror})") from None


# --- commands -------------------------------------------------------------------------------
@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="fflm")
def cli():
    """fflm: feedforward neural language models, measured against Kneser-Ney.

    \b
    fflm train corpus.txt --valid valid.txt -o model.npz
    fflm eval model.npz test.txt --tune-on valid.txt
    fflm generate model.npz --prompt "The" --seed 1
    fflm ngram train corpus.txt -o kn5.arpa --order 5
    fflm ngram eval kn5.arpa test.txt
    """


def _sha256(path):
    """A corpus's digest: its bytes' sha256, or a prepared folder's (that of its manifest)."""
    from ..prepared import PreparedCorpus, is_prepared_any
    from ..text import fingerprint, is_nltk

    if not is_nltk(path) and is_prepared_any(path):
        return PreparedCorpus(path).digest
    return fingerprint(path)


def _parse_hidden(text):
    """'512' -> (512,), '512,256' -> (512, 256), '0' or '' -> () (logistic regression)."""
    try:
        sizes = tuple(int(h) for h in text.replace(" ", "").split(",") if h)
    except ValueError:
        raise FflmError(f"--hidden takes sizes separated by commas (e.g. 512 or 512,256), not {text!r}") from None
    if sizes == (0,):
        return ()
    if any(h < 1 for h in sizes):
        raise FflmError(f"--hidden sizes must be positive (0 alone means no hidden layer), not {text!r}")
    return sizes


def _parse_cutoffs(text):
    """'2000,10000' -> (2000, 10000); None -> None (chosen from the counts)."""
    if text is None:
        return None
    try:
        return tuple(int(c) for c in text.replace(" ", "").split(",") if c)
    except ValueError:
        raise FflmError(f"--cutoffs takes ids separated by commas (e.g. 2000,10000), not {text!r}") from None


def _parse_fofe(text):
    """'0.7' or '0.5,0.9' -> (0.7,) / (0.5, 0.9); None or '' -> () (no FOFE)."""
    if not text:
        return ()
    try:
        return tuple(float(a) for a in text.replace(" ", "").split(",") if a)
    except ValueError:
        raise FflmError(f"--fofe takes forgetting factors separated by commas (e.g. 0.7 or 0.5,0.9), not {text!r}") from None


def _process_started():
    """time.time() when this process started (from /proc; None elsewhere)."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        import time

        return time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _available_memory():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def precision_option(f):
    return click.option("--precision", type=click.Choice(["fp32", "bf16", "auto"]), default="fp32", show_default=True,
                        help="The matrix products' arithmetic: fp32, bf16 (bfloat16 operands, float32 sums and "
                             "everything else; on AMX tiles where the CPU has them, emulated slowly elsewhere) "
                             "or auto (bf16 where the CPU has AMX).")(f)


def _load_model(path, precision="fp32"):
    from ..model import FFNNLM
    from ..text import TextConfig

    model, meta = FFNNLM.load(path)
    model.set_precision(precision)
    return model, meta, TextConfig.from_dict(meta.get("text", {}))


def _checkpoint_path(output):
    root = output[:-4] if output.endswith(".npz") else output
    return root + ".ckpt.npz"


