"""The `fflm` command: parse options, call the library, print. Nothing else lives here."""

import json
import math
import os
import sys
import time
import warnings

import click

from . import __version__
from .errors import FflmError

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


def _echo_json(obj):
    def clean(x):  # JSON has no inf/nan: write them as strings a reader can still parse
        if isinstance(x, float) and not math.isfinite(x):
            return str(x)
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        return x

    click.echo(json.dumps(clean(obj), indent=2))


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
    from .text import TextConfig

    d = base.to_dict() if base is not None else TextConfig().to_dict()
    if tokenizer is not None:
        d["tokenizer"] = tokenizer
    if lowercase is not None:
        d["lowercase"] = lowercase
    if encoding_errors is not None:
        d["encoding_errors"] = encoding_errors
    return TextConfig.from_dict(d)


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
    fflm ngram train corpus.txt -o kn5.arpa --order 5
    fflm ngram eval kn5.arpa test.txt
    """


@cli.group()
def ngram():
    """The n-gram baseline: build (like KenLM's lmplz) and evaluate (like KenLM's query)."""


@ngram.command("train", epilog=EPILOG_DATA)
@click.argument("corpus")
@click.option("-o", "--output", required=True, help="The ARPA file to write (.gz to compress).")
@click.option("--order", type=click.IntRange(1, 10), default=5, show_default=True, help="n, the n-gram order.")
@click.option(
    "--smoothing",
    type=click.Choice(["kn", "add-k", "mle"]),
    default="kn",
    show_default=True,
    help="kn: interpolated modified Kneser-Ney (KenLM's); add-k (k=1 is Laplace); mle (unsmoothed).",
)
@click.option("--k", "add_k", type=float, default=1.0, show_default=True, help="k for add-k smoothing.")
@click.option("--min-count", type=click.IntRange(min=1), default=1, show_default=True, help="Rarer words become <unk>.")
@click.option("--max-vocab", type=click.IntRange(min=4), default=None, help="Cap on vocabulary size (specials included).")
@text_options
@click.option(
    "--discount-fallback",
    nargs=3,
    type=float,
    default=(0.5, 1.0, 1.5),
    show_default=True,
    help="Kneser-Ney discounts D1 D2 D3+ for an order whose counts cannot give them (tiny corpora).",
)
@click.option("--no-fallback", is_flag=True, help="Make unestimable discounts an error instead.")
@click.option("--exact-discounts", is_flag=True, help="Textbook count-of-counts instead of KenLM's (differs ~1e-3).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or summary.")
def ngram_train(corpus, output, order, smoothing, add_k, min_count, max_vocab, tokenizer, lowercase,
                encoding_errors, discount_fallback, no_fallback, exact_discounts, as_json, quiet):
    """Estimate an n-gram model from CORPUS (one sentence per line) and write it as ARPA.

    \b
    Example (KenLM's lmplz -o 5 gives the same model):
      fflm ngram train ../shared/data/brown/train.txt -o kn5.arpa --order 5
    """
    from .ngram import NGramLM
    from .text import read_sentences
    from .vocab import Vocabulary
    from .windows import Windows

    _check_output(output)
    config = _text_config(None, tokenizer, lowercase, encoding_errors)
    bar = _progress(quiet)
    start = time.perf_counter()
    with bar(total=4, desc="n-gram model") as steps:
        steps.set_postfix_str("reading")
        sentences = read_sentences(corpus, config)
        steps.update()
        vocab = Vocabulary.build(sentences, min_count=min_count, max_size=max_vocab)
        windows = Windows.from_sentences(sentences, vocab, order)
        steps.update()
        steps.set_postfix_str("estimating")
        lm = NGramLM.estimate(
            windows, vocab, order, smoothing=smoothing, k=add_k,
            discount_fallback=None if no_fallback else discount_fallback, kenlm_compat=not exact_discounts,
        )
        lm.meta = {"text": config.to_dict(), "corpus": os.path.abspath(corpus)}
        steps.update()
        steps.set_postfix_str("writing")
        lm.save_arpa(output)
        steps.update()
    seconds = time.perf_counter() - start
    summary = {
        "model": output,
        "name": lm.name,
        "order": order,
        "smoothing": smoothing,
        "vocabulary": len(vocab),
        "tokens": len(windows),
        "sentences": windows.num_sentences,
        "ngrams": lm.sizes,
        "discounts": [list(d) for d in lm.discounts] if lm.discounts else None,
        "seconds": round(seconds, 3),
    }
    if as_json:
        _echo_json(summary)
    elif not quiet:
        click.echo(f"{lm.name}: {order}-gram {smoothing} model of {corpus}")
        click.echo(f"vocabulary: {len(vocab)} words; {len(windows)} tokens in {windows.num_sentences} sentences")
        click.echo("n-grams: " + " ".join(f"{k}={n}" for k, n in enumerate(lm.sizes, 1)))
        if lm.discounts:
            click.echo(
                "discounts: "
                + " · ".join(f"{k}: " + " ".join(f"{d:.6g}" for d in ds) for k, ds in enumerate(lm.discounts, 1))
            )
        click.echo(f"wrote {output} in {seconds:.2f} s")


@ngram.command("eval")
@click.argument("model")
@click.argument("text")
@text_options
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--per-token", type=click.Path(dir_okay=False), default=None,
              help="Write word, log10 p and the n-gram length used for every token (TSV).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def ngram_eval(model, text, tokenizer, lowercase, encoding_errors, as_json, per_token, quiet):
    """Perplexity of an ARPA MODEL on TEXT, counted like KenLM's query.

    \b
    Every word and one </s> per sentence are scored, <s> never; OOV words are scored
    as <unk> and also left out in a second perplexity.
    Example:
      fflm ngram eval kn5.arpa ../shared/data/brown/test.txt
    """
    from .evaluate import format_report, report, score_ngram
    from .ngram import NGramLM
    from .text import TextConfig, read_sentences
    from .windows import Windows

    if per_token:
        _check_output(per_token)
    bar = _progress(quiet)
    with bar(total=3, desc="evaluating") as steps:
        lm = NGramLM.load_arpa(model)
        steps.update()
        base = TextConfig.from_dict(lm.meta.get("text", {})) if lm.meta else None
        config = _text_config(base, tokenizer, lowercase, encoding_errors)
        sentences = read_sentences(text, config)
        windows = Windows.from_sentences(sentences, lm.vocab, lm.order)
        steps.update()
        scores = score_ngram(lm, windows)
        steps.update()
    rep = report({lm.name: (lm.order, scores)})
    if per_token:
        _write_per_token(per_token, sentences, lm.vocab, scores)
    if as_json:
        _echo_json(rep)
    else:
        click.echo(format_report(rep))


def _write_per_token(path, sentences, vocab, scores):
    from .fileio import atomic_write

    words = [w for s in sentences for w in s + [vocab.EOS]]
    with atomic_write(path) as f:
        f.write("word\tlog10_prob\tngram_length\toov\n")
        for w, lp, n, oov in zip(words, scores.log10.tolist(), scores.ngram_length.tolist(), scores.oov.tolist()):
            f.write(f"{w}\t{lp:.6f}\t{n}\t{int(oov)}\n")


@cli.group()
def bench():
    """Benchmarks: speed and memory, each part in a fresh process (figures go to BENCHMARKS.md)."""


@bench.command("ngram")
@click.option("--data", "data_dir", default=None, help="Shared data folder (default: $FFLM_DATA or ../shared/data).")
@click.option("--orders", default="3,5", show_default=True, help="Comma-separated n-gram orders.")
@click.option("--nltk-tokens", type=click.IntRange(min=0), default=300, show_default=True,
              help="Test tokens NLTK's KneserNeyInterpolated scores (0: skip NLTK).")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def bench_ngram(data_dir, orders, nltk_tokens, as_json):
    """Build and score Kneser-Ney models on Brown, beside the kenlm module and NLTK."""
    from .bench import format_ngram, run_ngram

    data_dir = data_dir or os.environ.get("FFLM_DATA") or os.path.join("..", "shared", "data")
    if not os.path.isdir(os.path.join(data_dir, "brown")):
        raise FflmError(f"{data_dir}: no brown/ folder here; pass --data or set FFLM_DATA")
    try:
        order_list = [int(o) for o in orders.split(",")]
    except ValueError:
        raise FflmError(f"--orders takes numbers separated by commas, not {orders!r}") from None
    result = run_ngram(data_dir, order_list, nltk_tokens)
    _echo_json(result) if as_json else click.echo(format_ngram(result))


@cli.group()
def data():
    """Corpora: the embedded synthetic corpus."""


@data.command("synth")
@click.option("-o", "--output", default="data/synth", show_default=True, help="Folder for train/valid/test.txt.")
@click.option("--seed", type=int, default=2003, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def data_synth(output, seed, as_json):
    """Write the synthetic corpus whose true entropy is known (the demo's and tests' data)."""
    from .synth import write_corpus

    manifest = write_corpus(output, seed)
    if as_json:
        _echo_json(manifest)
    else:
        click.echo(
            f"wrote {output}: {manifest['vocabulary']} words; true entropy {manifest['entropy_nats_per_token']:.4f} "
            f"nats/token, best possible perplexity {manifest['perplexity_floor']:.3f}"
        )


_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())  # click >= 8.2


# --- entry point ----------------------------------------------------------------------------
def main(argv=None):
    """Run the CLI: user errors become one line on stderr and a non-zero exit, never a traceback."""
    warnings.showwarning = _show_warning
    prog = "fflm"
    try:
        cli.main(args=argv, prog_name=prog, standalone_mode=False)
    except FflmError as e:
        click.echo(f"{prog}: error: {e}", err=True)
        sys.exit(1)
    except _NO_ARGS_IS_HELP as e:
        click.echo(e.ctx.get_help())
        sys.exit(2)
    except click.UsageError as e:
        where = e.ctx.command_path if e.ctx else prog
        click.echo(f"{where}: error: {e.format_message()} (see '{where} --help')", err=True)
        sys.exit(2)
    except click.ClickException as e:
        click.echo(f"{prog}: error: {e.format_message()}", err=True)
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        click.echo(f"{prog}: interrupted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo(f"{prog}: interrupted", err=True)
        sys.exit(130)
    except MemoryError:
        click.echo(f"{prog}: error: out of memory", err=True)
        sys.exit(1)
    except BrokenPipeError:
        sys.stderr.close()  # output piped into `head`: not an error
        sys.exit(0)


if __name__ == "__main__":
    main()
