"""`fflm ngram train` and `fflm ngram eval`: the n-gram baseline, like KenLM's lmplz and query."""

import time

import click

from ..errors import FflmError
from ..text import source_name
from .common import (
    EPILOG_DATA,
    _check_output,
    _corpus_text,
    _echo_json,
    _progress,
    _text_config,
    cli,
    text_options,
)


@cli.group()
def ngram():
    """The n-gram baseline: build (like KenLM's lmplz) and evaluate (like KenLM's query)."""


@ngram.command("train", epilog=EPILOG_DATA)
@click.argument("corpus")
@click.option("-o", "--output", required=True, help="The ARPA file to write (.gz to compress).")
@click.option("--binary", is_flag=True,
              help="Write fflm's binary model (as ngram build-binary does) instead of ARPA, with full-precision "
                   "probabilities (an ARPA file keeps 7 digits).")
@click.option("--order", type=click.IntRange(1, 10), default=5, show_default=True, help="n, the n-gram order.")
@click.option(
    "--smoothing",
    type=click.Choice(["kn", "add-k", "mle"]),
    default="kn",
    show_default=True,
    help="kn: interpolated modified Kneser-Ney (KenLM's); add-k (k=1 is Laplace); mle (unsmoothed).",
)
@click.option("--k", "add_k", type=float, default=1.0, show_default=True, help="k for add-k smoothing.")
@click.option("--min-count", type=click.IntRange(min=1), default=None,
              help="Rarer words become <unk>.  [default: 1, or the cut a prepared CORPUS recorded]")
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
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
              help="Count in shards of whole sentences as Ray tasks (--ray alone: a local Ray; --ray ADDRESS: a "
                   "cluster), merged here: the same model, entry for entry (pip install 'fflm[ray]').")
@click.option("--memory", "-S", "memory", default=None, metavar="SIZE",
              help="Estimate within SIZE of memory (4G, 200M, 80%), sorted runs spilled to --temp-dir, as KenLM's "
                   "lmplz -S: the same model, entry for entry, at any budget (kn only).")
@click.option("--temp-dir", "-T", "temp_dir", type=click.Path(file_okay=False), default=None,
              help="Where --memory spills its sorted runs (and text is prepared).  [default: $TMPDIR or /tmp]")
@click.option("--prune", default=None, metavar="T1,T2,...",
              help="Drop n-grams seen at most T_k times, as lmplz's --prune 0 0 1 (here 0,0,1: trigrams and longer "
                   "seen once); non-decreasing, the first 0, the last applies on; the model still sums to one (kn).")
@click.option("--limit-vocab", "limit_vocab", default=None, metavar="FILE",
              help="Keep only n-grams of these words (whitespace-separated), as lmplz's --limit_vocab_file: the "
                   "model's vocabulary is theirs (and <unk>, <s>, </s>); the others' counts go to the back-offs.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Threads for --memory's passes (a block each).  [default: the CPUs, at most 4]")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or summary.")
