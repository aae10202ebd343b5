"""`fflm bench ...`: the benchmarks behind BENCHMARKS.md (fflm/bench.py does the work)."""

import os

import click

from ..errors import FflmError
from ..presets import PRESETS
from .common import _echo_json, cli


@cli.group(invoke_without_command=True)
@click.option("--config", "config_name", type=click.Choice(["small", "base", "preset"]), default="base",
              show_default=True, help="small: n=5 m=64 h=256 batch 128; base: n=5 m=128 h=512 batch 256; preset: "
              "--preset brown's sizes (n=6, m=256, hidden 1024,256, tied, dropout; no PyTorch peer). Brown's vocabulary.")
@click.option("--data", "data_dir", default=None, help="Shared data folder (default: $FFLM_DATA or ../shared/data).")
@click.option("--threads", type=click.IntRange(min=0), default=0, show_default=True, help="Cores to use (0: all).")
@click.option("--seconds", type=click.FloatRange(min=1), default=20.0, show_default=True,
              help="Training time measured per implementation.")
@click.option("--loss", type=click.Choice(["softmax", "nce", "neg"]), default="softmax", show_default=True)
@click.option("--torch/--no-torch", "use_torch", default=True, show_default=True,
              help="Also time the same model written in PyTorch (when installed: the 'bench' extra).")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "auto"]), default="fp32", show_default=True,
              help="bf16 (or auto where it picks bf16): fflm in bf16 beside fflm in fp32, and PyTorch under "
                   "bfloat16 autocast beside PyTorch in float32, in the same rounds.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as one JSON object.")
@click.pass_context
def bench(ctx, config_name, data_dir, threads, seconds, loss, use_torch, precision, as_json):
    """Benchmarks (figures go to BENCHMARKS.md). Without a subcommand: training, scoring and
    generation speed of a config against this machine's GEMM rate and PyTorch."""
    if ctx.invoked_subcommand is not None:
        return
    from ..bench import format_speed, recipe_paths, run_speed

    data_dir = data_dir or os.environ.get("FFLM_DATA") or os.path.join("..", "shared", "data")
    for path in recipe_paths(data_dir, "brown")[:2]:
        if not os.path.isfile(path):
            raise FflmError(f"{path}: not found; pass --data or set FFLM_DATA")
    result = run_speed(data_dir, config_name, threads, seconds, use_torch, loss, precision)
    _echo_json(result) if as_json else click.echo(format_speed(result))


@bench.command("ngram")
@click.option("--data", "data_dir", default=None, help="Shared data folder (default: $FFLM_DATA or ../shared/data).")
@click.option("--orders", default="3,5", show_default=True, help="Comma-separated n-gram orders.")
@click.option("--nltk-tokens", type=click.IntRange(min=0), default=300, show_default=True,
              help="Test tokens NLTK's KneserNeyInterpolated scores (0: skip NLTK).")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def bench_ngram(data_dir, orders, nltk_tokens, as_json):
    """Build and score Kneser-Ney models on Brown, beside the kenlm module and NLTK."""
    from ..bench import format_ngram, run_ngram

    data_dir = data_dir or os.environ.get("FFLM_DATA") or os.path.join("..", "shared", "data")
    if not os.path.isdir(os.path.join(data_dir, "brown")):
        raise FflmError(f"{data_dir}: no brown/ folder here; pass --data or set FFLM_DATA")
    try:
        order_list = [int(o) for o in orders.split(",")]
    except ValueError:
        raise FflmError(f"--orders takes numbers separated by commas, not {orders!r}") from None
    result = run_ngram(data_dir, order_list, nltk_tokens)
    _echo_json(result) if as_json else click.echo(format_ngram(result))


@bench.command("ngram-build")
@click.argument("texts", nargs=-1, required=True)
@click.option("--order", type=click.IntRange(1, 10), default=5, show_default=True)
@click.option("--memory", "budgets", default="200M,2G", show_default=True, metavar="S,S",
              help="The budgets: fflm's --memory and lmplz's -S.")
