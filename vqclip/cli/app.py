"""The click group and the entry point: `main()` maps every failure to one message and its exit code."""

import os
import sys

import click

from vqclip import __version__
from vqclip.errors import VqclipError

EXIT_INTERRUPTED = 130
EXIT_OOM = 4


def err_console():
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def info(message: str, quiet: bool = False) -> None:
    if not quiet:
        err_console().print(message)


class DefaultGroup(click.Group):
    """`vqclip "PROMPT" ...` is `vqclip generate "PROMPT" ...`."""

    def parse_args(self, ctx, args):
        group_options = {"--help", "-h", "--version", "--debug"}
        first = next((a for a in args if a not in group_options), None)
        if first is not None and first not in self.commands:
            args.insert(args.index(first), "generate")
        return super().parse_args(ctx, args)


@click.group(cls=DefaultGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vqclip")
@click.option("--debug", is_flag=True, help="Show full tracebacks for unexpected errors.")
@click.pass_context
def cli(ctx, debug):
    """Text to image with VQGAN+CLIP.

    \b
      vqclip "city during a rainy night" --size 512
      vqclip models list
    """
    ctx.obj = {"debug": debug}


# ---- entry point -------------------------------------------------------------------------------


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, MemoryError) or "out of memory" in str(err).lower()


def main(argv=None) -> None:
    """Run the CLI and map every failure to one message on stderr and its exit code."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:]) or bool(os.environ.get("VQCLIP_DEBUG"))
    try:
        cli.main(args=argv, prog_name="vqclip", standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(EXIT_INTERRUPTED)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except click.exceptions.Exit as err:
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except VqclipError as err:
        if debug:
            raise
        console = err_console()
        console.print(f"[bold red]Error:[/] {err.message}")
        if err.hint:
            console.print(err.hint)
        sys.exit(err.exit_code)
    except BrokenPipeError:
        sys.stderr.close()
        sys.exit(0)
    except Exception as err:
        if debug:
            raise
        if _is_oom(err):
            err_console().print(
                "[bold red]Error:[/] out of memory. Try a smaller --size or --cutn, or --precision bf16."
            )
            sys.exit(EXIT_OOM)
        err_console().print(f"[bold red]Error:[/] {type(err).__name__}: {err}\nRe-run with --debug for details.")
        sys.exit(1)
