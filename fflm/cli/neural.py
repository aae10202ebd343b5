"""`fflm eval`, `generate`, `info`, `score`: the neural model's commands (`fflm train`: train.py)."""

import os
import warnings

import click

from ..errors import FflmError, FflmWarning
from ..text import is_nltk
from .common import (
    _check_output,
    _echo_json,
    _epoch_line,
    _load_model,
    cli,
    precision_option,
)


@cli.command("eval")
@click.argument("model_path", metavar="MODEL")
@click.argument("text")
@click.option("--baseline", default="kn", show_default=True, metavar="kn|add-k|none|MODEL",
              help="The n-gram model beside the neural one: kn or add-k built on the model's training corpus, "
                   "or an n-gram MODEL file (ARPA, or binary from ngram build-binary) taken as it is.")
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
@precision_option
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def eval_(model_path, text, baseline, baseline_order, baseline_train, add_k, tune_on, mix_paths, as_json, per_token,
          threads, precision, quiet):
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
    import contextlib

    import numpy as np

    from .. import evaluate as ev
    from ..ngram import NGramLM
    from ..prepared import HeldOut, is_prepared_any, read_sentences
    from ..train import set_threads
    from ..windows import Windows

    if per_token:
        _check_output(per_token)
    set_threads(threads)
    model, meta, config = _load_model(model_path, precision)
    others = []  # (row name, path, model): the --mix models, checked to score the same tokens
    for i, path in enumerate(mix_paths, start=2):
        other, _, other_config = _load_model(path, precision)
        if other.vocab.words != model.vocab.words:
            raise FflmError(f"{path}: its vocabulary differs from {model_path}'s; only models over the same "
                            "vocabulary can be mixed (their perplexities are not comparable)")
        if other_config != config:
            raise FflmError(f"{path}: its text settings ({other_config.to_dict()}) differ from {model_path}'s "
                            f"({config.to_dict()}); only models reading text the same way can be mixed")
        others.append((f"fflm{i}", path, other))
    n = model.config.order
    from ..ngram import load_model

    external = None  # an n-gram model file given as --baseline
    if baseline not in ("kn", "add-k", "none"):
        if not os.path.isfile(baseline):
            raise FflmError(f"--baseline takes kn, add-k, none or an n-gram model file; {baseline} is none of them")
        if baseline_order or baseline_train:
            raise FflmError("--baseline-order and --baseline-train build a baseline; a --baseline file is taken as it is")
        external = load_model(baseline)
        baseline_order = external.order
        if external.vocab.words != model.vocab.words:
            warnings.warn(f"{baseline}'s vocabulary ({len(external.vocab)} words) differs from {model_path}'s "
                          f"({len(model.vocab)}): the baseline scores its own OOVs as <unk>, so the perplexities "
                          "are not strictly comparable (\"excluding OOVs\" leaves out the neural model's)",
                          FflmWarning)
    N = baseline_order or n
    width = max([n, N] + [o.config.order for _, _, o in others])
    held = HeldOut(text, config)
    windows = held.windows(model.vocab, width)  # the baseline's contexts; every model scores its targets
    ev.check_coverage_counts(*ev.coverage(windows), text)
    own = {"fflm": (model, held.windows(model.vocab, model.config.span, model.config.cross_sentence))}  # its own contexts
    for name, _, other in others:
        own[name] = (other, held.windows(model.vocab, other.config.span, other.config.cross_sentence))
    neural = list(own)
    lm = None
    if external is not None:
        lm, source, baseline_sentences = external, None, None
    elif baseline != "none":
        source = baseline_train or meta.get("training", {}).get("corpus")
        if not source or not (is_nltk(source) or os.path.exists(source)):
            raise FflmError(f"the training corpus {source!r} recorded in the model is not here; "
                            "pass --baseline-train FILE or --baseline none")
        baseline_sentences = None
        if not is_nltk(source) and is_prepared_any(source):
            train_windows = Windows(HeldOut(source, config).windows(model.vocab, N).stream(), N)
        else:
            baseline_sentences = read_sentences(source, config)
            train_windows = Windows.from_sentences(baseline_sentences, model.vocab, N)
        lm = NGramLM.estimate(train_windows, model.vocab, N, smoothing=baseline, k=add_k)
    parts = neural + ([lm.name] if lm else [])
    lam = weights = None
    if tune_on:
        if len(parts) < 2:
            raise FflmError("--tune-on needs something to interpolate with: a baseline (not --baseline none) or --mix")
        tune_text = HeldOut(tune_on, config)
        if lm is not None and external is None and baseline_sentences is None:
            baseline_sentences = _training_sentences(source, config)
        _warn_if_seen(tune_on, tune_text.sentences(), meta, source if lm is not None else None,
                      baseline_sentences if lm is not None else None, config)
        tuned = {name: ev.score_neural(m, tune_text.windows(model.vocab, m.config.span, m.config.cross_sentence))
                 for name, (m, _) in own.items()}
        if lm is not None:
            tuned[lm.name] = ev.score_ngram(lm, tune_text.windows(lm.vocab, width))
            lam = ev.tune_lambda(tuned["fflm"], tuned[lm.name])
        if others:
            weights = dict(zip(parts, ev.tune_weights([tuned[k] for k in parts]).tolist()))
    if external is not None:  # the same tokens, numbered in the baseline's own vocabulary
        lm_windows = held.windows(lm.vocab, width)
    # the test text a chunk at a time: every row's sums, and the per-token lines, in bounded memory
    totals = ev.Totals()
    with contextlib.ExitStack() as stack:
        out = None
        if per_token:
            from ..fileio import atomic_write

            out = stack.enter_context(atomic_write(per_token))
        for start, stop in ev.chunk_ranges(len(windows)):
            index = np.arange(start, stop)
            scores = {name: (m.config.order, ev.score_neural(m, w, index=index)) for name, (m, w) in own.items()}
            if lm is not None and external is None:
                scores[lm.name] = (N, ev.score_ngram(lm, windows, index))
            elif lm is not None:  # its own ids for its lookups, the model's for the report (the same tokens)
                theirs = ev.score_ngram(lm, lm_windows, index)
                scores[lm.name] = (N, ev.Scores(theirs.log10, windows.pairs(index)[1], theirs.sentences,
                                                theirs.ngram_length))
            if others:
                equal = [1.0 / len(neural)] * len(neural)
                scores["ensemble"] = (max(scores[k][0] for k in neural), ev.mix([scores[k][1] for k in neural], equal))
            if lam is not None:
                scores["interpolated"] = (max(n, N), ev.interpolate(scores["fflm"][1], scores[lm.name][1], lam))
            if weights is not None:
                scores["mixture"] = (max(scores[k][0] for k in parts),
                                     ev.mix([scores[k][1] for k in parts], list(weights.values())))
            totals.add(scores)
            if out is not None:
                names = list(scores)
                if start == 0:
                    out.write("word\t" + "\t".join(f"{name}_log10" for name in names) + "\toov\n")
                columns = [scores[name][1].log10.tolist() for name in names]
                oov = scores["fflm"][1].oov.tolist()
                for i, w in enumerate(held.words(start, stop)):
                    out.write(w + "\t" + "\t".join(f"{c[i]:.6f}" for c in columns) + f"\t{int(oov[i])}\n")
    rep = totals.report()
    rows = {m["name"]: m for m in rep["models"]}
    for name, path, _ in others:
        rows[name]["model"] = path
    if lam is not None:
        rows["interpolated"]["lambda"] = lam
    if weights is not None:
        rows["mixture"]["weights"] = weights
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
@precision_option
@click.option("--json", "as_json", is_flag=True, help="Print the samples as a JSON list.")
def generate(model_path, prompt, num_words, num_samples, temperature, top_k, seed, no_unk, precision, as_json):
    """Sample sentences from a neural MODEL, word by word, until </s>.

    \b
    Example:
      fflm generate brown.npz --prompt "The jury" --num-samples 3 --temperature 0.8 --top-k 50 --seed 1
    """
    from ..generate import sample

    model, _, config = _load_model(model_path, precision)
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
    from ..bf16 import describe_precision, resolve_precision

    summary["precision_auto"] = resolve_precision("auto")  # what --precision auto picks on this CPU
    if as_json:
        _echo_json(summary)
        return
    c = model.config
    click.echo(f"{model_path}: fflm model format {meta['version']}, {meta.get('dtype')}")
    click.echo(f"architecture: n={c.order}, embedding {c.embed_dim}, hidden {list(c.hidden) or 'none'}, "
               f"{c.activation}{', direct connections' if c.direct else ''}{', tied embeddings' if c.tied else ''}"
               f"{', cross-sentence contexts' if c.cross_sentence else ''}"
               f"{_fofe_words(c)}{_deep_words(c)}; {summary['parameters']:,} parameters")
    click.echo(_output_layer_line(c, V))
    click.echo(f"precision: weights float32; --precision auto here: {describe_precision(summary['precision_auto'])}")
    click.echo(f"vocabulary: {V} words (min count {model.vocab.min_count}, max {model.vocab.max_size})")
    click.echo(f"text: {meta.get('text')}")
    tr = meta.get("training", {})
    if tr:
        click.echo(f"trained on: {tr.get('corpus')} (sha256 {str(tr.get('sha256'))[:16]}…)")
        if tr.get("valid"):
            click.echo(f"validated on: {tr['valid']}")
        click.echo(f"settings: {tr.get('config')}")
        if tr.get("budget"):
            from ..budget import describe, describe_choice

            b = tr["budget"]
            for line in describe_choice(b):
                click.echo(line)
            click.echo(describe(b))
            if b.get("held_out"):
                h = b["held_out"]
                click.echo(f"validation: {h['sentences']:,} of {h['of_sentences']:,} sentences ({h['tokens']:,} "
                           "tokens) held out of the corpus")
            if b.get("refits"):
                click.echo(f"re-fitted {len(b['refits'])} time(s) on the way: {b.get('steps_taken', 0):,} steps "
                           f"taken (fflm train --like reruns them)")
        if tr.get("like"):
            click.echo(f"a rerun of {tr['like']}")
        for row in tr.get("history", []):
            click.echo("  " + _epoch_line(row))