@click.option("--lmplz", default=None, help="KenLM's lmplz (default: on the PATH; without it fflm alone).")
@click.option("--temp-dir", default=None, help="Both tools' temporary folder.  [default: out/bench/ngram-build]")
@click.option("--repeat", type=click.IntRange(min=1), default=1, show_default=True, help="Runs each; the fastest kept.")
@click.option("--no-in-memory", is_flag=True, help="Skip fflm's in-memory build (large texts).")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def bench_ngram_build(texts, order, budgets, lmplz, temp_dir, repeat, no_in_memory, as_json):
    """Build a Kneser-Ney model of each TEXT with fflm (in memory and --memory) and KenLM's lmplz
    (-S), each in its own process: wall time and peak memory (the kernel's rusage).

    \b
    Example (BENCHMARKS.md, "Kneser-Ney at any size"):
      fflm bench ngram-build brown-ptb.txt --lmplz kenlm/build/bin/lmplz --repeat 3
    """
    from ..benchbuild import format_build_bench, run_build_bench
    from ..fileio import check_readable

    for text in texts:
        check_readable(text)
    result = run_build_bench(texts, order, tuple(budgets.split(",")), lmplz, temp_dir, repeat,
                             in_memory=not no_in_memory)
    _echo_json(result) if as_json else click.echo(format_build_bench(result))


@bench.command("softmax")
@click.option("--config", "config_name", type=click.Choice(["small", "base", "preset"]), default="base",
              show_default=True, help="The model's sizes (as for bin/bench --config); preset: --preset brown's.")
@click.option("--vocabs", default="50000,100000,200000", show_default=True,
              help="Synthetic vocabulary sizes, beside Brown's raw text at --min-count 2 (24.5k words).")
@click.option("--data", "data_dir", default=None, help="Shared data folder (default: $FFLM_DATA or ../shared/data).")
@click.option("--threads", type=click.IntRange(min=0), default=0, show_default=True, help="Cores to use (0: all).")
@click.option("--seconds", type=click.FloatRange(min=0.5), default=10.0, show_default=True,
              help="Training time measured per implementation and case.")
@click.option("--torch/--no-torch", "use_torch", default=True, show_default=True,
              help="Also time PyTorch's AdaptiveLogSoftmaxWithLoss with the same cutoffs (the 'bench' extra).")
@click.option("--head-shares", default="", metavar="SHARES",
              help="Time the adaptive layer with its automatic head at each of these token shares "
                   "(0.85,0.75), in the same rounds [default: the automatic 85%].")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "auto"]), default="fp32", show_default=True,
              help="bf16 (or auto where it picks bf16): each layer also in bf16, beside fp32, in the same rounds.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def bench_softmax(config_name, vocabs, data_dir, threads, seconds, use_torch, head_shares, precision, as_json):
    """Training and exact scoring speed of the full and the adaptive softmax as the vocabulary grows."""
    from ..bench import format_softmax, run_softmax

    data_dir = data_dir or os.environ.get("FFLM_DATA") or os.path.join("..", "shared", "data")
    raw = os.path.join(data_dir, "brown", "raw", "train.txt")
    if not os.path.isfile(raw):
        raise FflmError(f"{raw}: not found; pass --data or set FFLM_DATA")
    try:
        sizes = [int(v) for v in vocabs.split(",") if v]
    except ValueError:
        raise FflmError(f"--vocabs takes numbers separated by commas, not {vocabs!r}") from None
    try:
        shares = tuple(float(v) for v in head_shares.split(",") if v) or (None,)
    except ValueError:
        raise FflmError(f"--head-shares takes shares separated by commas, not {head_shares!r}") from None
    if any(s is not None and not 0 < s < 1 for s in shares):
        raise FflmError(f"--head-shares: each share lies strictly between 0 and 1, not {head_shares}")
    from ..bf16 import resolve_precision

    result = run_softmax(data_dir, threads, seconds, use_torch, sizes, config_name, shares, resolve_precision(precision))
    _echo_json(result) if as_json else click.echo(format_softmax(result))


@bench.command("profile")
@click.option("--config", "config_name", type=click.Choice(["small", "base", "preset"]), default="base",
              show_default=True, help="The model's sizes (as for bin/bench --config).")
