"""Inside a model: `fflm neighbors`, `export-embeddings`, `plot`, `plot-embeddings`."""

import os

import click

from ..errors import FflmError
from .common import _check_output, _echo_json, _load_model, cli


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
    from ..embeddings import neighbors as nearest

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
    from ..embeddings import write_word2vec

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
    from ..plot import plot_curves

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

    from ..embeddings import pca_2d
    from ..plot import plot_embeddings

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


