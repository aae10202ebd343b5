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