@click.option("--softmax", type=click.Choice(["full", "adaptive"]), default="full", show_default=True)
@click.option("--precision", type=click.Choice(["fp32", "bf16", "auto"]), default="fp32", show_default=True)
@click.option("--steps", type=click.IntRange(min=1), default=60, show_default=True, help="Training steps timed.")
@click.option("--data", "data_dir", default=None, help="Shared data folder (default: $FFLM_DATA or ../shared/data).")
@click.option("--threads", type=click.IntRange(min=0), default=0, show_default=True, help="Cores to use (0: all).")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as one JSON object.")
def bench_profile(config_name, softmax, precision, steps, data_dir, threads, as_json):
    """Where a training step's time goes: each product by its role (and, in bf16, its packs and
    kernel calls), each Numba kernel, the rest; Brown's vocabulary."""
    from ..bench import recipe_paths
    from ..benchprofile import format_profile, run_profile

    data_dir = data_dir or os.environ.get("FFLM_DATA") or os.path.join("..", "shared", "data")
    train = recipe_paths(data_dir, "brown")[0]
    if not os.path.isfile(train):
        raise FflmError(f"{train}: not found; pass --data or set FFLM_DATA")
    result = run_profile(data_dir, config_name, threads, steps, precision, softmax)
    _echo_json(result) if as_json else click.echo(format_profile(result))


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
    from ..bench import format_recipe, recipe_paths, run_recipe

    data_dir = data_dir or os.environ.get("FFLM_DATA") or os.path.join("..", "shared", "data")
    for path in recipe_paths(data_dir, corpus):
        if not os.path.isfile(path):
            raise FflmError(f"{path}: not found; pass --data or set FFLM_DATA")
    result = run_recipe(data_dir, corpus, threads, extra, seeds=seeds)
    _echo_json(result) if as_json else click.echo(format_recipe(result))




@bench.command("ray")
@click.argument("corpus", metavar="CORPUS", type=click.Choice(sorted(PRESETS)), default="brown")
@click.option("--config", "config_name", type=click.Choice(["small", "base", "preset"]), default="preset",
              show_default=True, help="The model: the corpus's preset, or the speed benchmark's small / base.")
@click.option("--data", "data_dir", default=None, help="Shared data folder (default: $FFLM_DATA or ../shared/data).")
@click.option("--epochs", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--max-steps", type=click.IntRange(min=0), default=0, show_default=True,
              help="Stop each run after this many steps (0: the epochs), for per-step figures alone.")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True,
              help="The one process's threads; each worker gets threads / workers.")
@click.option("--sync-every", default="1,8", show_default=True, metavar="K,K",
              help="The --sync-every values to run on Ray.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@click.argument("extra", nargs=-1, type=click.UNPROCESSED)
def bench_ray(corpus, config_name, data_dir, epochs, max_steps, workers, threads, sync_every, as_json, extra):
    """The same training in one process and on Ray workers, same model and global batch: tokens/s,
    validation perplexity, and per step compute, averaging and bytes (options after -- go to
    fflm train).

    \b
    Example (the figures of BENCHMARKS.md's "More than one machine"):
      fflm bench ray brown --sync-every 1,8,32 --json
    """
    from ..bench import recipe_paths
    from ..benchray import format_ray_bench, run_ray_bench

    try:
        ks = tuple(int(k) for k in sync_every.split(","))
    except ValueError:
        raise FflmError(f"--sync-every takes whole numbers separated by commas, not {sync_every!r}") from None
    data_dir = data_dir or os.environ.get("FFLM_DATA") or os.path.join("..", "shared", "data")
    for path in recipe_paths(data_dir, corpus):
        if not os.path.isfile(path):
            raise FflmError(f"{path}: not found; pass --data or set FFLM_DATA")
    result = run_ray_bench(data_dir, corpus, config_name, epochs, workers, threads, ks, max_steps, extra=extra)
    _echo_json(result) if as_json else click.echo(format_ray_bench(result))


@bench.command("scaling")
@click.argument("measured", metavar="RAY_JSON")
@click.option("--network", type=click.Choice(["allgather", "ring"]), default="allgather", show_default=True,
              help="How contributions travel: fflm's all-gather through the object store, or a ring all-reduce.")
@click.option("--nodes", default="1,2,4,8,16,32,64", show_default=True, metavar="N,N")
@click.option("--cores", default="2,16", show_default=True, metavar="C,C", help="Cores a node.")
@click.option("--gbps", default="10,100", show_default=True, metavar="G,G", help="Network speeds in Gb/s.")
@click.option("--plot", "plot_path", default=None, help="Write the predicted speed-up against nodes here (PNG, SVG, PDF).")
@click.option("--json", "as_json", is_flag=True, help="Print the predictions as JSON.")
def bench_scaling(measured, network, nodes, cores, gbps, plot_path, as_json):
    """Predict tokens/s on N nodes from the figures of `fflm bench ray --json` (fflm/scaling.py
    says how: the measured step, averaging, bytes and overhead, and the network).

    \b
    Example:
      fflm bench ray brown --json > ray.json && fflm bench scaling ray.json --plot scaling.png
    """
    import json

    from ..scaling import format_scaling, half_efficiency, plot_scaling, predict, stops_paying

    try:
        with open(measured, encoding="utf-8") as f:
            result = json.load(f)
        parse = lambda text, kind: tuple(kind(x) for x in text.split(","))  # noqa: E731
        rows = predict(result, parse(nodes, int), parse(cores, int), parse(gbps, float), network)
    except OSError as e:
        raise FflmError(f"{measured}: {e.strerror}") from None
    except (ValueError, KeyError, TypeError) as e:
        raise FflmError(f"{measured}: not the JSON of `fflm bench ray` ({type(e).__name__}: {e})") from None
    if plot_path:
        plot_scaling(rows, plot_path, f"fflm train --ray, predicted ({network})")
    if as_json:
        key = lambda k: f"K={k[0]} cores={k[1]} gbps={k[2]:g}"  # noqa: E731
        _echo_json({"network": network, "rows": rows,
                    "most_nodes_worth_having": {key(k): v for k, v in stops_paying(rows).items()},
                    "half_efficiency_at": {key(k): v for k, v in half_efficiency(rows).items()}})
    else:
        click.echo(format_scaling(rows))


@bench.command("corpus")
@click.option("--tokens", "sizes", default="1000000,10000000,100000000", show_default=True,
              help="Training tokens of each synthetic corpus (valid and test get a tenth each).")
@click.option("--vocab", type=click.IntRange(min=10), default=100_000, show_default=True)
@click.option("--steps", type=click.IntRange(min=1), default=2000, show_default=True,
              help="Training steps timed on each corpus (--max-steps).")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True, help="fflm prepare --workers.")
