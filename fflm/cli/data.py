"""`fflm data ...`: the standard corpora, splitting a corpus, the synthetic corpora."""

import os

import click

from ..text import source_name
from .common import _echo_json, _progress, _text_config, cli, text_options


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
    from ..synth import write_corpus, write_large_corpus

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
    from ..datasets import default_dir, get, registry

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
    from ..datasets import default_dir, registry, sources, status, verifiable

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
    from ..datasets import write_split
    from ..text import read_sentences

    text = _text_config(None, tokenizer, lowercase, encoding_errors)
    summary = write_split(read_sentences(corpus, text), output, valid, test, seed, source=source_name(corpus))
    if as_json:
        _echo_json(summary)
    else:
        for name, f in summary["files"].items():
            click.echo(f"{os.path.join(output, name)}: {f['sentences']} sentences, {f['words']} words")





@cli.command("prepare")
@click.argument("corpus", nargs=-1, required=True)
@click.option("-o", "--output", required=True, help="The folder to write (it appears whole or not at all).")
@click.option("--valid", "valid_files", multiple=True, metavar="FILE",
              help="Held-out text prepared over the training vocabulary, as OUTPUT/valid (repeatable).")
@click.option("--test", "test_files", multiple=True, metavar="FILE", help="The same, as OUTPUT/test.")
@click.option("--valid-share", type=float, default=0.0, show_default=True,
              help="Deal this share of CORPUS's sentences to OUTPUT/valid instead (a seeded draw per sentence).")
@click.option("--test-share", type=float, default=0.0, show_default=True, help="The same for OUTPUT/test.")
@click.option("--seed", type=int, default=1, show_default=True, help="Same seed, same split.")
@click.option("--min-count", type=click.IntRange(min=1), default=1, show_default=True,
              help="The vocabulary cut training uses by default (the ids keep every word).")
@click.option("--max-vocab", type=click.IntRange(min=4), default=None, help="The same for the size cap.")
@click.option("--segment", type=click.IntRange(min=0), default=0, show_default=True,
              help="Cut every line into sentences of at most this many tokens (0: a line is a sentence; "
                   "for one-line corpora such as text8).")
@text_options
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True,
              help="Processes tokenising in parallel (0: one per core); the result is the same for any number.")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
              help="Tokenise the chunks as Ray tasks: --ray alone on a local Ray, --ray ADDRESS on a cluster "
                   "(pip install 'fflm[ray]'); the same folder, byte for byte.")
@click.option("--force", is_flag=True, help="Replace OUTPUT if it is a prepared corpus already.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def prepare_(corpus, output, valid_files, test_files, valid_share, test_share, seed, min_count, max_vocab, segment,
             tokenizer, lowercase, encoding_errors, workers, ray_address, force, as_json, quiet):
    """Tokenise CORPUS (files, plain or .gz/.bz2/.xz, or nltk:NAME; several make one corpus)
    once into OUTPUT: memory-mapped token ids, the vocabulary and a manifest.

    \b
    A prepared folder goes wherever a corpus does (train, --valid, eval, score, ngram) and costs
    disk, not memory: training gathers its batches straight from the ids. With --valid/--test
    files or shares, OUTPUT holds train/, valid/ and test/ over train's vocabulary.
    Examples:
      fflm prepare wiki.train.txt.xz --valid wiki.valid.txt --test wiki.test.txt -o wiki
      fflm train wiki/train --valid wiki/valid -o wiki.npz --preset brown
      fflm prepare big.txt -o big --valid-share 0.01 --test-share 0.01
    """
    import time

    from ..prepared import prepare

    text = _text_config(None, tokenizer, lowercase, encoding_errors)
    start = time.perf_counter()
    meta = prepare(list(corpus), output, config=text, workers=workers or (os.cpu_count() or 1), force=force,
                   progress=_progress(quiet), valid=list(valid_files), test=list(test_files),
                   valid_share=valid_share, test_share=test_share, seed=seed, min_count=min_count,
                   max_size=max_vocab, segment=segment, ray=ray_address)
    seconds = time.perf_counter() - start
    held_out = bool(valid_files or test_files or valid_share or test_share)
    if as_json:
        _echo_json({**meta, "output": output, "seconds": round(seconds, 3),
                    "tokens_per_s": round(meta["tokens"] / seconds) if seconds else None})
        return
    where = os.path.join(output, "train") if held_out else output
    click.echo(f"wrote {where}: {meta['tokens']:,} tokens ({meta['words']:,} words + </s>) in {meta['sentences']:,} "
               f"sentences, {meta['vocabulary']:,} distinct words, {meta['dtype']} ids; "
               f"{seconds:.1f} s, {meta['tokens'] / max(seconds, 1e-9):,.0f} tokens/s")
    for part in ("valid", "test"):
        path = os.path.join(output, part)
        if held_out and os.path.isdir(path):
            from ..prepared import PreparedCorpus

            c = PreparedCorpus(path)
            click.echo(f"wrote {path}: {c.tokens:,} tokens in {c.num_sentences:,} sentences")
