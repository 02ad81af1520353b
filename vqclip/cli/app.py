"""The click group and the entry point: `main()` is the one place where failures, signals and closed pipes
become one message on stderr and an exit code (vqclip.errors.ExitCode)."""

import os
import signal
import sys

import click

from vqclip import __version__
from vqclip.errors import ExitCode, FramePipeClosed, Interrupted, VqclipError, forget_signals, note_signal

STDOUT = {"taken": False}  # True while frames stream on stdout: then nothing else may be written there


def err_console():
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def info(message: str, quiet: bool = False) -> None:
    """A line for the user on stderr (commands without a live progress display)."""
    if not quiet:
        err_console().print(message, markup=False)


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
      vqclip batch prompts.txt --outdir out/
      vqclip models list
    """
    ctx.obj = {"debug": debug}


# ---- entry point -------------------------------------------------------------------------------

NO_TORCH = ("models",)  # commands that run no model: no thread count to choose
SIGNALS = {"SIGTERM": ExitCode.TERMINATED, "SIGHUP": ExitCode.HANGUP}


def _on_signal(signum, frame):
    name = signal.Signals(signum).name
    note_signal(name, SIGNALS[name])
    raise Interrupted(name, SIGNALS[name])


def _on_ctrl_c(signum, frame):
    note_signal("Ctrl-C", ExitCode.INTERRUPTED)
    raise KeyboardInterrupt


def _handle_signals() -> dict:
    """SIGTERM (Slurm, `timeout`, `docker stop`) and SIGHUP (a dropped SSH session) stop a run like Ctrl-C:
    the latest image is saved (vqclip.pipeline.write) and the process exits 143 / 129. Every handler, Ctrl-C's too,
    records its signal before it raises, so the loop still stops if the exception is lost on its way up
    (vqclip.errors.stop_if_signalled). Returns the handlers they replaced, for `main()` to put back (it may
    be called in-process, from a program of the user's)."""
    previous = {}
    handlers = {"SIGINT": _on_ctrl_c} | {name: _on_signal for name in SIGNALS}
    for name, handler in handlers.items():
        if hasattr(signal, name):
            number = getattr(signal, name)
            try:
                previous[number] = signal.signal(number, handler)
            except ValueError:  # not the main thread (main() called from a worker): leave them be
                break
    return previous


def _silence_stdout() -> None:
    """After a closed pipe, point stdout at /dev/null so the interpreter's final flush cannot fail."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def _is_oom(err: BaseException) -> bool:
    torch = sys.modules.get("torch")
    return isinstance(err, MemoryError) or (torch is not None and isinstance(err, torch.cuda.OutOfMemoryError))


def _fail(message: str, hint: str | None = None) -> None:
    from rich.markup import escape

    console = err_console()
    console.print(f"[bold red]Error:[/] {escape(message)}", highlight=False)  # `[models.x]` is text, not markup
    if hint:
        console.print(hint, highlight=False, markup=False)


def main(argv=None) -> None:
    """Run the CLI and map every failure to one message on stderr and its exit code. First, before any
    command imports torch, the thread count is fitted to the cores other processes leave free (unless
    OMP_NUM_THREADS is set): OpenMP's spinning threads cost 25x beside one busy process (vqclip.threads)."""
    args = argv if argv is not None else sys.argv[1:]
    if not {"-h", "--help", "--version"} & set(args) and (args[:1] or ["models"])[0] not in NO_TORCH:
        from vqclip.threads import fit_threads_to_free_cores

        fit_threads_to_free_cores()
    debug = "--debug" in args or bool(os.environ.get("VQCLIP_DEBUG"))
    STDOUT["taken"] = False
    previous = _handle_signals()
    try:
        _run(argv, debug)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        forget_signals()


def _run(argv, debug: bool) -> None:
    try:
        cli.main(args=argv, prog_name="vqclip", standalone_mode=False)
    except click.exceptions.Abort:
        print("Interrupted.", file=sys.stderr)
        sys.exit(ExitCode.INTERRUPTED)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except click.exceptions.Exit as err:
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        sys.exit(ExitCode.INTERRUPTED)
    except (FramePipeClosed, BrokenPipeError) as err:  # `| head`: the reader has what it wanted
        _silence_stdout()
        saved = getattr(err, "saved", None)
        if saved is not None:  # stdout is gone: stderr names what was kept
            print(f"The frame pipe was closed; the latest image is in {saved}.", file=sys.stderr, flush=True)
        sys.exit(ExitCode.OK)
    except VqclipError as err:
        if debug and not isinstance(err, Interrupted):
            raise
        if err.saved is not None and not STDOUT["taken"]:
            print(err.saved, flush=True)  # what was kept is still the command's output
        if isinstance(err, Interrupted):  # the user's own doing, not an error: said plainly
            print(err.message, file=sys.stderr, flush=True)
        else:
            _fail(err.message, err.hint)
        sys.exit(err.exit_code)
    except Exception as err:
        if debug:
            raise
        if _is_oom(err):
            _fail("out of memory.", "Try a smaller --size or --cutn, or --max-memory so the plan checkpoints.")
            sys.exit(ExitCode.OUT_OF_MEMORY)
        _fail(f"{type(err).__name__}: {err}", "Re-run with --debug for details.")
        sys.exit(ExitCode.FAILURE)