@click.option("--work", default="out/bench/corpus", show_default=True, help="Where the corpora and models go.")
@click.option("--data", "data_dir", default=None,
              help="Shared data folder: Brown's raw text and PTB (all their parts) prepared together too.")
@click.option("--threads", type=click.IntRange(min=0), default=0, show_default=True, help="Cores to use (0: all).")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def bench_corpus(sizes, vocab, steps, workers, work, data_dir, threads, as_json):
    """Large corpora: prepare's speed and memory, training from the map against from text, the
    time to start, and evaluation memory as the test text grows."""
    from ..benchcorpus import format_corpus, run_corpus

    try:
        size_list = [int(v) for v in sizes.split(",") if v]
    except ValueError:
        raise FflmError(f"--tokens takes numbers separated by commas, not {sizes!r}") from None
    data_dir = data_dir or os.environ.get("FFLM_DATA") or os.path.join("..", "shared", "data")
    real = [os.path.join(data_dir, "brown", "raw", f"{p}.txt") for p in ("train", "valid", "test")]
    real += [os.path.join(data_dir, "ptb", f"ptb.{p}.txt") for p in ("train", "valid", "test")]
    real = real if all(os.path.isfile(f) for f in real) else None
    result = run_corpus(size_list, vocab, work, steps, workers, real, threads)
    _echo_json(result) if as_json else click.echo(format_corpus(result))


@bench.command("budget")
@click.argument("train")
@click.argument("test")
@click.option("--budget", "budget", required=True, metavar="DURATION", help="fflm train's --budget (45m, 1h).")
@click.option("--valid", default=None, help="Validation text (default: the run holds sentences out of TRAIN).")
@click.option("--threads", type=click.IntRange(min=0), default=0, show_default=True, help="Cores to use (0: all).")
@click.option("--work-dir", default="out/bench", show_default=True, help="Where the model and reports go.")
@click.option("--name", default=None, help="The files' stem (default: TRAIN's folder name).")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@click.argument("extra", nargs=-1, type=click.UNPROCESSED)
def bench_budget(train, test, budget, valid, threads, work_dir, name, as_json, extra):
    """The budgeted recipe on TRAIN as a user runs it (fresh process, timed), then TEST beside KN5
    built on all of TRAIN and their interpolation (issue 26's table; options after -- go to
    fflm train). Example:
      fflm bench budget movie-reviews/train.txt movie-reviews/test.txt --budget 1h --threads 2"""
    from ..benchbudget import format_budget, run_budget

    result = run_budget(train, test, budget, valid, threads, extra, work_dir, name)
    _echo_json(result) if as_json else click.echo(format_budget(result))