@cli.command()
@click.argument("model_path", metavar="MODEL")
@click.argument("text")
@click.option("--per-token", is_flag=True, help="Every word's id, n-gram length and log10 p before each Total.")
@click.option("--summary-only", is_flag=True, help="Only the closing summary (KenLM's `query -v summary`).")
@click.option("--threads", type=click.IntRange(min=0), default=0, show_default=True, help="Cores to use (0: all).")
@precision_option
def score(model_path, text, per_token, summary_only, threads, precision):
    """Score TEXT with MODEL (an fflm .npz, an ARPA file or a binary n-gram model) in the layout of
    KenLM's `query`.

    \b
    Per sentence `Total: <log10 p> OOV: <count>`; with --per-token each token as
    `word=<id> <n-gram length> <log10 p>` and a tab first; then KenLM's summary lines
    (Perplexity including OOVs, Perplexity excluding OOVs, OOVs, Tokens). Scripts that
    parse KenLM's output read this.
    Example:
      fflm score brown.npz ../shared/data/brown/test.txt --per-token | head -3
    """
    import numpy as np

    from .. import evaluate as ev
    from ..fileio import check_readable
    from ..prepared import HeldOut
    from ..text import TextConfig
    from ..vocab import Vocabulary

    check_readable(model_path)
    with open(model_path, "rb") as f:
        neural = f.read(4) == b"PK\x03\x04"
    if neural:
        from ..train import set_threads

        set_threads(threads)
        model, _, config = _load_model(model_path, precision)
        vocab, order = model.vocab, model.config.order
        held = HeldOut(text, config)
        windows = held.windows(vocab, model.config.span, model.config.cross_sentence)

        def scored(index):
            return ev.score_neural(model, windows, index=index)
    else:
        from ..ngram import load_model

        lm = load_model(model_path)
        config = TextConfig.from_dict(lm.meta.get("text", {})) if lm.meta else TextConfig()
        vocab, order = lm.vocab, lm.order
        held = HeldOut(text, config)
        windows = held.windows(vocab, order)

        def scored(index):
            return ev.score_ngram(lm, windows, index)
    ev.check_coverage_counts(*ev.coverage(windows), text)
    totals = ev.Totals()
    tail, tail_words = None, []  # the scored tokens of a sentence the last chunk cut
    for start, stop in ev.chunk_ranges(len(windows)):  # a chunk at a time (the same batches): bounded memory
        scores, words = scored(np.arange(start, stop)), held.words(start, stop)
        if tail is not None:
            scores, words = tail.then(scores), tail_words + words
        ends = np.flatnonzero(scores.targets == Vocabulary.EOS_ID)
        cut = int(ends[-1]) + 1 if len(ends) else 0  # lines for whole sentences only
        tail, tail_words = scores.part(cut, len(words)), words[cut:]
        scores = scores.part(0, cut)
        totals.add({"model": (order, scores)})
        if not summary_only:
            for line in ev.query_lines(_split_sentences(words[:cut]), scores, order, per_token):
                click.echo(line)
    click.echo(totals.query_summary("model"))


