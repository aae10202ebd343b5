"""fflm train: the command over the library's training loop (fflm/train.py), with its recipes:
presets, --budget (fflm/budget.py), --like, --resume and --ray."""

import json
import os
import sys
import time
import warnings

import click

from ..errors import FflmError, FflmWarning
from ..presets import PRESETS, preset_flags
from ..text import is_nltk, source_name
from .neural import _output_layer_line
from .common import (
    EPILOG_DATA,
    _available_memory,
    _check_output,
    _checkpoint_path,
    _epoch_line,
    _json_safe,
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
              help="Fit the run to this much time (45m, 1h30m, 600s): without --preset the size, dropout and rate "
                   "are chosen for the corpus from this machine's measured speed (README: Training on your own "
                   "corpus); the steps that fit are taken, re-fitted as the run goes, the rate falling linearly "
                   "to 0 at the last; --epochs caps the passes (default 8); recorded in the model.")
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
        head_why = None  # the budgeted recipe's adaptive head, where it chooses one
        if budget is not None and not preset and head_share is None and not cutoffs \
                and config.resolve(vocab.counts).softmax == "adaptive":
            from ..budget import head_share_for

            head_share, head_why = head_share_for(vocab.counts)
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
                for name, m, h, _ in SIZES:
                    c = dataclasses.replace(config, embed_dim=m, hidden=h)
                    c.check()
                    fits = have is None or memory_estimate(c, len(vocab), batch_size, optimizer=optimizer) + index <= have
                    if fits or not candidates:
                        candidates.append((name, FFNNLM(vocab, c, seed=seed)))
            training.warm_up(candidates[0][1], tconfig)
            pick, tconfig, budget_plan = choose(
                candidates, windows, valid_windows, tconfig, budget, command_started, cap,
                given_dropout=bool({"dropout", "embed_dropout"} & given) or bool(preset),
                seconds=min(MEASURE_SECONDS_MAX, max(0.3, budget / 400)),
                rates=None if {"lr", "preset"} & given or preset else {name: r for name, _, _, r in SIZES})
            model = candidates[pick][1]
            config = model.config
            del candidates
            budget_plan["schedule"] = tconfig.schedule
            budget_plan["min_count"] = min_count
            if head_why is not None:  # the recipe chose the adaptive head (None: the automatic 85%)
                budget_plan["head_share"] = head_share
                budget_plan["head_why"] = head_why
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
        meta["training"]["config"] = trainer.config.to_dict()  # a budgeted run's steps as last re-fitted
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
