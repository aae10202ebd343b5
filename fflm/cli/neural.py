"""`fflm train`, `eval`, `generate`, `info`, `score`: the neural model's commands."""

import json
import os
import sys
import time
import warnings

import click

from ..errors import FflmError, FflmWarning
from ..presets import PRESETS, preset_flags
from ..text import is_nltk, source_name
from .common import (
    EPILOG_DATA,
    _available_memory,
    _check_output,
    _checkpoint_path,
    _echo_json,
    _epoch_line,
    _json_safe,
    _load_model,
    _parse_cutoffs,
    _parse_fofe,
    _parse_hidden,
    _process_started,
    _progress,
    _sha256,
    _text_config,
    cli,
    precision_option,
    text_options,
)


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
@click.option("--head-share", type=click.FloatRange(0.05, 0.95, min_open=False, max_open=True), default=None,
              metavar="SHARE", help="Adaptive, automatic cutoffs: the head holds the most frequent words that make "
                                    "up this share of the training tokens [default: 0.85].")
@click.option("--tail-div", type=click.IntRange(min=1), default=4, show_default=True,
              help="Adaptive: tail cluster i projects the output layer's input to width / DIV**i units.")
@click.option("--cross-sentence", is_flag=True,
              help="Contexts run on from the previous sentence instead of <s> padding (same scored tokens).")
@click.option("--fofe", default=None, metavar="ALPHA[,ALPHA]",
              help="History beyond the window: one weighted bag of the previous words' embeddings per "
                   "forgetting factor, the k-th word back weighted ALPHA**k (FOFE, Zhang et al. 2015), fed "
                   "to the first layer beside the window; over the sentence, or across with --cross-sentence.")
@click.option("--layer-norm", is_flag=True,
              help="Layer normalisation of what every layer but the first reads, the output layer included.")
@click.option("--residual", is_flag=True,
              help="A hidden layer as wide as the one before adds its input to its output (deep networks train).")
@click.option("--fofe-length", type=click.IntRange(min=0), default=0, show_default=True,
              help="--fofe: the words a bag reads back (0: until ALPHA**L < 0.001).")
@click.option("--epochs", type=int, default=12, show_default=True, help="At most this many passes over the corpus.")
@click.option("--max-steps", type=click.IntRange(min=0), default=0, show_default=True,
              help="Stop after this many mini-batch steps in all (0: no limit), the last epoch cut short.")
@click.option("--shuffle", type=click.Choice(["auto", "full", "blocks"]), default="auto", show_default=True,
              help="Each epoch's order: one full permutation (8 bytes a training token), or blocks of "
                   "64k positions shuffled in pools of 64 (bounded memory); auto: full up to 8M tokens.")
@click.option("--shuffle-block", type=click.IntRange(min=1), default=65536, show_default=True,
              help="--shuffle blocks: consecutive positions a block.")
@click.option("--shuffle-pool", type=click.IntRange(min=1), default=64, show_default=True,
              help="--shuffle blocks: blocks from all over the corpus pooled and shuffled together.")
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option("--lr", type=float, default=0.5, show_default=True, help="SGD learning rate (halved when validation stalls).")
@click.option("--warmup-steps", type=int, default=0, show_default=True,
              help="Raise the learning rate linearly from 0 over this many first steps.")
@click.option("--lr-decay", type=float, default=1.0, show_default=True,
              help="Multiply the learning rate by this after every epoch (besides the halving).")
@click.option("--schedule", type=click.Choice(["halving", "linear", "cosine"]), default="halving", show_default=True,
              help="The learning rate: halved once validation stalls (Mikolov's), or falling linearly / as a "
                   "cosine from --lr to 0 over all the run's steps (after --warmup-steps).")
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
@click.option("--budget", default=None, metavar="DURATION",
              help="Fit the run to this much time (45m, 1h30m, 600s): this machine's speed for the model is measured, "
                   "and the steps that fit are taken with the learning rate falling linearly to 0 at the last "
                   "(replaces --epochs and --max-steps; recorded in the model).")
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
@click.option("--like", "like", default=None, metavar="MODEL",
              help="Rerun MODEL's recorded training (its corpus, vocabulary, architecture, settings and, for a "
                   "--budget run, its steps and re-fits, without a clock): the same model, on any machine.")