def _split_sentences(tokens):
    """Tokens, each sentence ended by </s> -> the sentences, without it."""
    out, current = [], []
    for t in tokens:
        if t == "</s>":
            out.append(current)
            current = []
        else:
            current.append(t)
    return out


def _fofe_words(c):
    if not c.fofe:
        return ""
    return f", FOFE bags alpha={','.join(f'{a:g}' for a in c.fofe)} over {c.fofe_length} words"


def _deep_words(c):
    return (", layer norm" if c.layer_norm else "") + (", residual" if c.residual else "")


def _output_layer_line(config, V, chosen=False):
    """What the output layer is (and why, when --softmax auto chose it), as train and info print it."""
    from ..output import AUTO_ADAPTIVE, tail_dims

    why = ""
    if chosen:
        why = f" (--softmax auto: {V:,} words is {'at least' if V >= AUTO_ADAPTIVE else 'under'} {AUTO_ADAPTIVE:,})"
    if config.softmax != "adaptive":
        return "output layer: full softmax" + why
    bounds = list(config.cutoffs) + [V]
    tails = ", ".join(f"{bounds[i + 1] - bounds[i]} words at width {d}" for i, d in enumerate(tail_dims(config)))
    return (f"output layer: adaptive softmax, head of {bounds[0]} words + {len(config.cutoffs)} cluster(s)"
            + (f"; tails: {tails}" if tails else "") + why)


