"""The `fflm` command: parse options, call the library, print. Nothing else lives here."""

import json
import math
import os
import sys
import time
import warnings

import click

from . import __version__
from .errors import FflmError, FflmWarning
from .presets import PRESETS, preset_flags
from .text import is_nltk, source_name

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
    fflm train corpus.txt --valid valid.txt -o model.npz
    fflm eval model.npz test.txt --tune-on valid.txt
    fflm generate model.npz --prompt "The" --seed 1
    fflm ngram train corpus.txt -o kn5.arpa --order 5
    fflm ngram eval kn5.arpa test.txt
    """


def _sha256(path):
    from .text import fingerprint

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


def _available_memory():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _load_model(path):
    from .model import FFNNLM
    from .text import TextConfig

    model, meta = FFNNLM.load(path)
    return model, meta, TextConfig.from_dict(meta.get("text", {}))


def _checkpoint_path(output):
    root = output[:-4] if output.endswith(".npz") else output
    return root + ".ckpt.npz"


@cli.command(epilog="\b\nPresets:\n" + "\n".join(f"  --preset {name} = {preset_flags(name)}" for name in sorted(PRESETS))
             + "\n\n" + EPILOG_DATA)
@click.argument("corpus", required=False)
@click.option("-o", "--output", default=None, help="The model file to write (.npz).  [required]")
@click.option("--valid", default=None, help="Validation text: learning-rate halving, early stop, best model kept.")
@click.option("--order", type=int, default=5, show_default=True, help="n: the model sees n-1 previous words.")
@click.option("--embed-dim", type=int, default=128, show_default=True, help="m, the word embedding size.")
@click.option("--hidden", default="256", show_default=True, help="Hidden layer sizes, e.g. 512 or 512,256; 0: none.")
@click.option("--activation", type=click.Choice(["tanh", "relu", "sigmoid"]), default="tanh", show_default=True)
@click.option("--direct", is_flag=True, help="Bengio's direct connections from the embeddings to the output.")
@click.option("--tie-embeddings", "tied", is_flag=True,
              help="Use the embedding table as the output layer (U = Eᵀ; the last hidden size must equal --embed-dim).")
@click.option("--softmax", type=click.Choice(["full", "adaptive", "auto"]), default="full", show_default=True,
              help="Output layer: the full softmax, the adaptive softmax (a head of frequent words and tail "
                   "clusters; exact, far cheaper for large vocabularies), or auto: adaptive from 20,000 words on.")
@click.option("--cutoffs", default=None, metavar="ID,ID",
              help="Adaptive: where each tail cluster starts in the frequency ranking, e.g. 2000,10000 "
                   "[default: the head covers 85% of the training tokens, the first tail up to 95%].")
@click.option("--tail-div", type=click.IntRange(min=1), default=4, show_default=True,
              help="Adaptive: tail cluster i projects the output layer's input to width / DIV**i units.")
@click.option("--cross-sentence", is_flag=True,
              help="Contexts run on from the previous sentence instead of <s> padding (same scored tokens).")
@click.option("--epochs", type=int, default=12, show_default=True, help="At most this many passes over the corpus.")
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option("--lr", type=float, default=0.5, show_default=True, help="SGD learning rate (halved when validation stalls).")
@click.option("--warmup-steps", type=int, default=0, show_default=True,
              help="Raise the learning rate linearly from 0 over this many first steps.")
@click.option("--lr-decay", type=float, default=1.0, show_default=True,
              help="Multiply the learning rate by this after every epoch (besides the halving).")
@click.option("--max-halvings", type=int, default=4, show_default=True,
              help="Stop after this many halvings; halving starts this many epochs before --epochs at the latest.")
@click.option("--weight-decay", type=float, default=0.0, show_default=True, help="L2 penalty on weights and embeddings.")
@click.option("--optimizer", type=click.Choice(["sgd", "adagrad", "adam"]), default="sgd", show_default=True,
              help="Plain SGD (the teaching path), or Adagrad / Adam (use a smaller --lr, e.g. 0.05 / 0.002).")
@click.option("--dropout", type=float, default=0.0, show_default=True,
              help="Inverted dropout on the hidden layers' outputs while training (off at evaluation).")
@click.option("--embed-dropout", type=float, default=0.0, show_default=True,
              help="The same on the concatenated context embeddings.")
@click.option("--loss", type=click.Choice(["softmax", "nce", "neg"]), default="softmax", show_default=True,
              help="Training objective: exact softmax cross-entropy, or the cheaper sampled nce / neg "
                   "(negative sampling). Evaluation always uses the exact softmax.")
@click.option("--noise-samples", type=int, default=100, show_default=True, help="k noise words a batch (nce, neg).")
@click.option("--noise-power", type=float, default=0.75, show_default=True,
              help="Noise distribution: unigram counts to this power (nce, neg).")
@click.option("--clip", type=float, default=0.0, show_default=True, help="Clip the gradient norm to this (0: off).")
@click.option("--preset", type=click.Choice(sorted(PRESETS)), default=None,
              help="A measured recipe from BENCHMARKS.md (its flags below); flags given here win.")
@click.option("--max-rollbacks", type=click.IntRange(min=0), default=5, show_default=True,
              help="On a NaN/inf loss, go back to the last good weights and halve --lr, at most this often.")
@click.option("--min-count", type=click.IntRange(min=1), default=1, show_default=True, help="Rarer words become <unk>.")
@click.option("--max-vocab", type=click.IntRange(min=4), default=None, help="Cap on vocabulary size (specials included).")
@text_options
@click.option("--seed", type=int, default=1, show_default=True, help="Initialisation and shuffling seed.")
@click.option("--threads", type=click.IntRange(min=0), default=0, show_default=True, help="Cores to use (0: all).")
@click.option("--checkpoint", default=None,
              help="Resumable state file, written every --checkpoint-every seconds, after each epoch and on "
                   "Ctrl-C / SIGTERM; removed when training ends.  [default: OUTPUT with .ckpt.npz]")
@click.option("--checkpoint-every", type=click.FloatRange(min=0), default=600, show_default=True,
              help="Seconds between checkpoints within an epoch (0: only after epochs and on interruption).")
@click.option("--resume", default=None,
              help="Continue from this checkpoint with its settings (CORPUS and the other options are taken from it).")
@click.option("--json-log", default=None, help="Append one JSON object per epoch to this file.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or per-epoch lines.")
@click.pass_context
def train(ctx, corpus, output, valid, order, embed_dim, hidden, activation, direct, tied, softmax, cutoffs, tail_div,
          cross_sentence, epochs,
          batch_size, lr, warmup_steps, lr_decay, max_halvings, weight_decay, optimizer, dropout, embed_dropout, loss,
          noise_samples, noise_power, clip, preset, max_rollbacks, min_count, max_vocab, tokenizer, lowercase,
          encoding_errors, seed, threads, checkpoint, checkpoint_every, resume, json_log, quiet):
    """Train a feedforward neural LM on CORPUS (one sentence per line) with mini-batch SGD.

    \b
    The model file is rewritten (atomically) after every epoch with the best weights so far.
    Ctrl-C or SIGTERM saves a checkpoint; `fflm train --resume CKPT` continues bit-identically.
    Example (Brown, 31 minutes on 2 cores, test perplexity 110.5 against KN5's 146.7):
      fflm train ../shared/data/brown/train.txt --valid ../shared/data/brown/valid.txt -o brown.npz --preset brown
    """
    import signal

    from . import train as training
    from .model import FFNNLM, ModelConfig, memory_estimate
    from .text import TextConfig, read_sentences
    from .vocab import Vocabulary
    from .windows import Windows

    say = (lambda msg: None) if quiet else (lambda msg: click.echo(msg, err=True))
    if resume:
        given = [p.opts[-1] if p.opts else p.name for p in ctx.command.params
                 if p.name not in ("corpus", "resume", "threads", "quiet", "checkpoint_every", "json_log")
                 and ctx.get_parameter_source(p.name) == click.core.ParameterSource.COMMANDLINE]
        if given:
            raise FflmError(f"--resume continues with the checkpoint's own settings; drop {', '.join(given)}")
        run = training.Trainer.read_meta(resume).get("run")
        if not isinstance(run, dict) or "corpus" not in run:
            raise FflmError(f"{resume}: this checkpoint does not say which corpus it was training on")
        if corpus is not None and source_name(corpus) != run["corpus"]:
            raise FflmError(f"{resume}: was made on {run['corpus']}, not {corpus}")
        corpus, valid, output, checkpoint = run["corpus"], run.get("valid"), run["output"], resume
        from .fileio import check_readable

        for path, digest in ((corpus, run.get("sha256")), (valid, run.get("valid_sha256"))):
            if path is not None:
                if not is_nltk(path):
                    check_readable(path)
                if _sha256(path) != digest:
                    raise FflmError(f"{path} has changed since the checkpoint was written; cannot resume")
        text = TextConfig.from_dict(run.get("text", {}))
        if run.get("threads") not in (None, threads):
            warnings.warn(f"the checkpoint was made with --threads {run['threads']}; with {threads} the result "
                          "can differ in the last bits from an uninterrupted run", FflmWarning)
    else:
        if corpus is None:
            raise click.UsageError("missing argument 'CORPUS' (or give --resume CHECKPOINT)")
        if output is None:
            raise click.UsageError("missing option '-o' / '--output'")
        text = _text_config(None, tokenizer, lowercase, encoding_errors)
        checkpoint = checkpoint or _checkpoint_path(output)
        if preset:  # the preset's values wherever the command line gave none
            names = ("order", "cross_sentence", "embed_dim", "hidden", "tied", "dropout", "embed_dropout",
                     "activation", "lr", "batch_size", "epochs", "weight_decay", "max_halvings", "softmax")
            assert set(PRESETS[preset]) <= set(names), "a preset sets an option this list does not apply"
            given = {k for k in ctx.params if ctx.get_parameter_source(k) == click.core.ParameterSource.COMMANDLINE}
            p = {**ctx.params, **{k: v for k, v in PRESETS[preset].items() if k not in given}}
            (order, cross_sentence, embed_dim, hidden, tied, dropout, embed_dropout, activation, lr, batch_size,
             epochs, weight_decay, max_halvings, softmax) = (p[k] for k in names)
    _check_output(output)
    _check_output(checkpoint)
    if json_log:
        _check_output(json_log)
    sentences = read_sentences(corpus, text)
    valid_sentences = read_sentences(valid, text) if valid else None
    if resume:
        def windows_for(model):
            return model.windows(sentences), (model.windows(valid_sentences) if valid_sentences else None)

        trainer, cmeta = training.Trainer.load_checkpoint(resume, windows_for)
        model, tconfig, meta = trainer.model, trainer.config, cmeta["model_meta"]
        used = training.set_threads(threads)
        say(f"resuming {resume}: epoch {trainer.epoch}, batch {trainer.batch}, {used} thread(s)")
    else:
        config = ModelConfig(order=order, embed_dim=embed_dim, hidden=_parse_hidden(hidden), activation=activation,
                             direct=direct, cross_sentence=cross_sentence, tied=tied, softmax=softmax,
                             cutoffs=_parse_cutoffs(cutoffs), tail_div=tail_div)
        config.check()
        tconfig = training.TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, warmup_steps=warmup_steps,
                                       lr_decay=lr_decay, max_halvings=max_halvings,
                                       weight_decay=weight_decay, optimizer=optimizer, dropout=dropout,
                                       embed_dropout=embed_dropout, loss=loss, noise_samples=noise_samples,
                                       noise_power=noise_power, clip=clip, seed=seed, threads=threads)
        tconfig.check()
        vocab = Vocabulary.build(sentences, min_count=min_count, max_size=max_vocab)
        config = config.resolve(vocab.counts)
        config.check_vocab(len(vocab))
        windows = Windows.from_sentences(sentences, vocab, order, cross_sentence)
        words = len(windows) - windows.num_sentences
        if words < order - 1:
            raise FflmError(f"{corpus}: only {words} words, fewer than the {order - 1} context words of --order {order}")
        valid_windows = Windows.from_sentences(valid_sentences, vocab, order, cross_sentence) if valid else None
        need = memory_estimate(config, len(vocab), batch_size, noise_samples=noise_samples if loss != "softmax" else 0,
                               optimizer=optimizer)
        have = _available_memory()
        if have is not None and need > have:
            raise FflmError(
                f"this model needs about {need / 2**30:.1f} GiB to train but {have / 2**30:.1f} GiB is available; "
                "use a smaller --hidden, --embed-dim, --batch-size or --max-vocab"
            )
        used = training.set_threads(threads)
        model = FFNNLM(vocab, config, seed=seed)
        trainer = training.Trainer(model, windows, valid_windows, tconfig, max_rollbacks=max_rollbacks)
        say(f"vocabulary {len(vocab)}, {len(windows)} training tokens, {config.n_params(len(vocab)):,} parameters, "
            f"{used} thread(s)")
        meta = {
            "text": text.to_dict(),
            "training": {
                "preset": preset,
                "corpus": source_name(corpus),
                "sha256": _sha256(corpus),
                "valid": source_name(valid) if valid else None,
                "config": tconfig.to_dict(),
                "history": [],
            },
        }
    meta["training"]["compile_seconds"] = round(training.warm_up(model, tconfig), 3)
    run_info = {
        "corpus": meta["training"]["corpus"], "sha256": meta["training"]["sha256"],
        "valid": meta["training"]["valid"],
        "valid_sha256": _sha256(meta["training"]["valid"]) if meta["training"]["valid"] else None,
        "output": os.path.abspath(output), "text": meta["text"], "threads": threads,
    }

    def on_epoch(trainer):
        row = trainer.history[-1]
        meta["training"]["history"] = trainer.history
        meta["training"]["rollbacks"] = trainer.rollbacks
        model.save(output, meta)
        say(_epoch_line(row) + (f"  {row['tokens_per_s']:,.0f} tokens/s" if row["tokens_per_s"] else ""))
        if json_log:
            with open(json_log, "a", encoding="utf-8") as f:
                f.write(json.dumps(_json_safe(row)) + "\n")

    def on_checkpoint(trainer):
        trainer.save_checkpoint(checkpoint, {"run": run_info, "model_meta": meta})

    if json_log and os.path.exists(json_log) and not resume:
        os.remove(json_log)  # a fresh log per run
    stop = {}

    def on_signal(signum, frame):
        stop.setdefault("signal", signum)

    handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    start = time.perf_counter()
    try:
        history = trainer.run(progress=None if quiet else _progress(quiet), on_epoch=on_epoch,
                              should_stop=lambda t: bool(stop), on_checkpoint=on_checkpoint,
                              on_event=lambda msg: warnings.warn(msg, FflmWarning),
                              checkpoint_seconds=checkpoint_every)
    except training.Interrupted:
        name = signal.Signals(stop["signal"]).name
        click.echo(f"fflm: {name}: stopped in epoch {trainer.epoch} after batch {trainer.batch}; checkpoint "
                   f"{checkpoint}; continue with: fflm train --resume {checkpoint}", err=True)
        sys.exit(128 + stop["signal"])
    except training.Diverged:
        if os.path.exists(checkpoint):
            os.remove(checkpoint)  # a diverged run is not worth resuming; the model file keeps the best
        raise
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
    if os.path.exists(checkpoint):
        os.remove(checkpoint)  # finished: the model file has the best weights
    best = min((r["valid_ppl"] for r in history), default=float("nan")) if valid else None
    if valid and not quiet and sys.stdout.isatty() and len(history) > 1:
        from .plot import text_plot

        click.echo(text_plot([r["valid_ppl"] for r in history]))
    say(f"wrote {output} after {len(history)} epochs in {time.perf_counter() - start:.0f} s"
        + (f"; best valid ppl {best:.2f}" if best is not None else ""))


@cli.command("eval")
@click.argument("model_path", metavar="MODEL")
@click.argument("text")
@click.option("--baseline", type=click.Choice(["kn", "add-k", "none"]), default="kn", show_default=True,
              help="The n-gram model beside the neural one, built on the model's training corpus.")
@click.option("--baseline-order", type=click.IntRange(1, 10), default=None, help="Its order (default: the model's n).")
@click.option("--baseline-train", default=None, help="Build the baseline on this corpus instead.")
@click.option("--k", "add_k", type=float, default=1.0, show_default=True, help="k for --baseline add-k.")
@click.option("--tune-on", default=None, help="Validation text: add the interpolation of both, its weight tuned there.")
@click.option("--mix", "mix_paths", multiple=True, metavar="MODEL",
              help="Another neural model with the same vocabulary (repeatable): rows fflm2, ..., their "
                   "equal-weight ensemble and, with --tune-on, the mixture of all.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--per-token", type=click.Path(dir_okay=False), default=None, help="Write every token's log10 p (TSV).")
@click.option("--threads", type=click.IntRange(min=0), default=0, show_default=True, help="Cores to use (0: all).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def eval_(model_path, text, baseline, baseline_order, baseline_train, add_k, tune_on, mix_paths, as_json, per_token,
          threads, quiet):
    """Perplexity of a neural MODEL on TEXT, beside an n-gram baseline, on exactly the same tokens.

    \b
    Every word and one </s> per sentence is scored with the exact softmax; OOV words are
    scored as <unk>. Rows: fflm, the baseline (kn5, laplace5, ...) and, with --tune-on,
    their linear interpolation with the weight that is best on the tuning text. With --mix,
    the other models too, their equal-weight ensemble, and (with --tune-on) the mixture of
    every model, its weights tuned by EM.
    Examples:
      fflm eval brown.npz ../shared/data/brown/test.txt --tune-on ../shared/data/brown/valid.txt
      fflm eval a.npz test.txt --mix b.npz --tune-on valid.txt
    """
    from . import evaluate as ev
    from .ngram import NGramLM
    from .text import read_sentences
    from .train import set_threads
    from .windows import Windows

    if per_token:
        _check_output(per_token)
    set_threads(threads)
    model, meta, config = _load_model(model_path)
    others = []  # (row name, path, model): the --mix models, checked to score the same tokens
    for i, path in enumerate(mix_paths, start=2):
        other, _, other_config = _load_model(path)
        if other.vocab.words != model.vocab.words:
            raise FflmError(f"{path}: its vocabulary differs from {model_path}'s; only models over the same "
                            "vocabulary can be mixed (their perplexities are not comparable)")
        if other_config != config:
            raise FflmError(f"{path}: its text settings ({other_config.to_dict()}) differ from {model_path}'s "
                            f"({config.to_dict()}); only models reading text the same way can be mixed")
        others.append((f"fflm{i}", path, other))
    n = model.config.order
    N = baseline_order or n
    width = max([n, N] + [o.config.order for _, _, o in others])
    sentences = read_sentences(text, config)
    ev.check_coverage(sentences, model.vocab, text)
    windows = Windows.from_sentences(sentences, model.vocab, width)
    scores = {"fflm": (n, ev.score_neural(model, model.windows(sentences)))}  # its own contexts; same targets
    for name, _, other in others:
        scores[name] = (other.config.order, ev.score_neural(other, other.windows(sentences)))
    neural = list(scores)
    lm = None
    if baseline != "none":
        source = baseline_train or meta.get("training", {}).get("corpus")
        if not source or not (is_nltk(source) or os.path.exists(source)):
            raise FflmError(f"the training corpus {source!r} recorded in the model is not here; "
                            "pass --baseline-train FILE or --baseline none")
        baseline_sentences = read_sentences(source, config)
        train_windows = Windows.from_sentences(baseline_sentences, model.vocab, N)
        lm = NGramLM.estimate(train_windows, model.vocab, N, smoothing=baseline, k=add_k)
        scores[lm.name] = (N, ev.score_ngram(lm, windows))
    parts = neural + ([lm.name] if lm else [])
    if others:
        equal = [1.0 / len(neural)] * len(neural)
        scores["ensemble"] = (max(scores[k][0] for k in neural), ev.mix([scores[k][1] for k in neural], equal))
    lam = weights = None
    if tune_on:
        if len(parts) < 2:
            raise FflmError("--tune-on needs something to interpolate with: a baseline (not --baseline none) or --mix")
        tune_sentences = read_sentences(tune_on, config)
        _warn_if_seen(tune_on, tune_sentences, meta, source if lm is not None else None,
                      baseline_sentences if lm is not None else None, config)
        tune = Windows.from_sentences(tune_sentences, model.vocab, width)
        tuned = {"fflm": ev.score_neural(model, model.windows(tune_sentences))}
        for name, _, other in others:
            tuned[name] = ev.score_neural(other, other.windows(tune_sentences))
        if lm is not None:
            tuned[lm.name] = ev.score_ngram(lm, tune)
            lam = ev.tune_lambda(tuned["fflm"], tuned[lm.name])
            scores["interpolated"] = (max(n, N), ev.interpolate(scores["fflm"][1], scores[lm.name][1], lam))
        if others:
            weights = dict(zip(parts, ev.tune_weights([tuned[k] for k in parts]).tolist()))
            scores["mixture"] = (max(scores[k][0] for k in parts),
                                 ev.mix([scores[k][1] for k in parts], list(weights.values())))
    rep = ev.report(scores)
    rows = {m["name"]: m for m in rep["models"]}
    for name, path, _ in others:
        rows[name]["model"] = path
    if lam is not None:
        rows["interpolated"]["lambda"] = lam
    if weights is not None:
        rows["mixture"]["weights"] = weights
    if per_token:
        from .fileio import atomic_write

        words = [w for s in sentences for w in s + ["</s>"]]
        names = list(scores)
        with atomic_write(per_token) as f:
            f.write("word\t" + "\t".join(f"{name}_log10" for name in names) + "\toov\n")
            columns = [scores[name][1].log10.tolist() for name in names]
            oov = scores["fflm"][1].oov.tolist()
            for i, w in enumerate(words):
                f.write(w + "\t" + "\t".join(f"{c[i]:.6f}" for c in columns) + f"\t{int(oov[i])}\n")
    if as_json:
        _echo_json(rep)
    else:
        click.echo(ev.format_report(rep))
        if others:
            click.echo("")
            for name, path, _ in others:
                click.echo(f"{name} = {path}")
            click.echo(f"ensemble = the mean of the probabilities of {', '.join(neural[:-1])} and {neural[-1]}")
        if lam is not None:
            click.echo(f"\ninterpolated = {lam:.4f} * fflm + {1 - lam:.4f} * {lm.name}  (weight tuned on {tune_on})")
        if weights is not None:
            terms = " + ".join(f"{w:.4f} * {k}" for k, w in weights.items())
            click.echo(f"mixture = {terms}  (weights tuned on {tune_on} by EM)")


@cli.command()
@click.argument("model_path", metavar="MODEL")
@click.option("--prompt", default="", help="Text the samples continue (tokenized like the training text).")
@click.option("--num-words", type=int, default=30, show_default=True, help="At most this many words per sample.")
@click.option("--num-samples", type=int, default=5, show_default=True)
@click.option("--temperature", type=float, default=1.0, show_default=True, help="<1 sharper, >1 flatter.")
@click.option("--top-k", type=int, default=0, show_default=True, help="Sample only from the k likeliest words (0: all).")
@click.option("--seed", type=int, default=None, help="Same seed, same samples.")
@click.option("--no-unk", is_flag=True, help="Never produce <unk>.")
@click.option("--json", "as_json", is_flag=True, help="Print the samples as a JSON list.")
def generate(model_path, prompt, num_words, num_samples, temperature, top_k, seed, no_unk, as_json):
    """Sample sentences from a neural MODEL, word by word, until </s>.

    \b
    Example:
      fflm generate brown.npz --prompt "The jury" --num-samples 3 --temperature 0.8 --top-k 50 --seed 1
    """
    from .generate import sample

    model, _, config = _load_model(model_path)
    words = config.tokenize(prompt) if prompt.strip() else []
    samples = sample(model, num_samples, words, num_words, temperature, top_k, seed, no_unk)
    if as_json:
        _echo_json([" ".join(s) for s in samples])
    else:
        for s in samples:
            click.echo(" ".join(s))


@cli.command()
@click.argument("model_path", metavar="MODEL")
@click.option("--json", "as_json", is_flag=True, help="Print the metadata as JSON.")
def info(model_path, as_json):
    """What a model file holds: architecture, vocabulary, text settings, training corpus and history."""
    model, meta, _ = _load_model(model_path)
    V = len(model.vocab)
    summary = {k: v for k, v in meta.items() if k != "vocab"}
    summary["vocabulary_size"] = V
    summary["parameters"] = model.config.n_params(V)
    if as_json:
        _echo_json(summary)
        return
    c = model.config
    click.echo(f"{model_path}: fflm model format {meta['version']}, {meta.get('dtype')}")
    click.echo(f"architecture: n={c.order}, embedding {c.embed_dim}, hidden {list(c.hidden) or 'none'}, "
               f"{c.activation}{', direct connections' if c.direct else ''}{', tied embeddings' if c.tied else ''}"
               f"{', cross-sentence contexts' if c.cross_sentence else ''}; {summary['parameters']:,} parameters")
    if c.softmax == "adaptive":
        from .output import tail_dims

        bounds = list(c.cutoffs) + [V]
        tails = ", ".join(f"{bounds[i + 1] - bounds[i]} words at width {d}" for i, d in enumerate(tail_dims(c)))
        click.echo(f"output layer: adaptive softmax, head of {bounds[0]} words + {len(c.cutoffs)} cluster(s)"
                   + (f"; tails: {tails}" if tails else ""))
    else:
        click.echo("output layer: full softmax")
    click.echo(f"vocabulary: {V} words (min count {model.vocab.min_count}, max {model.vocab.max_size})")
    click.echo(f"text: {meta.get('text')}")
    tr = meta.get("training", {})
    if tr:
        click.echo(f"trained on: {tr.get('corpus')} (sha256 {str(tr.get('sha256'))[:16]}…)")
        if tr.get("valid"):
            click.echo(f"validated on: {tr['valid']}")
        click.echo(f"settings: {tr.get('config')}")
        for row in tr.get("history", []):
            click.echo("  " + _epoch_line(row))


@cli.command()
@click.argument("model_path", metavar="MODEL")
@click.argument("text")
@click.option("--per-token", is_flag=True, help="Every word's id, n-gram length and log10 p before each Total.")
@click.option("--summary-only", is_flag=True, help="Only the closing summary (KenLM's `query -v summary`).")
@click.option("--threads", type=click.IntRange(min=0), default=0, show_default=True, help="Cores to use (0: all).")
def score(model_path, text, per_token, summary_only, threads):
    """Score TEXT with MODEL (an fflm .npz or an ARPA file) in the layout of KenLM's `query`.

    \b
    Per sentence `Total: <log10 p> OOV: <count>`; with --per-token each token as
    `word=<id> <n-gram length> <log10 p>` and a tab first; then KenLM's summary lines
    (Perplexity including OOVs, Perplexity excluding OOVs, OOVs, Tokens). Scripts that
    parse KenLM's output read this.
    Example:
      fflm score brown.npz ../shared/data/brown/test.txt --per-token | head -3
    """
    from . import evaluate as ev
    from .text import TextConfig, read_sentences
    from .windows import Windows

    from .fileio import check_readable

    check_readable(model_path)
    with open(model_path, "rb") as f:
        neural = f.read(4) == b"PK\x03\x04"
    if neural:
        from .train import set_threads

        set_threads(threads)
        model, _, config = _load_model(model_path)
        sentences = read_sentences(text, config)
        ev.check_coverage(sentences, model.vocab, text)
        scores, order = ev.score_neural(model, model.windows(sentences)), model.config.order
    else:
        from .ngram import NGramLM

        lm = NGramLM.load_arpa(model_path)
        config = TextConfig.from_dict(lm.meta.get("text", {})) if lm.meta else TextConfig()
        sentences = read_sentences(text, config)
        ev.check_coverage(sentences, lm.vocab, text)
        scores, order = ev.score_ngram(lm, Windows.from_sentences(sentences, lm.vocab, lm.order)), lm.order
    if not summary_only:
        for line in ev.query_lines(sentences, scores, order, per_token):
            click.echo(line)
    click.echo(ev.query_summary(scores))


@cli.command()
@click.argument("model_path", metavar="MODEL")
@click.argument("word")
@click.option("-k", "k", type=int, default=10, show_default=True, help="How many neighbours.")
@click.option("--json", "as_json", is_flag=True, help="Print them as JSON.")
def neighbors(model_path, word, k, as_json):
    """The words nearest to WORD by cosine similarity of the model's embeddings.

    \b
    Example:
      fflm neighbors brown.npz president -k 5
    """
    from .embeddings import neighbors as nearest

    model, _, _ = _load_model(model_path)
    pairs = nearest(model, word, k)
    if as_json:
        _echo_json([{"word": w, "cosine": c} for w, c in pairs])
    else:
        for w, c in pairs:
            click.echo(f"{c:8.4f}  {w}")


@cli.command("export-embeddings")
@click.argument("model_path", metavar="MODEL")
@click.option("-o", "--output", required=True, help="The vectors file (word2vec text format).")
def export_embeddings(model_path, output):
    """Write every word's embedding in word2vec's text format ('V m', then 'word v1 ... vm').

    \b
    gensim reads it: KeyedVectors.load_word2vec_format("vectors.txt")
    Example:
      fflm export-embeddings brown.npz -o brown.vec
    """
    from .embeddings import write_word2vec

    _check_output(output)
    model, _, _ = _load_model(model_path)
    write_word2vec(model, output)
    click.echo(f"wrote {output}: {model.E.shape[0]} words x {model.E.shape[1]} dimensions", err=True)


@cli.command()
@click.argument("model_path", metavar="MODEL")
@click.option("-o", "--output", default="curves.png", show_default=True, help="The picture (.png, .pdf, .svg).")
def plot(model_path, output):
    """Draw the learning curve saved in MODEL: train and validation perplexity per epoch, and the
    learning rate (needs matplotlib: pip install 'fflm[plot]').

    \b
    Example:
      fflm plot brown.npz -o brown-curves.png
    """
    from .plot import plot_curves

    _check_output(output)
    model, meta, _ = _load_model(model_path)
    history = meta.get("training", {}).get("history", [])
    plot_curves(history, output, title=os.path.basename(model_path))
    click.echo(output)


@cli.command("plot-embeddings")
@click.argument("model_path", metavar="MODEL")
@click.option("-o", "--output", required=True, help="The picture (.png, .pdf, .svg).")
@click.option("--words", default=None, help="Words to show, separated by commas (default: the most frequent).")
@click.option("--top", type=click.IntRange(min=2), default=100, show_default=True,
              help="Without --words: how many of the most frequent words.")
def plot_embeddings_cmd(model_path, output, words, top):
    """A 2-D PCA of word embeddings, each point labelled with its word (needs matplotlib).

    \b
    Example:
      fflm plot-embeddings brown.npz -o emb.png --words man,woman,king,queen,day,night
    """
    import numpy as np

    from .embeddings import pca_2d
    from .plot import plot_embeddings

    _check_output(output)
    model, _, _ = _load_model(model_path)
    vocab = model.vocab
    if words:
        chosen = [w for w in words.replace(" ", "").split(",") if w]
        missing = [w for w in chosen if w not in vocab]
        if missing:
            raise FflmError(f"not in the model's vocabulary: {', '.join(missing)}")
        if len(chosen) < 2:
            raise FflmError("--words needs at least two words")
    else:
        counts = np.asarray(vocab.counts)
        ids = [int(i) for i in np.argsort(-counts, kind="stable") if i >= len(vocab.SPECIALS)][:top]
        chosen = [vocab.words[i] for i in ids]
    points, explained = pca_2d(model.E[[vocab.id(w) for w in chosen]])
    plot_embeddings(chosen, points, output, explained)
    click.echo(output)


@cli.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell):
    """Print the shell completion script for SHELL.

    \b
    Example (bash):
      eval "$(fflm completion bash)"     # or add that line to ~/.bashrc
    """
    from click.shell_completion import get_completion_class

    comp = get_completion_class(shell)(cli, {}, "fflm", "_FFLM_COMPLETE")
    click.echo(comp.source())


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
        lm.meta = {"text": config.to_dict(), "corpus": source_name(corpus)}
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
    from .evaluate import check_coverage, format_report, report, score_ngram
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
        check_coverage(sentences, lm.vocab, text)
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


def _warn_if_seen(tune_on, tune_sentences, meta, baseline_source, baseline_sentences, config):
    """Warn when the tuning text is largely part of the model's or the baseline's training text."""
    from .evaluate import tuning_overlap
    from .text import read_sentences

    corpora = {}
    if baseline_source is not None:
        corpora[baseline_source] = baseline_sentences
    model_source = meta.get("training", {}).get("corpus")
    if model_source and model_source not in corpora and (is_nltk(model_source) or os.path.exists(model_source)):
        corpora[model_source] = read_sentences(model_source, config)
    for source, sentences in corpora.items():
        o = tuning_overlap(tune_sentences, sentences)
        if o["suspicious"]:
            warnings.warn(f"--tune-on {tune_on}: {100 * o['seen_share']:.1f}% of its tokens ({o['seen_sentences']:,} of "
                          f"{o['sentences']:,} sentences) are in the training text {source} (repeats within it: "
                          f"{100 * o['natural_share']:.1f}%); weights tuned on it favour the model that memorised "
                          "them: tune on held-out text", FflmWarning)


def _write_per_token(path, sentences, vocab, scores):
    from .fileio import atomic_write

    words = [w for s in sentences for w in s + [vocab.EOS]]
    with atomic_write(path) as f:
        f.write("word\tlog10_prob\tngram_length\toov\n")
        for w, lp, n, oov in zip(words, scores.log10.tolist(), scores.ngram_length.tolist(), scores.oov.tolist()):
            f.write(f"{w}\t{lp:.6f}\t{n}\t{int(oov)}\n")


@cli.group(invoke_without_command=True)
@click.option("--config", "config_name", type=click.Choice(["small", "base"]), default="base", show_default=True,
              help="small: n=5 m=64 h=256 batch 128; base: n=5 m=128 h=512 batch 256 (Brown's vocabulary).")
@click.option("--data", "data_dir", default=None, help="Shared data folder (default: $FFLM_DATA or ../shared/data).")
@click.option("--threads", type=click.IntRange(min=0), default=0, show_default=True, help="Cores to use (0: all).")
@click.option("--seconds", type=click.FloatRange(min=1), default=20.0, show_default=True,
              help="Training time measured per implementation.")
@click.option("--loss", type=click.Choice(["softmax", "nce", "neg"]), default="softmax", show_default=True)
@click.option("--torch/--no-torch", "use_torch", default=True, show_default=True,
              help="Also time the same model written in PyTorch (when installed: the 'bench' extra).")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as one JSON object.")
@click.pass_context
def bench(ctx, config_name, data_dir, threads, seconds, loss, use_torch, as_json):
    """Benchmarks (figures go to BENCHMARKS.md). Without a subcommand: training, scoring and
    generation speed of a config against this machine's GEMM rate and PyTorch."""
    if ctx.invoked_subcommand is not None:
        return
    from .bench import format_speed, recipe_paths, run_speed

    data_dir = data_dir or os.environ.get("FFLM_DATA") or os.path.join("..", "shared", "data")
    for path in recipe_paths(data_dir, "brown")[:2]:
        if not os.path.isfile(path):
            raise FflmError(f"{path}: not found; pass --data or set FFLM_DATA")
    result = run_speed(data_dir, config_name, threads, seconds, use_torch, loss)
    _echo_json(result) if as_json else click.echo(format_speed(result))


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


@bench.command("softmax")
@click.option("--config", "config_name", type=click.Choice(["small", "base"]), default="base", show_default=True,
              help="The model's sizes (as for bin/bench --config).")
@click.option("--vocabs", default="50000,100000,200000", show_default=True,
              help="Synthetic vocabulary sizes, beside Brown's raw text at --min-count 2 (24.5k words).")
@click.option("--data", "data_dir", default=None, help="Shared data folder (default: $FFLM_DATA or ../shared/data).")
@click.option("--threads", type=click.IntRange(min=0), default=0, show_default=True, help="Cores to use (0: all).")
@click.option("--seconds", type=click.FloatRange(min=0.5), default=10.0, show_default=True,
              help="Training time measured per implementation and case.")
@click.option("--torch/--no-torch", "use_torch", default=True, show_default=True,
              help="Also time PyTorch's AdaptiveLogSoftmaxWithLoss with the same cutoffs (the 'bench' extra).")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def bench_softmax(config_name, vocabs, data_dir, threads, seconds, use_torch, as_json):
    """Training and exact scoring speed of the full and the adaptive softmax as the vocabulary grows."""
    from .bench import format_softmax, run_softmax

    data_dir = data_dir or os.environ.get("FFLM_DATA") or os.path.join("..", "shared", "data")
    raw = os.path.join(data_dir, "brown", "raw", "train.txt")
    if not os.path.isfile(raw):
        raise FflmError(f"{raw}: not found; pass --data or set FFLM_DATA")
    try:
        sizes = [int(v) for v in vocabs.split(",") if v]
    except ValueError:
        raise FflmError(f"--vocabs takes numbers separated by commas, not {vocabs!r}") from None
    result = run_softmax(data_dir, threads, seconds, use_torch, sizes, config_name)
    _echo_json(result) if as_json else click.echo(format_softmax(result))


@bench.command("recipe")
@click.argument("corpus", metavar="CORPUS", type=click.Choice(sorted(PRESETS)))
@click.option("--data", "data_dir", default=None, help="Shared data folder (default: $FFLM_DATA or ../shared/data).")
@click.option("--threads", type=click.IntRange(min=0), default=0, show_default=True, help="Cores to use (0: all).")
@click.option("--seeds", type=click.IntRange(min=1), default=1, show_default=True,
              help="Train the recipe with seeds 1..N, one after the other, and evaluate their mixture too.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@click.argument("extra", nargs=-1, type=click.UNPROCESSED)
def bench_recipe(corpus, data_dir, threads, seeds, as_json, extra):
    """Train the README's recipe for CORPUS and evaluate it on test beside KN (options after -- go to
    fflm train, e.g. `fflm bench recipe brown -- --hidden 512`)."""
    from .bench import format_recipe, recipe_paths, run_recipe

    data_dir = data_dir or os.environ.get("FFLM_DATA") or os.path.join("..", "shared", "data")
    for path in recipe_paths(data_dir, corpus):
        if not os.path.isfile(path):
            raise FflmError(f"{path}: not found; pass --data or set FFLM_DATA")
    result = run_recipe(data_dir, corpus, threads, extra, seeds=seeds)
    _echo_json(result) if as_json else click.echo(format_recipe(result))


@cli.group()
def data():
    """Corpora: the standard benchmarks (get, list), splitting a corpus, the embedded synthetic corpus."""


@data.command("synth")
@click.option("-o", "--output", default="data/synth", show_default=True, help="Folder for train/valid/test.txt.")
@click.option("--seed", type=int, default=2003, show_default=True)
@click.option("--tokens", type=int, default=None,
              help="Training tokens to write (valid and test get a tenth each), streamed in bounded memory "
                   "[default: the embedded corpus, 10,000 sentences].")
@click.option("--vocab", type=int, default=None, help="Distinct words (Zipf-like within each class) [default: 150].")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def data_synth(output, seed, tokens, vocab, as_json):
    """Write the synthetic corpus whose true entropy is known (the demo's and tests' data).

    \b
    Any size and vocabulary for benchmarks (2M tokens of 100k words in about 5 s):
      fflm data synth -o synth-100k --tokens 2000000 --vocab 100000
    """
    from .synth import write_corpus, write_large_corpus

    if tokens is None and vocab is None:
        manifest = write_corpus(output, seed)
    else:
        manifest = write_large_corpus(output, tokens if tokens is not None else 1_000_000, vocab, seed)
    if as_json:
        _echo_json(manifest)
    else:
        click.echo(
            f"wrote {output}: {manifest['vocabulary']} words; true entropy {manifest['entropy_nats_per_token']:.4f} "
            f"nats/token, best possible perplexity {manifest['perplexity_floor']:.3f}"
        )


REGISTRY_HELP = "A datasets.toml of your own, in fflm/datasets.toml's layout.  [default: fflm's]"


@data.command("get")
@click.argument("name")
@click.option("--dir", "folder", default=None, help="Where datasets go.  [default: $FFLM_DATA or ~/.cache/fflm/data]")
@click.option("--mirror", default=None, help="Fetch the same file names from this address instead.")
@click.option("--sha256", default=None, help="The checksum to require of a file the registry has none for.")
@click.option("--registry", "registry_path", default=None, help=REGISTRY_HELP)
@click.option("--force", is_flag=True, help="Download and prepare again even if a verified copy is there.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def data_get(name, folder, mirror, sha256, registry_path, force, as_json, quiet):
    """Download a standard benchmark, verify its sha256, and prepare train/valid/test files.

    \b
    Known datasets and their checksums: fflm/datasets.toml (`fflm data list`). Nothing is kept
    unless it verifies; a complete copy is left alone (idempotent). Where a dataset has several
    sources (ptb: Mikolov's archive, then copies of its files), the next is tried if one fails.
    Example:
      fflm data get ptb --dir ~/corpora
    """
    from .datasets import default_dir, get, registry

    folder = folder or default_dir()
    entries = registry(registry_path) if registry_path else None
    manifest = get(name, folder, mirror, sha256, progress=_progress(quiet), force=force, entries=entries)
    if as_json:
        _echo_json(manifest)
        return
    where = os.path.join(folder, name)
    if manifest["already_present"]:
        click.echo(f"{name}: already in {where} (verified when it was fetched; --force to fetch again)")
    else:
        for rel, f in manifest["files"].items():
            click.echo(f"{os.path.join(where, rel)}  {f['bytes']:,} bytes  sha256 {f['sha256'][:16]}")


@data.command("list")
@click.option("--dir", "folder", default=None, help="Where datasets go.  [default: $FFLM_DATA or ~/.cache/fflm/data]")
@click.option("--registry", "registry_path", default=None, help=REGISTRY_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
def data_list(folder, registry_path, as_json):
    """The datasets `fflm data get` knows, and which of them are present in --dir."""
    from .datasets import default_dir, registry, sources, status, verifiable

    folder = folder or default_dir()
    rows = []
    for name, entry in (registry(registry_path) if registry_path else registry()).items():
        m = status(folder, name)
        rows.append({"name": name, "description": entry.get("description"), "present": m is not None,
                     "path": os.path.join(folder, name) if m else None,
                     "sources": [f["url"] for s in sources(entry) for f in s.get("files", [])],
                     "checksum_recorded": any(verifiable(entry, s) for s in sources(entry))})
    if as_json:
        _echo_json(rows)
        return
    click.echo(f"datasets in {folder}:")
    for r in rows:
        mark = "present" if r["present"] else "-"
        note = "" if r["checksum_recorded"] else "  (no sha256 recorded: needs --sha256)"
        click.echo(f"  {r['name']:<14} {mark:<8} {r['description']}{note}")


@data.command("split")
@click.argument("corpus")
@click.option("-o", "--output", required=True, help="Folder for train.txt, valid.txt, test.txt and split.json.")
@click.option("--valid", type=float, default=0.1, show_default=True, help="Share of the sentences for validation.")
@click.option("--test", type=float, default=0.1, show_default=True, help="Share of the sentences for test.")
@click.option("--seed", type=int, default=1, show_default=True, help="Same seed, same split.")
@text_options
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def data_split(corpus, output, valid, test, seed, tokenizer, lowercase, encoding_errors, as_json):
    """Split CORPUS (a file or nltk:NAME) into train / valid / test by whole sentences.

    \b
    Each sentence goes to one part, chosen by a seeded shuffle; each part keeps corpus order.
    Example:
      fflm data split nltk:brown -o brown-split --valid 0.1 --test 0.1 --seed 1
    """
    from .datasets import write_split
    from .text import read_sentences

    text = _text_config(None, tokenizer, lowercase, encoding_errors)
    summary = write_split(read_sentences(corpus, text), output, valid, test, seed, source=source_name(corpus))
    if as_json:
        _echo_json(summary)
    else:
        for name, f in summary["files"].items():
            click.echo(f"{os.path.join(output, name)}: {f['sentences']} sentences, {f['words']} words")


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
