"""Command-line interface: a thin layer over the library.

Exit codes: 0 success (and for scan-like commands: nothing found), 1 findings, 2 error.
Every error is one line on stderr; no traceback unless OVMFTOOL_DEBUG=1.
"""

from __future__ import annotations

import json
import os
import sys

import click

from ovmftool import __version__
from ovmftool.errors import OvmfToolError


class _Group(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except OvmfToolError as e:
            _fail(str(e))
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except KeyboardInterrupt:
            click.echo("ovmftool: interrupted", err=True)
            sys.exit(130)
        except MemoryError:
            _fail("out of memory")
        except Exception as e:  # never a traceback for the user
            if os.environ.get("OVMFTOOL_DEBUG"):
                raise
            _fail(f"internal error: {type(e).__name__}: {e} (OVMFTOOL_DEBUG=1 shows a traceback)")


def _fail(msg: str) -> None:
    click.echo(f"ovmftool: error: {msg}", err=True)
    sys.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ovmftool")
def main() -> None:
    """Audit and patch OVMF (EDK II) firmware images for string port-I/O (INS/OUTS)."""


def _load(image: str):
    from ovmftool.model.parser import read_image

    return read_image(image)


def _emit(text: str, output: str | None) -> None:
    """Write `text` to stdout, or atomically to `output`."""
    if output is None or output == "-":
        click.echo(text, nl=not text.endswith("\n"))
        return
    from ovmftool.report.io import write_atomic

    write_atomic(output, text.encode())


@main.command()
@click.argument("image", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--modules", "modules_only", is_flag=True, help="List only the module table.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write to a file instead of stdout.")
def info(image: str, fmt: str, modules_only: bool, output: str | None) -> None:
    """Print the structure of IMAGE: volumes, files, sections, modules, damage.

    Exits 2 (after printing what could be parsed) when the image is damaged.
    """
    from ovmftool.model.node import all_problems
    from ovmftool.ops import tree
    from ovmftool.ops.modules import iter_modules

    root = _load(image)
    if fmt == "json":
        doc = tree.info_json(root)
        if modules_only:
            doc = {k: doc[k] for k in ("schema_version", "tool", "image", "modules", "problems")}
        _emit(json.dumps(doc, indent=2, sort_keys=True) + "\n", output)
    elif modules_only:
        rows = [f"{'name':<34} {'guid':<36} {'type':<10} {'arch':<5} {'fmt':<5} {'image_base':>18} {'entry':>8}  volume"]
        for m in iter_modules(root):
            rows.append(
                f"{m.name:<34} {m.guid:<36} {m.file_type:<10} {m.arch:<5} {m.image.format:<5} "
                f"0x{m.image.image_base:016X} 0x{m.image.entry_rva:06X}  {m.volume}"
            )
        _emit("\n".join(rows) + "\n", output)
    else:
        _emit("\n".join(tree.text_lines(root)) + "\n", output)
    probs = all_problems(root)
    if probs:
        more = f" (and {len(probs) - 1} more)" if len(probs) > 1 else ""
        _fail(f"{image}: damaged image: {probs[0]}{more}")


@main.command()
@click.argument("image", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Directory to create (must not exist, or be empty).")
@click.option("--allow-damaged", is_flag=True, help="Extract what parsed even if the image is damaged.")
def extract(image: str, out_dir: str, allow_damaged: bool) -> None:
    """Write every module of IMAGE as NAME_GUID.efi|.te plus manifest.json into a directory."""
    from ovmftool.model.node import all_problems
    from ovmftool.ops.extract import extract as do_extract

    root = _load(image)
    probs = all_problems(root)
    if probs and not allow_damaged:
        _fail(f"{image}: damaged image: {probs[0]} (use --allow-damaged to extract anyway)")
    manifest = do_extract(root, out_dir)
    click.echo(f"wrote {len(manifest['modules'])} modules and {len(manifest['code_blobs'])} code blobs to {out_dir}")


@main.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--symbols", "symbols_dir", type=click.Path(file_okay=False),
              help="EDK II build directory whose <ARCH>/*.debug (or .map) files name functions.")
@click.option("-j", "--jobs", type=click.IntRange(1, 64), default=None,
              help="Worker processes (default: CPU count, at most 4).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write to a file instead of stdout.")
def scan(images: tuple[str, ...], fmt: str, symbols_dir: str | None, jobs: int | None, output: str | None) -> None:
    """Find every string port-I/O instruction (INS/OUTS) in the code of each IMAGE.

    Exit 0: no sites; 1: sites found; 2: error (an image could not be read or is damaged).
    """
    from ovmftool.errors import OvmfToolError as _E
    from ovmftool.model.node import all_problems
    from ovmftool.report.scan_report import scan_json, scan_text
    from ovmftool.scan.scanner import default_jobs, scan_image

    jobs = jobs or default_jobs()
    docs, texts, errors, sites = [], [], [], 0
    for image in images:
        try:
            root = _load(image)
            probs = all_problems(root)
            if probs:
                raise _E(f"{image}: damaged image: {probs[0]}")
            res = scan_image(image, symbols_dir, jobs, root=root)
        except _E as e:
            errors.append(str(e))
            continue
        sites += len(res.findings)
        docs.append(scan_json(res)) if fmt == "json" else texts.append(scan_text(res))
    if fmt == "json":
        if docs:
            _emit(json.dumps(docs[0] if len(images) == 1 else docs, indent=2, sort_keys=True) + "\n", output)
    elif texts:
        _emit("".join(texts), output)
    for e in errors:
        click.echo(f"ovmftool: error: {e}", err=True)
    sys.exit(2 if errors else (1 if sites else 0))
