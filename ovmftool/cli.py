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
from ovmftool.errors import OvmfToolError, one_line


class _Command(click.Command):
    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as e:  # click leaves some parser errors (option needs a value) without a context
            if e.ctx is None:
                e.ctx = ctx
            raise


class _Group(click.Group):
    command_class = _Command

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        """click's entry point, with every usage error as one line (`ovmftool: error: CMD: ...`)."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        from ovmftool.report.io import GuardedStdout

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
        except _NO_ARGS_HELP as e:  # bare `ovmftool`: the help, as click shows it
            e.show()
            sys.exit(e.exit_code)
        except click.UsageError as e:
            click.echo(_usage_line(e), err=True)
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
    """The one line every error ends in (`errors.one_line`: no input can add a second line)."""
    click.echo(f"ovmftool: error: {one_line(msg)}", err=True)
    sys.exit(2)


_NO_ARGS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())  # click >= 8.2


def _usage_line(e: click.UsageError) -> str:
    """`ovmftool: error: scan: Missing argument 'IMAGES...'. (see ovmftool scan --help)`"""
    names, c = [], e.ctx
    while c is not None and c.parent is not None:  # not the root's name: `python -m ovmftool` has spaces
        names.append(c.info_name or "")
        c = c.parent
    sub = " ".join(reversed(names))
    msg = " ".join(e.format_message().split())
    return f"ovmftool: error: {sub + ': ' if sub else ''}{msg} (see ovmftool {sub + ' ' if sub else ''}--help)"


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ovmftool")
def main() -> None:
    """Audit and patch OVMF (EDK II) firmware images for string port-I/O (INS/OUTS)."""


def _load(image: str):
    from ovmftool.model.parser import read_image

    return read_image(image)


def _out_path(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """-o FILE: checked before any work starts (one line naming it and why it cannot be written)."""
    if value == "-":
        raise click.BadParameter("'-' (standard output) is not an output here: give a file name")
    if value is not None and not ctx.resilient_parsing:
        from ovmftool.report.io import check_output_file

        check_output_file(value)
    return value


def _out_file(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """-o FILE|-: as _out_path; `-` is stdout."""
    return value if value == "-" else _out_path(ctx, param, value)


def _out_dir(ctx: click.Context, param: click.Parameter, value: str | None, parents: bool = False) -> str | None:
    """-o DIR: absent or empty, and creatable in an existing parent, checked before any work."""
    if value == "-":
        raise click.BadParameter("'-' is not a directory name here: give a directory")
    if value is not None and not ctx.resilient_parsing:
        from ovmftool.report.io import check_output_dir

        check_output_dir(value, parents=parents)
    return value


def _out_dir_parents(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """-o DIR whose missing parents are created (once the work is done)."""
    return _out_dir(ctx, param, value, parents=True)


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
@click.option("-o", "--output", metavar="FILE|-", callback=_out_file,
              help="Write to FILE (atomically; checked before any work) instead of stdout.")
def info(image: str, fmt: str, modules_only: bool, output: str | None) -> None:
    """Print the structure of IMAGE: volumes, files, sections, modules, damage.

    Exits 2 (after printing what could be parsed) when the image is damaged.
    """
    from ovmftool.model.node import all_problems
    from ovmftool.ops import tree
    from ovmftool.ops.modules import iter_modules

    root = _load(image)
    if fmt == "json":
        _emit(json.dumps(tree.info_json(root, modules_only), indent=2, sort_keys=True) + "\n", output)
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
@click.option("-o", "--output", "out_dir", required=True, metavar="DIR", callback=_out_dir,
              help="Directory to create (must not exist, or be empty; its parent must exist).")
@click.option("--allow-damaged", is_flag=True, help="Extract what parsed even if the image is damaged.")
def extract(image: str, out_dir: str, allow_damaged: bool) -> None:
    """Write every module of IMAGE as NAME_GUID.efi|.te plus manifest.json into a directory.

    Exit 0: written, image undamaged. With --allow-damaged a damaged image still exits 2, after
    writing what parsed and listing (here and in manifest.json's `skipped`) what could not be.
    """
    from ovmftool.model.node import all_problems
    from ovmftool.ops.extract import extract as do_extract

    root = _load(image)
    probs = all_problems(root)
    if probs and not allow_damaged:
        _fail(f"{image}: damaged image: {probs[0]} (use --allow-damaged to extract anyway)")
    manifest = do_extract(root, out_dir)
    for s in manifest["skipped"]:
        click.echo(f"skipped {s['kind']} {s['name'] or s['guid'] or '?'} in {s['volume'] or 'the image'} "
                   f"at {s['where']}: {s['reason']}")
    click.echo(f"wrote {len(manifest['modules'])} modules and {len(manifest['code_blobs'])} code blobs to {out_dir}"
               + (f"; skipped {len(manifest['skipped'])}" if manifest["skipped"] else ""))
    if probs:
        more = f" (and {len(probs) - 1} more)" if len(probs) > 1 else ""
        _fail(f"{image}: damaged image: {probs[0]}{more}; extracted what parsed, "
              f"{len(manifest['skipped'])} part(s) skipped")


def _scan_one(image: str, symbols_dir: str | None = None, jobs: int | None = None, root=None):
    """Parse (unless `root` is the parsed image) and scan one image; damaged images (damage the
    scan comes upon included) and inputs without code are errors."""
    from ovmftool.scan.scanner import default_jobs, scan_checked

    root = _load(image) if root is None else root
    return scan_checked(image, symbols_dir, jobs or default_jobs(), root=root)


@main.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["text", "json", "sarif", "junit"]), default="text",
              show_default=True)
@click.option("--symbols", "symbols_dir", type=click.Path(file_okay=False),
              help="EDK II build directory whose <ARCH>/*.debug (or .map) files name functions.")
@click.option("-j", "--jobs", type=click.IntRange(1, 64), default=None,
              help="Worker processes (default: 1 with the native walk, else CPU count, at most 4).")
@click.option("-o", "--output", metavar="FILE|-", callback=_out_file,
              help="Write to FILE (atomically; checked before any work) instead of stdout.")
@click.option("--sarif-root", type=click.Path(file_okay=False),
              help="SARIF: image URIs are relative to this directory (%SRCROOT%; default: the working directory).")
def scan(images: tuple[str, ...], fmt: str, symbols_dir: str | None, jobs: int | None, output: str | None,
         sarif_root: str | None) -> None:
    """Find every string port-I/O instruction (INS/OUTS) in the code of each IMAGE.

    Exit 0: checked, no sites; 1: sites found; 2: error (an input could not be read, is damaged,
    or holds no code, e.g. a variable store). With several images: the worst of theirs; each
    keeps its place in the output, errors included.
    """
    from ovmftool.report.scan_report import render
    from ovmftool.scan.scanner import default_jobs, scan_paths, worst_exit

    outcomes = scan_paths(images, symbols_dir, jobs or default_jobs())
    text = render(outcomes, fmt, sarif_root)
    if text:
        _emit(text, output)
    for o in outcomes:
        if o.exit_code == 2:
            click.echo(f"ovmftool: error: {o.message}", err=True)
    sys.exit(worst_exit(outcomes))


@main.command()
@click.argument("image", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, metavar="FILE|-", callback=_out_file,
              help="Baseline file to write (`-`: stdout).")
@click.option("--symbols", "symbols_dir", type=click.Path(file_okay=False))
def baseline(image: str, output: str, symbols_dir: str | None) -> None:
    """Record today's string I/O sites of IMAGE as the accepted baseline."""
    from ovmftool.gate.baseline import make_baseline

    res = _scan_one(image, symbols_dir)
    _emit(json.dumps(make_baseline(res), indent=2, sort_keys=True) + "\n", output)
    click.echo(f"baseline: {len(res.findings)} sites of {image} recorded in {output}", err=True)


@main.command()
@click.argument("image", type=click.Path(dir_okay=False))
@click.option("--baseline", "baseline_file", type=click.Path(dir_okay=False), help="From `ovmftool baseline`.")
@click.option("--waivers", "waivers_file", type=click.Path(dir_okay=False), help="JSON waivers (docs/ci.md).")
@click.option("--symbols", "symbols_dir", type=click.Path(file_okay=False))
def check(image: str, baseline_file: str | None, waivers_file: str | None, symbols_dir: str | None) -> None:
    """Fail (exit 1) only for sites of IMAGE that are neither in the baseline nor waived."""
    from ovmftool.gate.baseline import check as do_check, load_baseline, load_waivers

    base = load_baseline(baseline_file) if baseline_file else set()
    waivers = load_waivers(waivers_file) if waivers_file else []
    res = _scan_one(image, symbols_dir)
    out = do_check(res, base, waivers)
    for f in out.new:
        click.echo(f"NEW  {f.module} {f.guid} {f.arch} rva 0x{f.rva:X} {f.mnemonic} {f.bytes} "
                   f"in {f.function or '?'} [{f.function_source}] ({f.volume})")
    for f, w in out.waived:
        click.echo(f"waived  {f.module} rva 0x{f.rva:X} {f.mnemonic} in {f.function or '?'}: {w.reason}")
    for w in out.expired:
        click.echo(f"warning: waiver {w.describe()} expired on {w.expires}", err=True)
    for w in out.unused:
        click.echo(f"warning: waiver {w.describe()} matched no site", err=True)
    click.echo(f"check: {len(out.new)} new, {len(out.waived)} waived, {out.known} in baseline, "
               f"{out.gone} baseline sites gone")
    sys.exit(1 if out.new else 0)


@main.command()
@click.argument("old", type=click.Path(dir_okay=False))
@click.argument("new", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--symbols-old", type=click.Path(file_okay=False))
@click.option("--symbols-new", type=click.Path(file_okay=False))
def diff(old: str, new: str, fmt: str, symbols_old: str | None, symbols_new: str | None) -> None:
    """Sites added, removed and unchanged from OLD to NEW (exit 1 if any were added)."""
    from ovmftool.gate.diff import diff as do_diff, diff_json
    from ovmftool.scan.scanner import open_symbols

    # both build directories are checked before any scan
    sym_a, sym_b = open_symbols(symbols_old, "--symbols-old"), open_symbols(symbols_new, "--symbols-new")
    a, b = _scan_one(old, sym_a), _scan_one(new, sym_b)
    d = do_diff(a, b)
    if fmt == "json":
        click.echo(json.dumps(diff_json(a, b, d), indent=2, sort_keys=True))
    else:
        for tag, fs in (("+", d.added), ("-", d.removed)):
            for f in fs:
                click.echo(f"{tag} {f.module} {f.arch} {f.function or '?'} {f.mnemonic} {f.bytes} (rva 0x{f.rva:X})")
        for m in d.modules_added:
            click.echo(f"+ module {m}")
        for m in d.modules_removed:
            click.echo(f"- module {m}")
        click.echo(f"diff: {len(d.added)} added, {len(d.removed)} removed, {len(d.unchanged)} unchanged; "
                   f"modules {len(d.modules_added)} added, {len(d.modules_removed)} removed")
    sys.exit(1 if d.added else 0)


@main.command()
@click.argument("text", nargs=-1)
@click.option("--log", "log", metavar="FILE", help="Read every InstEmul exit of this propolis-server or "
              "sled-agent log (plain text or bunyan JSON, gzip/xz/bzip2 too; '-' reads standard input).")
@click.option("--bits", type=click.Choice(["16", "32", "64"]), default="64", show_default=True)
@click.option("--image", type=click.Path(dir_okay=False), help="Find where these bytes sit in this image.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def decode(text: tuple[str, ...], log: str | None, bits: str, image: str | None, fmt: str) -> None:
    """Decode propolis' InstEmul bytes (the panic line, [243, 110, ...], or hex) and name the routine.

    The first line is the verdict: instruction, routine, source file and library instance from
    the built-in signatures. IMAGE (a flash image or a standalone PE32/TE module) is searched too;
    a damaged IMAGE is an error (exit 2). With --log FILE, every InstEmul exit of the log, one
    verdict per distinct instruction with counts: exit 0 when the log has none, 1 when it has
    some (bytes redacted included), 2 when it cannot be read (docs/propolis.md).
    """
    if (log is None) == (not text):
        raise click.UsageError("give the bytes (TEXT...) or --log FILE, not both" if text
                               else "Missing argument 'TEXT...' (or --log FILE).")
    if log is not None:
        from ovmftool.report.decode_report import decode_log_json, decode_log_text
        from ovmftool.triage.log import find_in_image as log_find, read_log

        root = _load(image) if image else None  # an unreadable image: before the log is read
        lt = read_log(log, int(bits))
        if root is not None:
            log_find(lt, root)
        click.echo(json.dumps(decode_log_json(lt), indent=2, sort_keys=True) if fmt == "json"
                   else decode_log_text(lt), nl=fmt == "json")
        sys.exit(1 if lt.exits else 0)
    from ovmftool.report.decode_report import decode_json, decode_text
    from ovmftool.triage.decode import decode as do_decode, find_in_image, parse_bytes

    t = do_decode(parse_bytes(" ".join(text)), int(bits))
    if image:
        find_in_image(t, _load(image))
    if fmt == "json":
        click.echo(json.dumps(decode_json(t), indent=2, sort_keys=True))
    else:
        click.echo(decode_text(t), nl=False)


@main.command()
@click.option("--edk2", "tree", required=True, type=click.Path(file_okay=False, exists=True), help="EDK II tree.")
@click.option("--dsc", required=True, help="Platform DSC, relative to the tree (e.g. OvmfPkg/OvmfPkgX64.dsc).")
@click.option("-D", "defines", multiple=True, metavar="NAME[=VALUE]", help="As for build -D (NAME alone is TRUE).")
@click.option("--arch", "arches", multiple=True, type=click.Choice(["IA32", "X64"], case_sensitive=False),
              help="Architectures (default: the DSC's SUPPORTED_ARCHITECTURES).")
@click.option("--strategy", type=click.Choice(["auto", "dsc-inf", "unroll"]), default="auto", show_default=True)
@click.option("-o", "--output", "out_dir", required=True, metavar="DIR", callback=_out_dir_parents,
              help="Directory for the series, plan.json and SUMMARY.md (must not exist, or be empty; "
                   "missing parents are created).")
@click.option("--author", default="ovmftool <ovmftool@users.noreply.invalid>", show_default=True)
@click.option("--signoff", default=None, help="Signed-off-by line value (default: the author).")
@click.option("--verify", is_flag=True, help="Apply to a scratch copy, build, scan: fail unless 0 sites remain.")
@click.option("--target", default="DEBUG", show_default=True, help="Build target for --verify.")
@click.option("--before", "before_image", type=click.Path(dir_okay=False, exists=True),
              help="The unpatched build's image for the before count (otherwise --verify builds it).")
@click.option("--scratch", type=click.Path(file_okay=False), help="Where --verify copies the tree (default: TMPDIR).")
def plan(tree, dsc, defines, arches, strategy, out_dir, author, signoff, verify, target, before_image, scratch):
    """Write an EDK II patch series that removes every string port-I/O instruction the tree and DSC build."""
    from pathlib import Path

    from ovmftool.edk2.plan import make_plan
    from ovmftool.edk2.series import check_applies, write_series
    from ovmftool.report.io import commit_output_dir, discard_output_dir, new_output_dir

    defs = {}
    for d in defines:  # as EDK II's build: -D NAME alone defines NAME as TRUE
        k, v = d.split("=", 1) if "=" in d else (d, "TRUE")
        if not k.strip():
            _fail(f"-D {d}: expected NAME or NAME=VALUE")
        defs[k.strip()] = v
    tree_p = Path(tree).resolve()
    out = Path(out_dir).resolve()
    p = make_plan(tree_p, dsc, defs, list(arches) or None, strategy)
    if verify:
        from ovmftool.edk2.verify import check_toolchain

        check_toolchain()  # before anything is written or copied
    tmp = Path(new_output_dir(out_dir, parents=True))
    try:
        series = write_series(p.patches, tmp, author, signoff or author)
        check_applies(series, tree_p)
        doc = p.as_dict()
        doc["series"] = [s.name for s in series]
        doc["command"] = _plan_command(tree, dsc, defs, arches, strategy, author, signoff)
        if verify:
            doc["verification"] = _verify(p, series, tree_p, dsc, defs, target, before_image, scratch, tmp)
        (tmp / "plan.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        (tmp / "SUMMARY.md").write_text(_summary(doc))
        commit_output_dir(str(tmp), out_dir)
    except BaseException:
        discard_output_dir(str(tmp))
        raise
    click.echo((out / "SUMMARY.md").read_text())


def _plan_command(tree, dsc, defs, arches, strategy, author, signoff) -> str:
    parts = ["ovmftool plan --edk2 TREE", f"--dsc {dsc}"] + [f"-D {k}={v}" for k, v in sorted(defs.items())]
    parts += [f"--arch {a.upper()}" for a in arches] + [f"--strategy {strategy}"]
    return " ".join(parts) + " -o DIR"


def _verify(p, series, tree_p, dsc, defs, target, before_image, scratch, tmp) -> dict:
    from pathlib import Path

    from ovmftool.edk2 import verify as V
    from ovmftool.scan.scanner import default_jobs, scan_image

    V.check_toolchain()
    import shutil
    import tempfile

    base = Path(scratch).resolve() if scratch else Path(tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    out = {}
    if before_image:
        before = scan_image(before_image, jobs=default_jobs())
        out["before"] = {"image": before_image, "sites": len(before.findings)}
    else:
        work = V.scratch_copy(tree_p, base)
        try:
            b = V.build(work, dsc, target, p.arches, defs, base / f"{work.name}-build-before.log")
            before = scan_image(str(b.fd), jobs=default_jobs())
            out["before"] = {"sites": len(before.findings), "build_seconds": round(b.seconds)}
        finally:
            shutil.rmtree(work, ignore_errors=True)
    work = V.scratch_copy(tree_p, base)
    try:
        V.apply_series(work, series)
        b = V.build(work, dsc, target, p.arches, defs, base / f"{work.name}-build-after.log")
        after = scan_image(str(b.fd), jobs=default_jobs())
        shutil.copyfile(b.fd, tmp / f"{b.fd.stem}.patched.fd")
        out["after"] = {"sites": len(after.findings), "build_seconds": round(b.seconds),
                        "image": f"{b.fd.stem}.patched.fd", "sha256": after.sha256}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out["target"] = target
    click.echo(f"verify: {out['before']['sites']} sites before, {out['after']['sites']} after", err=True)
    if out["after"]["sites"]:
        raise OvmfToolError(f"verification failed: {out['after']['sites']} string I/O sites remain after the series")
    return out


def _summary(doc: dict) -> str:
    lines = [f"# ovmftool plan: {doc['dsc']} ({', '.join(doc['arches'])})", "",
             f"Strategy: **{doc['strategy']}**", ""]
    lines += [f"- {r}" for r in doc["reasons"]] + [""]
    lines += ["## Series", ""] + [f"- `{s}`" for s in doc["series"]] + [""]
    lines += ["## Modules affected", "",
              f"{len(doc['modules_affected'])} components resolve IoLib to an instance with REP string I/O; each that "
              "links IoLib (directly or through a library) carries the six FIFO routines, one string I/O instruction each.", ""]
    for m in doc["modules_affected"][:200]:
        lines.append(f"- {m['inf']} ({m['arch']}, {m['module_type']}): {m['iolib'].rsplit('/', 1)[-1]} {m['fifo']}")
    lines += ["", "Sites expected to remain: 0", ""]
    if doc.get("other_string_io_sources"):
        lines += ["## Other string I/O in sources", ""] + [f"- {h}" for h in doc["other_string_io_sources"]] + [""]
    lines += ["## Trade-offs", ""] + [f"- {t}" for t in doc["tradeoffs"]] + [""]
    if doc.get("verification"):
        v = doc["verification"]
        lines += ["## Verification", "", f"- target {v['target']}: {v['before']['sites']} sites before, "
                  f"{v['after']['sites']} after (image sha256 {v['after']['sha256']})", ""]
    lines += ["Regenerate with:", "", f"    {doc['command']}", ""]
    return "\n".join(lines)


@main.command("boot-check")
@click.argument("image", type=click.Path(dir_okay=False))
@click.option("--vars", "vars_file", type=click.Path(dir_okay=False, exists=True),
              help="Variable store template (copied, never written). Default: OVMF_VARS*.fd beside IMAGE, "
                   "else a generated empty store of the size IMAGE's flash layout needs.")
@click.option("--machine", type=click.Choice(["q35", "pc"]), default="q35", show_default=True)
@click.option("--timeout", type=click.FloatRange(5, 3600), default=180.0, show_default=True)
@click.option("--hang-after", type=click.FloatRange(1, 3600), default=30.0, show_default=True,
              help="Call the boot hung after this many seconds without new serial or debug-console output "
                   "or newly translated code.")
@click.option("--fail-fast", is_flag=True, help="Stop at the first executed string I/O, as propolis does.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--keep", metavar="DIR", callback=_out_dir, type=click.Path(file_okay=False),
              help="Keep QEMU's logs in DIR (absent or empty; its parent must exist). Default: a temporary "
                   "directory, removed at the end.")
@click.option("--no-count", is_flag=True,
              help="Skip the second boot that counts executions and reads I/O ports.")
def boot_check_cmd(image, vars_file, machine, timeout, hang_after, fail_fast, fmt, keep, no_count):
    """Boot IMAGE under QEMU (TCG) and report every string port-I/O instruction that executed.

    When some did, a second boot logs just the blocks holding them: how often each ran, the
    count it was given and the I/O port. Exit 0: it reached the UEFI shell (or the boot
    manager) and none executed; 1: some did (or --fail-fast stopped at the first); 2: error,
    including a boot that did not finish (hang, reset, QEMU exit, timeout); 143 (129):
    stopped by SIGTERM (SIGHUP), QEMU killed and the work directory removed.
    """
    from pathlib import Path

    from ovmftool.boot.check import Terminated, boot_check, check_bootable, stop_on_signals
    from ovmftool.boot.qemu import qemu_binary
    from ovmftool.boot.varstore import plan_vars
    from ovmftool.report.boot_report import boot_failure, boot_text, terminated_line

    progress = None
    if fmt == "text" and sys.stderr.isatty():
        def progress(t):
            click.echo(f"\rbooting... {t:5.0f} s", nl=False, err=True)
    try:
        with stop_on_signals():
            root = _load(image)
            check_bootable(image, root)
            plan = plan_vars(image, vars_file)  # refusals first: the scan takes a while
            qemu_binary()
            res_scan = _scan_one(image, root=root)
            bc = boot_check(image, root, res_scan, plan, machine, timeout, fail_fast, Path(keep) if keep else None,
                            progress, count=not no_count, hang_after=hang_after)
    except Terminated as t:
        click.echo(("\n" if progress else "") + terminated_line(t, keep), err=True)
        sys.exit(t.exit_code)
    if progress:
        click.echo("", err=True)
    click.echo(json.dumps(bc.as_dict(), indent=2, sort_keys=True) if fmt == "json" else boot_text(bc), nl=fmt == "json")
    failure = boot_failure(bc)
    if failure:
        _fail(failure)
    sys.exit(1 if bc.executed else 0)


@main.command("patch")
@click.argument("image", type=click.Path(dir_okay=False))
@click.option("-o", "--output", metavar="FILE", callback=_out_path,
              help="Patched image to write (never IMAGE itself).")
@click.option("--dry-run", is_flag=True, help="List every planned rewrite; assemble and write nothing.")
@click.option("--allow-unknown", is_flag=True,
              help="Leave sites of unknown shape in place (listed) instead of refusing to write.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--symbols", "symbols_dir", type=click.Path(file_okay=False),
              help="The image's EDK II build directory: names functions, and shows where each module's .text "
                   "ends so IoFifo loops can go into the slack after it instead of growing the module.")
@click.option("-j", "--jobs", type=click.IntRange(1, 64), default=None, help="Scan worker processes.")
def patch_cmd(image, output, dry_run, allow_unknown, fmt, symbols_dir, jobs):
    """Rewrite every string port-I/O instruction of IMAGE into equivalent code, prove it, write OUTPUT.

    Each rewrite is checked by emulation; the output is re-parsed and rescanned before it is
    written (atomically). Exit 0: written (or, with --dry-run, every site has a rewrite) and no
    sites remain; 1: sites refused (nothing written) or left in place by --allow-unknown; 2: error.
    """
    from ovmftool.patch.patcher import patch
    from ovmftool.report.io import write_atomic
    from ovmftool.report.patch_report import patch_text
    from ovmftool.scan.scanner import default_jobs

    if not dry_run and not output:
        _fail("give -o OUTPUT (or --dry-run)")
    if output and os.path.exists(output) and os.path.exists(image) and os.path.samefile(output, image):
        _fail(f"{output} is the input image; patch never modifies its input")
    if output and not os.path.isdir(os.path.dirname(os.path.abspath(output))):
        _fail(f"directory {os.path.dirname(os.path.abspath(output))} does not exist")
    root = _load(image)
    res = patch(image, root, jobs or default_jobs(), allow_unknown, dry_run, symbols_dir)
    if res.output is not None and output:
        write_atomic(output, res.output)
    if fmt == "json":
        doc = res.as_dict()
        doc["written"] = output if res.output is not None and output else None
        click.echo(json.dumps(doc, indent=2, sort_keys=True))
    else:
        text = patch_text(res, dry_run)
        if res.output is not None and output:
            text += f"wrote {output} (sha256 {res.output_sha256})\n"
        elif not dry_run:
            text += "nothing written: refused sites (see above; --allow-unknown leaves them in place)\n"
        click.echo(text, nl=False)
    sys.exit(1 if res.refusals else 0)