@click.option("--resume", default=None,
              help="Continue from this checkpoint with its settings (CORPUS and the other options are taken from it).")
@precision_option
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
              help="Train data-parallel on Ray workers: --ray alone starts a local Ray for the run; "
                   "--ray ADDRESS (host:port, or auto) joins a running cluster (pip install 'fflm[ray]').")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True,
              help="With --ray: replicas of the model, each on its share of every batch, --threads cores each.")
@click.option("--sync-every", type=click.IntRange(min=1), default=1, show_default=True,
              help="With --ray: 1 averages the gradients every step (the one-process result); K > 1 lets "
                   "each worker take K steps alone, then averages the models (local SGD, 1/K the traffic).")
@click.option("--json-log", default=None, help="Append one JSON object per epoch to this file.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or per-epoch lines.")
@click.pass_context
def train(ctx, corpus, output, valid, order, embed_dim, hidden, activation, direct, tied, softmax, cutoffs, head_share, tail_div,
          cross_sentence, fofe, layer_norm, residual, fofe_length, epochs, max_steps, shuffle, shuffle_block, shuffle_pool,
          batch_size, lr, warmup_steps, lr_decay, schedule, max_halvings, weight_decay, optimizer, dropout, embed_dropout, loss,
          noise_samples, noise_power, clip, preset, budget, max_rollbacks, min_count, max_vocab, tokenizer, lowercase,
          encoding_errors, seed, threads, checkpoint, checkpoint_every, like, resume, precision, ray_address, workers,
          sync_every, json_log, quiet):
    """Train a feedforward neural LM on CORPUS (one sentence per line) with mini-batch SGD.

    \b
    The model file is rewritten (atomically) after every epoch with the best weights so far.
    Ctrl-C or SIGTERM saves a checkpoint; `fflm train --resume CKPT` continues bit-identically.
    With --ray, the same run on several workers (README: More than one machine).
    Example (Brown, 31 minutes on 2 cores, test perplexity 98.4 against KN5's 146.7):
      fflm train ../shared/data/brown/train.txt --valid ../shared/data/brown/valid.txt -o brown.npz --preset brown
    """
    import signal

    from .. import train as training
    from ..model import FFNNLM, ModelConfig, memory_estimate
    from ..prepared import read_sentences
    from ..text import TextConfig

    say = (lambda msg: None) if quiet else (lambda msg: click.echo(msg, err=True))
    command_started = time.time()  # --budget counts from here (and keeps a margin for the interpreter's start)
    like_model = None
    if like and resume:
        raise FflmError("--like starts a run, --resume continues one: give one of them")
    if like:
        given = [p.opts[-1] if p.opts else p.name for p in ctx.command.params
                 if p.name not in ("corpus", "like", "output", "threads", "quiet", "checkpoint", "checkpoint_every",
                                   "json_log")
                 and ctx.get_parameter_source(p.name) == click.core.ParameterSource.COMMANDLINE]
        if given:
            raise FflmError(f"--like reruns {like}'s recorded settings; drop {', '.join(given)}")
        if output is None:
            raise click.UsageError("missing option '-o' / '--output'")
        like_model, like_meta = FFNNLM.load(like)
        tr = like_meta.get("training") if isinstance(like_meta, dict) else None
        if not isinstance(tr, dict) or not tr.get("corpus") or not isinstance(tr.get("config"), dict):
            raise FflmError(f"{like}: this model does not record how it was trained")
        if corpus is None:
            corpus = tr["corpus"]
        if _sha256(corpus) != tr.get("sha256"):
            raise FflmError(f"{corpus} is not the text {like} was trained on (sha256 differs); --like reruns "
                            "that run on that text")
        valid = tr.get("valid")
        if valid is not None and _sha256(valid) != tr.get("valid_sha256", _sha256(valid)):
            raise FflmError(f"{valid} has changed since {like} was trained")
        text = TextConfig.from_dict(like_meta.get("text", {}))
        checkpoint = checkpoint or _checkpoint_path(output)
    elif resume:
        given = [p.opts[-1] if p.opts else p.name for p in ctx.command.params
                 if p.name not in ("corpus", "resume", "threads", "quiet", "checkpoint_every", "json_log",
                                   "ray_address", "workers", "sync_every")
                 and ctx.get_parameter_source(p.name) == click.core.ParameterSource.COMMANDLINE]
        if given:
            raise FflmError(f"--resume continues with the checkpoint's own settings; drop {', '.join(given)}")
        run = training.Trainer.read_meta(resume).get("run")
        if not isinstance(run, dict) or "corpus" not in run:
            raise FflmError(f"{resume}: this checkpoint does not say which corpus it was training on")
        if corpus is not None and source_name(corpus) != run["corpus"]:
            raise FflmError(f"{resume}: was made on {run['corpus']}, not {corpus}")
        corpus, valid, output, checkpoint = run["corpus"], run.get("valid"), run["output"], resume
        from ..fileio import check_readable

        from ..prepared import is_prepared_any

        for path, digest in ((corpus, run.get("sha256")), (valid, run.get("valid_sha256"))):
            if path is not None:
                if not is_nltk(path) and not is_prepared_any(path):
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
        if budget is not None:
            from ..budget import parse_duration

            budget = parse_duration(budget)
            if ray_address:
                raise FflmError("--budget measures this process's speed; with --ray give --epochs or --max-steps")
            if ctx.get_parameter_source("max_steps") == click.core.ParameterSource.COMMANDLINE:
                raise FflmError("--budget fits the steps to the time; drop --max-steps (--epochs caps the passes)")
        if output is None:
            raise click.UsageError("missing option '-o' / '--output'")
        text = _text_config(None, tokenizer, lowercase, encoding_errors)
        checkpoint = checkpoint or _checkpoint_path(output)
        given = {k for k in ctx.params if ctx.get_parameter_source(k) == click.core.ParameterSource.COMMANDLINE}
        recipe = None
        if preset:
            recipe = PRESETS[preset]
        elif budget is not None:  # the budgeted recipe's fixed part; its size and dropout are chosen below
            from ..budget import RECIPE

            recipe = RECIPE
        if recipe:  # the recipe's values wherever the command line gave none
            names = ("order", "cross_sentence", "embed_dim", "hidden", "tied", "dropout", "embed_dropout",
                     "activation", "lr", "batch_size", "epochs", "weight_decay", "max_halvings", "softmax",
                     "fofe", "fofe_length", "layer_norm", "residual", "optimizer", "warmup_steps", "schedule")
            assert set(recipe) <= set(names), "a recipe sets an option this list does not apply"
            p = {**ctx.params, **{k: v for k, v in recipe.items() if k not in given}}
            (order, cross_sentence, embed_dim, hidden, tied, dropout, embed_dropout, activation, lr, batch_size,
             epochs, weight_decay, max_halvings, softmax, fofe, fofe_length, layer_norm, residual, optimizer,
             warmup_steps, schedule) = (p[k] for k in names)
            if not preset and {"embed_dim", "hidden"} & given:
                if "tied" not in given:  # tied where the sizes allow
                    tied = _parse_hidden(hidden)[-1:] == (embed_dim,)
            elif not preset:  # the base size until the sizes are measured (fflm/budget.py SIZES)
                embed_dim, hidden = 256, "1024,256"
    _check_output(output)
    _check_output(checkpoint)
    if json_log:
        _check_output(json_log)
    from ..prepared import HeldOut, is_prepared_any, training_data
    from ..windows import order_memory

    prepared = not is_nltk(corpus) and is_prepared_any(corpus)
    if prepared:  # the folder's own text settings; options that disagree are refused
        from ..prepared import PreparedCorpus

        folder = PreparedCorpus(corpus)
        if not resume:
            text = _text_config(folder.text, tokenizer, lowercase, encoding_errors)
        folder.check_text(text)
    def windows_for(model, held_out=False):
        """The training and validation windows of a run over `model`'s vocabulary."""
        o, cross = model.config.span, model.config.cross_sentence
        if held_out:
            return _held_out_windows(corpus, text, model.vocab, o, cross)[:2]
        if prepared:
            train_windows = folder.windows(o, cross, model.vocab)
        else:
            train_windows = model.windows(read_sentences(corpus, text))
        return train_windows, (HeldOut(valid, text).windows(model.vocab, o, cross) if valid else None)

    if like:
        import dataclasses

        b = tr.get("budget") or {}
        model = FFNNLM(like_model.vocab, like_model.config, seed=tr["config"].get("seed", 1))
        del like_model
        windows, valid_windows = windows_for(model, held_out=bool(b.get("held_out")))
        tconfig = training.TrainConfig(**tr["config"])
        if b:  # the budget's last end, and the schedule as it was re-fitted on the way
            tconfig = dataclasses.replace(tconfig, max_steps=b.get("steps_taken", tconfig.max_steps))
        tconfig.check()
        used = training.set_threads(threads)
        trainer = training.Trainer(model, windows, valid_windows, tconfig)
        if b:
            trainer.schedule.total_steps = int(b["steps"])
            trainer.schedule.refits = [[int(x), int(y)] for x, y in b.get("refits", [])]
        meta = {"text": text.to_dict(), "training": {**{k: v for k, v in tr.items() if k not in ("history", "rollbacks")},
                                                    "like": source_name(like), "history": []}}
        say(f"rerunning {like}: {tconfig.max_steps or tconfig.epochs * -(-len(windows) // tconfig.batch_size):,} steps "
            f"as recorded, {used} thread(s)")
    elif resume:

        held_out = bool(training.Trainer.read_meta(resume)["run"].get("held_out"))
        trainer, cmeta = training.Trainer.load_checkpoint(resume, lambda m: windows_for(m, held_out))
        model, tconfig, meta = trainer.model, trainer.config, cmeta["model_meta"]
        used = training.set_threads(threads)
        say(f"resuming {resume}: epoch {trainer.epoch}, batch {trainer.batch}, {used} thread(s)")
    else:
        config = ModelConfig(order=order, embed_dim=embed_dim, hidden=_parse_hidden(hidden), activation=activation,
                             direct=direct, cross_sentence=cross_sentence, tied=tied, softmax=softmax,
                             cutoffs=_parse_cutoffs(cutoffs), tail_div=tail_div, fofe=_parse_fofe(fofe),
                             fofe_length=fofe_length, layer_norm=layer_norm, residual=residual)
        config.check()
        tconfig = training.TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, warmup_steps=warmup_steps,
                                       schedule=schedule,
                                       lr_decay=lr_decay, max_halvings=max_halvings,
                                       weight_decay=weight_decay, optimizer=optimizer, dropout=dropout,
                                       embed_dropout=embed_dropout, loss=loss, noise_samples=noise_samples,
                                       noise_power=noise_power, clip=clip, seed=seed, threads=threads,
                                       precision=precision, max_steps=max_steps,
                                       shuffle=shuffle, shuffle_block=shuffle_block,
                                       shuffle_pool=shuffle_pool)
        tconfig.check()
        if not prepared and not is_nltk(corpus):
            _check_text_fits(corpus, _available_memory())
        cut_given = {k for k in ("min_count", "max_vocab")
                     if ctx.get_parameter_source(k) == click.core.ParameterSource.COMMANDLINE}
        if prepared and not cut_given:  # the cut recorded at prepare
            min_count, max_vocab = None, None
        elif budget is not None and not preset and not cut_given:
            min_count = 2  # the budgeted recipe: words seen once become <unk>, so <unk> is learned for unseen words
        held = None  # --budget without --valid: whole sentences held out of the corpus
        if budget is not None and not valid:
            if prepared:
                raise FflmError(f"{corpus}: --budget holds out sentences for validation from a text corpus only; "
                                "give a prepared corpus --valid")
            windows, held, held_info, vocab = _held_out_windows(corpus, text, None, config.span, cross_sentence,
                                                                min_count, max_vocab)
        else:
            vocab, windows, _ = training_data(corpus, text, min_count, max_vocab, config.span, cross_sentence)
        if head_share is not None and cutoffs:
            raise FflmError("--head-share sets the automatic cutoffs; drop it or --cutoffs")
        config = config.resolve(vocab.counts, head_share)
        config.check_vocab(len(vocab))
        words = len(windows) - windows.num_sentences
        if words < order - 1:
            raise FflmError(f"{corpus}: only {words} words, fewer than the {order - 1} context words of --order {order}")
        valid_windows = HeldOut(valid, text).windows(vocab, config.span, cross_sentence) if valid else held
        if held is not None:
            say(f"validation: {held_info['sentences']:,} of the corpus's {held_info['of_sentences']:,} sentences "
                f"({held_info['tokens']:,} tokens) held out, in blocks (no --valid given)")
        need = memory_estimate(config, len(vocab), batch_size, noise_samples=noise_samples if loss != "softmax" else 0,
                               optimizer=optimizer)
        index = order_memory(len(windows), shuffle, shuffle_block, shuffle_pool)  # each epoch's order of the pairs
        have = _available_memory()
        if have is not None and need + index > have:
            fix = "use a smaller --hidden, --embed-dim, --batch-size or --max-vocab"
            if index > need:
                fix = "use --shuffle blocks (its memory does not grow with the corpus)"
            raise FflmError(
                f"this model needs about {(need + index) / 2**30:.1f} GiB to train ({index / 2**30:.1f} GiB of it the "
                f"epoch's shuffled order) but {have / 2**30:.1f} GiB is available; {fix}"
            )
        used = training.set_threads(threads)
        model = FFNNLM(vocab, config, seed=seed)
        budget_plan = None
        if budget is not None:
            import dataclasses

            from ..budget import MAX_EPOCHS, SIZES, choose, describe, describe_choice
            from ..budget import MEASURE_SECONDS as MEASURE_SECONDS_MAX

            if "schedule" not in given or schedule == "halving":
                tconfig = dataclasses.replace(tconfig, schedule="linear")  # annealed to 0 at the deadline
            # the passes at most: --epochs, else the preset's, else the recipe's measured limit
            cap = epochs if ("epochs" in given or preset) else MAX_EPOCHS
            candidates = [("given", model)]
            if not preset and not ({"embed_dim", "hidden"} & given):  # the sizes the recipe chooses among
                candidates = []
                for name, m, h in SIZES:
                    c = dataclasses.replace(config, embed_dim=m, hidden=h)
                    c.check()
                    fits = have is None or memory_estimate(c, len(vocab), batch_size, optimizer=optimizer) + index <= have
                    if fits or not candidates:
                        candidates.append((name, FFNNLM(vocab, c, seed=seed)))
            training.warm_up(candidates[0][1], tconfig)
            pick, tconfig, budget_plan = choose(
                candidates, windows, valid_windows, tconfig, budget, command_started, cap,
                given_dropout=bool({"dropout", "embed_dropout"} & given) or bool(preset),
                seconds=min(MEASURE_SECONDS_MAX, max(0.3, budget / 400)))
            model = candidates[pick][1]
            config = model.config
            del candidates
            budget_plan["schedule"] = tconfig.schedule
            budget_plan["min_count"] = min_count
            if held is not None:
                budget_plan["held_out"] = held_info
            tconfig = dataclasses.replace(tconfig, max_steps=budget_plan["steps"], epochs=budget_plan["epochs"])
            tconfig.check()
            for line in describe_choice(budget_plan):
                say(line)
            say(describe(budget_plan))
        trainer = training.Trainer(model, windows, valid_windows, tconfig, max_rollbacks=max_rollbacks)
        if budget_plan is not None:
            from ..budget import Deadline

            spe = budget_plan["steps_per_epoch"]
            trainer.deadline = Deadline(command_started + budget, spe, budget_plan["eval_seconds"],
                                        max_steps=cap * spe)
        say(f"vocabulary {len(vocab)}, {len(windows)} training tokens, {config.n_params(len(vocab)):,} parameters, "
            f"{used} thread(s)")
        if config.softmax == "adaptive" or softmax == "auto":
            say(_output_layer_line(config, len(vocab), chosen=softmax == "auto"))
        meta = {
            "text": text.to_dict(),
            "training": {
                "preset": preset,
                "recipe": "budget" if budget is not None and not preset else None,
                "budget": budget_plan,
                "corpus": source_name(corpus),
                "sha256": _sha256(corpus),
                "valid": source_name(valid) if valid else None,
                "valid_sha256": _sha256(valid) if valid else None,
                "config": tconfig.to_dict(),
                "history": [],
            },
        }
    if tconfig.precision != "fp32":
        from ..bf16 import describe_precision

        say(f"precision: {describe_precision(trainer.precision)}"
            + (" (--precision auto on this CPU)" if tconfig.precision == "auto" else ""))
    meta["training"]["compile_seconds"] = round(training.warm_up(model, tconfig), 3)
    run_info = {
        "corpus": meta["training"]["corpus"], "sha256": meta["training"]["sha256"],
        "valid": meta["training"]["valid"],
        "valid_sha256": _sha256(meta["training"]["valid"]) if meta["training"]["valid"] else None,
        "output": os.path.abspath(output), "text": meta["text"], "threads": threads,
        "held_out": bool((meta["training"].get("budget") or {}).get("held_out")),
    }

    started = _process_started()
    ray_sgd = None
    if ray_address:
        from ..distributed import distribute

        per = threads or max(1, (os.cpu_count() or 1) // workers)
        ray_sgd = distribute(trainer, workers, sync_every, None if ray_address == "local" else ray_address, per)
        run_info["ray"] = {"address": ray_address, "workers": workers, "sync_every": sync_every, "threads": per}
        meta["training"]["ray"] = {k: v for k, v in run_info["ray"].items() if k != "address"}  # fflm info shows it
        how = "gradients averaged every step" if sync_every == 1 else f"models averaged every {sync_every} steps"
        say(f"ray: {workers} worker(s) of {per} thread(s) on {ray_sgd.nodes} node(s), {how}")

    def on_epoch(trainer):
        row = trainer.history[-1]
        if ray_sgd is not None:
            row["ray"] = ray_sgd.stats()
        if started is not None and trainer.first_step_at is not None and not resume:
            meta["training"]["start_seconds"] = round(trainer.first_step_at - started, 3)  # to the first step
        meta["training"]["history"] = trainer.history
        meta["training"]["rollbacks"] = trainer.rollbacks
        if meta["training"].get("budget"):  # the re-fits so far: a rerun (--like) replays them
            meta["training"]["budget"]["refits"] = trainer.schedule.refits
            meta["training"]["budget"]["steps_taken"] = trainer.steps
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
                   f"{checkpoint}; continue with: fflm train --resume {checkpoint}{_ray_flags(run_info)}", err=True)
        sys.exit(128 + stop["signal"])
    except training.Diverged:
        if os.path.exists(checkpoint):
            os.remove(checkpoint)  # a diverged run is not worth resuming; the model file keeps the best
        raise
    except FflmError as e:
        from ..distributed import WorkerLost

        if not isinstance(e, WorkerLost):
            raise
        if os.path.exists(checkpoint):
            raise FflmError(f"{e}; the last checkpoint is intact: continue with fflm train --resume {checkpoint}"
                            f"{_ray_flags(run_info)} (or without --ray)") from None
        raise FflmError(f"{e} before the first checkpoint; start again") from None
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
        if ray_sgd is not None:
            ray_sgd.close()
    if os.path.exists(checkpoint):
        os.remove(checkpoint)  # finished: the model file has the best weights
    has_valid = trainer.valid is not None and len(trainer.valid) > 0
    best = min((r["valid_ppl"] for r in history), default=float("nan")) if has_valid else None
    if has_valid and not quiet and sys.stdout.isatty() and len(history) > 1:
        from ..plot import text_plot

        click.echo(text_plot([r["valid_ppl"] for r in history]))
    say(f"wrote {output} after {len(history)} epochs in {time.perf_counter() - start:.0f} s"
        + (f"; best valid ppl {best:.2f}" if best is not None else ""))


