"""The CLI's terminal contract, for `ovmftool.cli` to declare its commands with: every usage
mistake and every error is one line on stderr (`ovmftool: error: ...`, exit 2; no traceback unless
OVMFTOOL_DEBUG=1), stdout is guarded against write errors, an `-o` is checked before any work
starts, and output goes to stdout or, atomically, to a file."""

from __future__ import annotations

import os
import sys

import click

from ovmftool.errors import OvmfToolError, one_line, printable_lines
from ovmftool.outputs import GuardedStdout, check_output_dir, check_output_file, write_atomic


class Command(click.Command):
    """A subcommand whose usage errors all carry their context (so they name the command)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as e:  # click leaves some parser errors (option needs a value) without a context
            if e.ctx is None:
                e.ctx = ctx
            raise


class Group(click.Group):
    """The `ovmftool` group: usage errors, errors and interrupts each end in one stderr line and
    their exit code (2; 130 for Ctrl-C); no traceback unless OVMFTOOL_DEBUG=1."""

    command_class = Command

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        """click's entry point, with every usage error as one line (`ovmftool: error: CMD: ...`)."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)

        if not isinstance(sys.stdout, GuardedStdout):
            sys.stdout = GuardedStdout(sys.stdout)
        out = sys.stdout
        try:
            self._main(args, prog_name, complete_var, **extra)
        except SystemExit as e:
            code = e.code
        else:
            code = 0
        try:
            out.flush()
        except OvmfToolError:
            pass
        if out.error is not None and code != 2:  # a write error a library swallowed (click probes streams)
            click.echo(f"ovmftool: error: {out.error}", err=True)
            code = 2
        sys.exit(code)

    def _main(self, args, prog_name, complete_var, **extra):
        try:
            rv = super().main(args, prog_name, complete_var, False, **extra)
        except NO_ARGS_HELP as e:  # bare `ovmftool`: the help, as click shows it
            e.show()
            sys.exit(e.exit_code)
        except click.UsageError as e:
            click.echo(usage_line(e), err=True)
            sys.exit(2)
        except click.ClickException as e:
            click.echo(f"ovmftool: error: {' '.join(e.format_message().split())}", err=True)
            sys.exit(e.exit_code)
        except click.exceptions.Abort:
            click.echo("ovmftool: interrupted", err=True)
            sys.exit(130)
        sys.exit(rv if isinstance(rv, int) else 0)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except OvmfToolError as e:
            fail(str(e))
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except KeyboardInterrupt:
            click.echo("ovmftool: interrupted", err=True)
            sys.exit(130)
        except MemoryError:
            fail("out of memory")
        except Exception as e:  # never a traceback for the user
            if os.environ.get("OVMFTOOL_DEBUG"):
                raise
            fail(f"internal error: {type(e).__name__}: {e} (OVMFTOOL_DEBUG=1 shows a traceback)")


def fail(msg: str) -> None:
    """The one line every error ends in (`errors.one_line`: no input can add a second line)."""
    click.echo(f"ovmftool: error: {one_line(msg)}", err=True)
    sys.exit(2)


NO_ARGS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())  # click >= 8.2


def usage_line(e: click.UsageError) -> str:
    """`ovmftool: error: scan: Missing argument 'IMAGES...'. (see ovmftool scan --help)`"""
    names, c = [], e.ctx
    while c is not None and c.parent is not None:  # not the root's name: `python -m ovmftool` has spaces
        names.append(c.info_name or "")
        c = c.parent
    sub = " ".join(reversed(names))
    msg = " ".join(e.format_message().split())
    return f"ovmftool: error: {sub + ': ' if sub else ''}{msg} (see ovmftool {sub + ' ' if sub else ''}--help)"


def echo(text: str = "", err: bool = False, nl: bool = True) -> None:
    """`click.echo` of text that may hold names read from the user's files or images: every line
    printable (`errors.printable_lines`), so no name adds a line, moves the cursor or reorders
    what a terminal shows, and bytes of a file name that are not UTF-8 are shown escaped."""
    click.echo(printable_lines(text), err=err, nl=nl)


class Seconds(click.FloatRange):
    """A number of seconds within bounds; NaN (which compares false with both bounds) is refused."""

    name = "number"

    def convert(self, value, param, ctx):
        v = super().convert(value, param, ctx)
        if v != v:
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        return v


def out_path(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """-o FILE: checked before any work starts (one line naming it and why it cannot be written)."""
    if value == "-":
        raise click.BadParameter("'-' (standard output) is not an output here: give a file name")
    if value == "":
        raise click.BadParameter("an empty file name")
    if value is not None and not ctx.resilient_parsing:
        check_output_file(value)
    return value


def out_file(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """-o FILE|-: as out_path; `-` is stdout."""
    return value if value == "-" else out_path(ctx, param, value)


def out_dir(ctx: click.Context, param: click.Parameter, value: str | None, parents: bool = False) -> str | None:
    """-o DIR: absent or empty, and creatable in an existing parent, checked before any work."""
    if value == "-":
        raise click.BadParameter("'-' is not a directory name here: give a directory")
    if value == "":
        raise click.BadParameter("an empty directory name")
    if value is not None and not ctx.resilient_parsing:
        check_output_dir(value, parents=parents)
    return value


def out_dir_parents(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """-o DIR whose missing parents are created (once the work is done)."""
    return out_dir(ctx, param, value, parents=True)


def progress_printer(line):
    """A progress callback that rewrites one line on stderr (`line(value)` is its text), or None
    when stderr is not a terminal."""
    if not sys.stderr.isatty():
        return None
    return lambda value: click.echo(line(value), nl=False, err=True)


def emit(text: str, output: str | None) -> None:
    """Write `text` to stdout, or atomically to `output`."""
    text = printable_lines(text)
    if output is None or output == "-":
        click.echo(text, nl=not text.endswith("\n"))
        return

    write_atomic(output, text.encode())
