"""The `fflm` command: parse options, call the library, print. Nothing else lives here.

One module per group of commands: neural (train, eval, generate, info, score), inside
(neighbors, embeddings, pictures), ngram, bench and data; common holds what they share.
"""

import sys
import warnings

import click

from ..errors import FflmError
from . import bench, data, inside, neural, ngram, train  # noqa: F401  (each registers its commands)
from .common import _show_warning, cli


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