def _training_sentences(source, config, most=1_000_000):
    """A training corpus's sentences for the overlap check: a prepared folder's, at most `most`
    of them evenly spaced (a sample, so a corpus of any size is checked in bounded memory)."""
    from ..prepared import PreparedCorpus, is_prepared_any, read_sentences

    if not is_nltk(source) and is_prepared_any(source):
        return PreparedCorpus(source).sample_sentences(most, config)
    return read_sentences(source, config)


def _warn_if_seen(tune_on, tune_sentences, meta, baseline_source, baseline_sentences, config):
    """Warn when the tuning text is largely part of the model's or the baseline's training text."""
    from ..evaluate import tuning_overlap

    corpora = {}
    if baseline_source is not None:
        corpora[baseline_source] = baseline_sentences
    model_source = meta.get("training", {}).get("corpus")
    if model_source and model_source not in corpora and (is_nltk(model_source) or os.path.exists(model_source)):
        sentences = _training_sentences(model_source, config)
        if (meta["training"].get("budget") or {}).get("held_out"):  # it trained on all but the sentences held out
            from ..budget import split_held_out

            sentences = split_held_out(sentences)[0]
        corpora[model_source] = sentences
    for source, sentences in corpora.items():
        o = tuning_overlap(tune_sentences, sentences)
        if o["suspicious"]:
            warnings.warn(f"--tune-on {tune_on}: {100 * o['seen_share']:.1f}% of its tokens ({o['seen_sentences']:,} of "
                          f"{o['sentences']:,} sentences) are in the training text {source} (repeats within it: "
                          f"{100 * o['natural_share']:.1f}%); weights tuned on it favour the model that memorised "
                          "them: tune on held-out text", FflmWarning)