def _held_out_windows(corpus, text, vocab, span, cross_sentence, min_count=1, max_vocab=None):
    """(training windows, held-out windows, what was held out, vocabulary) for a run without
    --valid: whole sentences held out of the corpus (fflm/budget.py split_held_out), the
    vocabulary built on the rest unless given."""
    from ..budget import split_held_out
    from ..prepared import read_text_sentences
    from ..vocab import Vocabulary
    from ..windows import Windows

    train_sents, held_sents = split_held_out(read_text_sentences(corpus, text))
    if vocab is None:
        vocab = Vocabulary.build(train_sents, min_count=min_count or 1, max_size=max_vocab)
    windows = Windows.from_sentences(train_sents, vocab, span, cross_sentence)
    held = Windows.from_sentences(held_sents, vocab, span, cross_sentence)
    info = {"sentences": len(held_sents), "tokens": len(held), "of_sentences": len(train_sents) + len(held_sents)}
    return windows, held, info, vocab


def _ray_flags(run_info):
    """The --ray options of a run, for the line that says how to resume it."""
    r = run_info.get("ray")
    if not r:
        return ""
    where = "" if r["address"] == "local" else f" {r['address']}"
    return f" --ray{where} --workers {r['workers']} --sync-every {r['sync_every']} --threads {r['threads']}"


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