def ngram_train(corpus, output, binary, order, smoothing, add_k, min_count, max_vocab, tokenizer, lowercase,
                encoding_errors, discount_fallback, no_fallback, exact_discounts, ray_address, memory, temp_dir,
                prune, limit_vocab, threads, as_json, quiet):
    """Estimate an n-gram model from CORPUS (one sentence per line) and write it as ARPA.

    \b
    Example (KenLM's lmplz -o 5 gives the same model):
      fflm ngram train ../shared/data/brown/train.txt -o kn5.arpa --order 5
    """
    from ..ngram import NGramLM
    from ..prepared import training_data

    from ..ngram import prune_thresholds

    _check_output(output)
    config = _corpus_text(corpus, tokenizer, lowercase, encoding_errors)
    prune = _parse_prune(prune)
    prune_thresholds(prune, order)  # checked before any work
    if (prune or limit_vocab) and smoothing != "kn":
        raise FflmError("--prune and --limit-vocab go with Kneser-Ney (as lmplz's); add-k and mle keep every n-gram")
    limit_path, limit_vocab = limit_vocab, _read_word_list(limit_vocab)
    bar = _progress(quiet)
    start = time.perf_counter()
    if memory is not None or temp_dir is not None:
        return _train_on_disk(corpus, output, binary, order, smoothing, min_count, max_vocab, config,
                              None if no_fallback else discount_fallback, exact_discounts, ray_address,
                              memory, temp_dir, prune, limit_vocab, limit_path, threads, as_json, quiet)
    with bar(total=4, desc="n-gram model") as steps:
        steps.set_postfix_str("reading")
        vocab, windows, _ = training_data(corpus, config, min_count, max_vocab, order, in_memory=True)
        steps.update(2)
        steps.set_postfix_str("estimating")
        lm = NGramLM.estimate(
            windows, vocab, order, smoothing=smoothing, k=add_k,
            discount_fallback=None if no_fallback else discount_fallback, kenlm_compat=not exact_discounts,
            ray=ray_address, prune=prune, limit_vocab=limit_vocab,
        )
        lm.meta = _meta(config, corpus, prune, order, limit_path)
        steps.update()
        steps.set_postfix_str("writing")
        if binary:
            from ..ngram import save_binary

            save_binary(lm, output)
        else:
            lm.save_arpa(output)
        steps.update()
    seconds = time.perf_counter() - start
    summary = {
        "model": output,
        "name": lm.name,
        "order": order,
        "smoothing": smoothing,
        "vocabulary": len(lm.vocab),
        "tokens": len(windows),
        "sentences": windows.num_sentences,
        "ngrams": lm.sizes,
        "discounts": [list(d) for d in lm.discounts] if lm.discounts else None,
        "prune": lm.meta.get("prune"),
        "seconds": round(seconds, 3),
    }
    if as_json:
        _echo_json(summary)
    elif not quiet:
        click.echo(f"{lm.name}: {order}-gram {smoothing} model of {corpus}")
        click.echo(f"vocabulary: {len(lm.vocab)} words; {len(windows)} tokens in {windows.num_sentences} sentences")
        click.echo("n-grams: " + " ".join(f"{k}={n}" for k, n in enumerate(lm.sizes, 1)))
        if lm.discounts:
            click.echo(
                "discounts: "
                + " · ".join(f"{k}: " + " ".join(f"{d:.6g}" for d in ds) for k, ds in enumerate(lm.discounts, 1))
            )
        click.echo(f"wrote {output} in {seconds:.2f} s")


def _meta(config, corpus, prune, order, limit_path):
    """What the model file's header records of how it was made (the same with --memory or not)."""
    from ..ngram import prune_thresholds

    meta = {"text": config.to_dict(), "corpus": source_name(corpus)}
    if prune_thresholds(prune, order):
        meta["prune"] = list(prune_thresholds(prune, order))
    if limit_path:
        meta["limit_vocab"] = source_name(limit_path)
    return meta


def _read_word_list(path):
    """The words of a --limit-vocab file (whitespace-separated, UTF-8), or None."""
    if path is None:
        return None
    from ..fileio import read_bytes
    from ..text import decode

    words = decode(read_bytes(path), path).split()
    if not words:
        raise FflmError(f"{path}: --limit-vocab lists no words")
    return words


def _parse_prune(text):
    """'0,0,1' or '0 0 1' -> [0, 0, 1]; None stays None."""
    if text is None:
        return None
    try:
        return [int(x) for x in text.replace(",", " ").split()]
    except ValueError:
        raise FflmError(f"--prune takes counts separated by commas (0,0,1), not {text!r}") from None


def _train_on_disk(corpus, output, binary, order, smoothing, min_count, max_vocab, config, fallback,
                   exact_discounts, ray_address, memory, temp_dir, prune, limit_vocab, limit_path, threads, as_json,
                   quiet):
    from ..ngram_disk import build, format_size, parse_size

    if smoothing != "kn":
        raise FflmError(f"--memory estimates Kneser-Ney (as lmplz does); --smoothing {smoothing} counts in memory")
    if ray_address:
        raise FflmError("--memory and --ray do not go together yet: give one")
    budget = parse_size(memory if memory is not None else "1G")
    start = time.perf_counter()
    meta = _meta(config, corpus, prune, order, limit_path)
    summary = build(corpus, output, order, budget, temp_dir, config, min_count, max_vocab, binary, meta,
                    fallback, not exact_discounts, _progress(quiet), threads, prune, limit_vocab)
    seconds = time.perf_counter() - start
    name = f"kn{order}"
    out = {"model": output, "name": name, "order": order, "smoothing": "kn", "vocabulary": summary["vocabulary"],
           "tokens": summary["tokens"], "sentences": summary["sentences"], "ngrams": summary["ngrams"],
           "discounts": summary["discounts"], "memory": budget, "runs": summary["runs"],
           "merge_rounds": summary["merge_rounds"], "threads": summary["threads"], "prune": meta.get("prune"),
           "seconds": round(seconds, 3),
           "profile": summary["profile"]}
    if as_json:
        _echo_json(out)
    elif not quiet:
        click.echo(f"{name}: {order}-gram kn model of {corpus}, within {format_size(budget)} "
                   f"({summary['runs']} sorted runs spilled to disk)")
        click.echo(f"vocabulary: {summary['vocabulary']} words; {summary['tokens']} tokens in "
                   f"{summary['sentences']} sentences")
        click.echo("n-grams: " + " ".join(f"{k}={n}" for k, n in enumerate(summary["ngrams"], 1)))
        click.echo("discounts: " + " · ".join(f"{k}: " + " ".join(f"{d:.6g}" for d in ds)
                                              for k, ds in enumerate(summary["discounts"], 1)))
        click.echo(f"wrote {output} in {seconds:.2f} s")


@ngram.command("build-binary")
@click.argument("arpa")
@click.option("-o", "--output", required=True, help="The binary model to write.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@click.option("-q", "--quiet", is_flag=True, help="No summary.")
def ngram_build_binary(arpa, output, as_json, quiet):
    """Turn an ARPA file into fflm's binary n-gram model: sorted arrays that `ngram eval`, `score`
    open by memory map, in a moment whatever the size, with the ARPA file's probabilities.

    \b
    Example (KenLM's build_binary does the same for its query):
      fflm ngram build-binary kn5.arpa -o kn5.bin && fflm ngram eval kn5.bin test.txt
    """
    import os

    from ..ngram import NGramLM, save_binary

    _check_output(output)
    start = time.perf_counter()
    lm = NGramLM.load_arpa(arpa)
    save_binary(lm, output)
    summary = {"model": output, "from": arpa, "order": lm.order, "ngrams": lm.sizes,
               "bytes": os.path.getsize(output), "seconds": round(time.perf_counter() - start, 3)}
    if as_json:
        _echo_json(summary)
    elif not quiet:
        click.echo(f"wrote {output}: {lm.order}-gram model, {sum(lm.sizes):,} n-grams, "
                   f"{summary['bytes'] / 1e6:.1f} MB, in {summary['seconds']:.2f} s")


@ngram.command("eval")
@click.argument("model")
@click.argument("text")
@text_options
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--per-token", type=click.Path(dir_okay=False), default=None,
              help="Write word, log10 p and the n-gram length used for every token (TSV).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def ngram_eval(model, text, tokenizer, lowercase, encoding_errors, as_json, per_token, quiet):
    """Perplexity of an n-gram MODEL (ARPA, or binary from build-binary) on TEXT, counted like
    KenLM's query.

    \b
    Every word and one </s> per sentence are scored, <s> never; OOV words are scored
    as <unk> and also left out in a second perplexity.
    Example:
      fflm ngram eval kn5.arpa ../shared/data/brown/test.txt
    """
    import contextlib

    import numpy as np

    from .. import evaluate as ev
    from ..fileio import atomic_write
    from ..ngram import load_model
    from ..prepared import HeldOut
    from ..text import TextConfig

    if per_token:
        _check_output(per_token)
    bar = _progress(quiet)
    with bar(total=3, desc="evaluating") as steps:
        lm = load_model(model)
        steps.update()
        base = TextConfig.from_dict(lm.meta.get("text", {})) if lm.meta else None
        config = _text_config(base, tokenizer, lowercase, encoding_errors)
        held = HeldOut(text, config)
        windows = held.windows(lm.vocab, lm.order)
        ev.check_coverage_counts(*ev.coverage(windows), text)
        steps.update()
        totals = ev.Totals()
        with contextlib.ExitStack() as stack:  # a chunk of tokens at a time: bounded memory
            out = stack.enter_context(atomic_write(per_token)) if per_token else None
            if out is not None:
                out.write("word\tlog10_prob\tngram_length\toov\n")
            for start, stop in ev.chunk_ranges(len(windows)):
                scores = ev.score_ngram(lm, windows, np.arange(start, stop))
                totals.add({lm.name: (lm.order, scores)})
                if out is not None:
                    for w, lp, n, oov in zip(held.words(start, stop), scores.log10.tolist(),
                                             scores.ngram_length.tolist(), scores.oov.tolist()):
                        out.write(f"{w}\t{lp:.6f}\t{n}\t{int(oov)}\n")
        steps.update()
    rep = totals.report()
    if as_json:
        _echo_json(rep)
    else:
        click.echo(ev.format_report(rep))