# Bytes of memory a corpus read whole takes per byte of its text: the str, the lists of words,
# the id stream and the windows (measured: 976 MB for the 68 MB of 10M synthetic tokens, 14x).
TEXT_READ_FACTOR, COMPRESSION = 15, 4


def _check_text_fits(path, have):
    """Refuse, before reading it, a text corpus that reading whole would not fit in memory."""
    if have is None or not os.path.isfile(path):
        return
    size = os.path.getsize(path)
    if path.endswith((".gz", ".bz2", ".xz")):
        size *= COMPRESSION
    need = size * TEXT_READ_FACTOR
    if need > have:
        raise FflmError(f"{path}: reading it whole needs about {need / 2**30:.1f} GiB but {have / 2**30:.1f} GiB is "
                        f"available; prepare it once (fflm prepare {path} -o DIR) and train on DIR, whose memory "
                        "does not grow with the corpus")


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
        corpora[model_source] = _training_sentences(model_source, config)
    for source, sentences in corpora.items():
        o = tuning_overlap(tune_sentences, sentences)
        if o["suspicious"]:
            warnings.warn(f"--tune-on {tune_on}: {100 * o['seen_share']:.1f}% of its tokens ({o['seen_sentences']:,} of "
                          f"{o['sentences']:,} sentences) are in the training text {source} (repeats within it: "
                          f"{100 * o['natural_share']:.1f}%); weights tuned on it favour the model that memorised "
                          "them: tune on held-out text", FflmWarning)


