"""Command-line interface: a thin layer over the library.

Exit codes: 0 success (and for scan-like commands: nothing found), 1 findings, 2 error.
Every error is one line on stderr; no traceback unless OVMFTOOL_DEBUG=1.
"""

from __future__ import annotations

import gc
import sys

import click

from ovmftool import __version__
from ovmftool.errors import OvmfToolError, one_line
from ovmftool.model.parser import read_image
from ovmftool.outputs import check_not_input
from ovmftool.report.console import Group as _Group
from ovmftool.report.console import Seconds as _Seconds
from ovmftool.report.console import echo as _echo
from ovmftool.report.console import emit as _emit
from ovmftool.report.console import fail as _fail
from ovmftool.report.console import out_dir as _out_dir
from ovmftool.report.console import out_dir_parents as _out_dir_parents
from ovmftool.report.console import out_file as _out_file
from ovmftool.report.console import out_path as _out_path
from ovmftool.report.console import progress_printer

# Each command imports its own library modules inside its function: importing every command's
# modules up front costs ~0.15 s on each run (`ovmftool --help`: 0.19 s; with all imports: 0.36 s,
# median of 3 on this 2-core machine), which every scan in a CI loop would pay.

# Start-up and `scan` build large object graphs and free little: collecting young objects every
# 700 allocations cost a scan ~15 ms (4% of it) to free ~170 objects. Other commands
# make large short-lived buffers (patch: peak RSS 480 MB instead of 236 MB): default thresholds.
_GC_DEFAULT = gc.get_threshold()
gc.set_threshold(50_000)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ovmftool")
@click.pass_context
def main(ctx: click.Context) -> None:
    """Audit and patch OVMF (EDK II) firmware images for string port-I/O (INS/OUTS)."""
    if ctx.invoked_subcommand != "scan":
        gc.set_threshold(*_GC_DEFAULT)


@main.command()
@click.argument("image", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--modules", "modules_only", is_flag=True, help="List only the module table.")
@click.option(
    "-o",
    "--output",
    metavar="FILE|-",
    callback=_out_file,
    help="Write to FILE (atomically; checked before any work) instead of stdout.",
)
def info(image: str, fmt: str, modules_only: bool, output: str | None) -> None:
    """Print the structure of IMAGE: volumes, files, sections, modules, damage.

    Exits 2 (after printing what could be parsed) when the image is damaged.
    """
    from ovmftool.model.node import all_problems
    from ovmftool.report.info_report import damage_line, render_info

    check_not_input(output, [image], "info")
    root = read_image(image)
    _emit(render_info(root, fmt, modules_only), output)
    if probs := all_problems(root):
        _fail(damage_line(image, probs))


@main.command()
@click.argument("image", type=click.Path(dir_okay=False))
@click.option(
    "-o",
    "--output",
    "out_dir",
    required=True,
    metavar="DIR",
    callback=_out_dir,
    help="Directory to create (must not exist, or be empty; its parent must exist).",
)
@click.option("--allow-damaged", is_flag=True, help="Extract what parsed even if the image is damaged.")
def extract(image: str, out_dir: str, allow_damaged: bool) -> None:
    """Write every module of IMAGE as NAME_GUID.efi|.te plus manifest.json into a directory.

    Exit 0: written, image undamaged. With --allow-damaged a damaged image still exits 2, after
    writing what parsed and listing (here and in manifest.json's `skipped`) what could not be.
    """
    from ovmftool.model.node import all_problems
    from ovmftool.ops.extract import write_extraction
    from ovmftool.report.extraction import extraction_text, manifest_text
    from ovmftool.report.info_report import damage_line

    root = read_image(image)
    probs = all_problems(root)
    if probs and not allow_damaged:
        _fail(damage_line(image, probs, more=False) + " (use --allow-damaged to extract anyway)")
    body = write_extraction(root, out_dir, lambda b: manifest_text(root, b))
    _echo(extraction_text(body, out_dir), nl=False)
    if probs:
        _fail(f"{damage_line(image, probs)}; extracted what parsed, {len(body['skipped'])} part(s) skipped")


@main.command()
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option(
    "--format", "fmt", type=click.Choice(["text", "json", "sarif", "junit"]), default="text", show_default=True
)
@click.option(
    "--symbols",
    "symbols_dir",
    type=click.Path(file_okay=False),
    help="EDK II build directory whose <ARCH>/*.debug (or .map) files name functions.",
)
@click.option(
    "-j",
    "--jobs",
    type=click.IntRange(1, 64),
    default=None,
    help="Worker processes: several images are spread over them (default: one per image, up to the "
    "CPU count, at most 4); one image, its modules (default: 1 with the native walk).",
)
@click.option("--no-cache", is_flag=True, help="Neither read nor write the result cache (docs/scan.md).")
@click.option(
    "-o",
    "--output",
    metavar="FILE|-",
    callback=_out_file,
    help="Write to FILE (atomically; checked before any work) instead of stdout.",
)
@click.option(
    "--sarif-root",
    type=click.Path(file_okay=False, exists=True),
    help="SARIF: image URIs are relative to this directory (%SRCROOT%; default: the working directory).",
)
def scan(
    images: tuple[str, ...],
    fmt: str,
    symbols_dir: str | None,
    jobs: int | None,
    no_cache: bool,
    output: str | None,
    sarif_root: str | None,
) -> None:
    """Find every string port-I/O instruction (INS/OUTS) in the code of each IMAGE (a file, a
    directory: its *.fd, *.fv, *.rom, *.bin, *.efi, *.te files, or a quoted glob pattern).

    Exit 0: checked, no sites; 1: sites found; 2: error (an input could not be read, is damaged,
    or holds no code, e.g. a variable store). With several images: the worst of theirs; each
    keeps its place in the output, errors included.
    """
    from ovmftool.report.scan_report import error_lines, render
    from ovmftool.scan.cache import default_cache
    from ovmftool.scan.inputs import expand_inputs
    from ovmftool.scan.scanner import scan_paths, worst_exit

    inputs = expand_inputs(images)
    check_not_input(output, inputs, "scan")
    outcomes = scan_paths(inputs, symbols_dir, jobs, default_cache(not no_cache))
    text = render(outcomes, fmt, sarif_root)
    if text:
        _emit(text, output)
    for line in error_lines(outcomes):
        _echo(line, err=True)
    sys.exit(worst_exit(outcomes))


@main.command()
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option(
    "-o", "--output", required=True, metavar="FILE|-", callback=_out_file, help="Baseline file to write (`-`: stdout)."
)
@click.option("--symbols", "symbols_dir", type=click.Path(file_okay=False))
def baseline(images: tuple[str, ...], output: str, symbols_dir: str | None) -> None:
    """Record today's string I/O sites of each image (files, directories, patterns) as accepted."""
    from ovmftool.report.document import to_json
    from ovmftool.report.gate_report import baseline_doc, baseline_line
    from ovmftool.scan.cache import default_cache
    from ovmftool.scan.inputs import expand_inputs
    from ovmftool.scan.scanner import ScanFailure, ScanResult, default_jobs, scan_paths

    inputs = expand_inputs(images)
    check_not_input(output, inputs, "baseline")
    outcomes = scan_paths(inputs, symbols_dir, default_jobs(len(inputs)), default_cache())
    failed = [o for o in outcomes if isinstance(o, ScanFailure) and o.exit_code]
    if failed:  # nothing written: a baseline must not silently leave out an image
        _fail(failed[0].message + (f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""))
    for o in outcomes:
        if isinstance(o, ScanFailure):  # skipped (verdict 0): said, not recorded
            _echo(f"skipped: {one_line(o.message)}", err=True)
    results = [o for o in outcomes if isinstance(o, ScanResult)]
    _emit(to_json(baseline_doc(results[0] if len(results) == 1 else results)), output)
    _echo(baseline_line(results, output), err=True)


@main.command()
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--baseline", "baseline_file", type=click.Path(dir_okay=False), help="From `ovmftool baseline`.")
@click.option("--waivers", "waivers_file", type=click.Path(dir_okay=False), help="JSON waivers (docs/ci.md).")
@click.option("--symbols", "symbols_dir", type=click.Path(file_okay=False))
def check(
    images: tuple[str, ...], baseline_file: str | None, waivers_file: str | None, symbols_dir: str | None
) -> None:
    """Fail (exit 1) only for sites that are neither in the image's baseline entry nor waived."""
    from ovmftool.gate.baseline import check_images
    from ovmftool.report.gate_report import check_exit, check_report
    from ovmftool.scan.inputs import expand_inputs

    checks = check_images(expand_inputs(images), baseline_file, waivers_file, symbols_dir)
    if len(checks) == 1 and check_exit(checks) == 2:
        _fail(checks[0].message)
    for line, err in check_report(checks):
        _echo(line, err=err)
    sys.exit(check_exit(checks))


@main.command()
@click.argument("old", type=click.Path(dir_okay=False))
@click.argument("new", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--symbols-old", type=click.Path(file_okay=False))
@click.option("--symbols-new", type=click.Path(file_okay=False))
def diff(old: str, new: str, fmt: str, symbols_old: str | None, symbols_new: str | None) -> None:
    """Sites added, removed and unchanged from OLD to NEW (exit 1 if any were added)."""
    from ovmftool.gate.diff import diff_images
    from ovmftool.report.gate_report import render_diff

    a, b, d = diff_images(old, new, symbols_old, symbols_new)
    _echo(render_diff(a, b, d, fmt), nl=False)
    sys.exit(1 if d.added else 0)


@main.command()
@click.argument("text", nargs=-1)
@click.option(
    "--log",
    "log",
    metavar="FILE",
    help="Read every InstEmul exit of this propolis-server or "
    "sled-agent log (plain text or bunyan JSON, gzip/xz/bzip2 too; '-' reads standard input).",
)
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
        raise click.UsageError(
            "give the bytes (TEXT...) or --log FILE, not both"
            if text
            else "Missing argument 'TEXT...' (or --log FILE)."
        )
    from ovmftool.report.decode_report import render
    from ovmftool.triage.decode import triage
    from ovmftool.triage.log import triage_log

    t = triage_log(log, int(bits), image) if log is not None else triage(" ".join(text), int(bits), image)
    _echo(render(t, fmt), nl=False)
    sys.exit(1 if log is not None and t.exits else 0)


@main.command()
@click.option("--edk2", "tree", required=True, type=click.Path(file_okay=False, exists=True), help="EDK II tree.")
@click.option("--dsc", required=True, help="Platform DSC, relative to the tree (e.g. OvmfPkg/OvmfPkgX64.dsc).")
@click.option("-D", "defines", multiple=True, metavar="NAME[=VALUE]", help="As for build -D (NAME alone is TRUE).")
@click.option(
    "--arch",
    "arches",
    multiple=True,
    type=click.Choice(["IA32", "X64"], case_sensitive=False),
    help="Architectures (default: the DSC's SUPPORTED_ARCHITECTURES).",
)
@click.option("--strategy", type=click.Choice(["auto", "dsc-inf", "unroll"]), default="auto", show_default=True)
@click.option(
    "-o",
    "--output",
    "out_dir",
    required=True,
    metavar="DIR",
    callback=_out_dir_parents,
    help="Directory for the series, plan.json and SUMMARY.md (must not exist, or be empty; "
    "missing parents are created).",
)
@click.option("--author", default="ovmftool <ovmftool@users.noreply.invalid>", show_default=True)
@click.option("--signoff", default=None, help="Signed-off-by line value (default: the author).")
@click.option(
    "--verify",
    is_flag=True,
    help="Apply to a scratch copy, build, scan, boot: fail unless 0 sites remain and none executes.",
)
@click.option(
    "--target",
    type=click.Choice(["DEBUG", "RELEASE", "NOOPT"]),
    help="Build target for --verify.  [default: DEBUG]",
)
@click.option(
    "--before",
    "before_image",
    type=click.Path(dir_okay=False, exists=True),
    help="The unpatched build's image for the before count (otherwise --verify builds it).",
)
@click.option(
    "--measure-dsc-switch",
    is_flag=True,
    help="With --verify: also build the tree with just its DSC switched to the non-Sev IoLib, and count.",
)
@click.option("--no-boot", is_flag=True, help="With --verify: skip the boot of the patched build.")
@click.option("--scratch", type=click.Path(file_okay=False), help="Where --verify copies the tree (default: TMPDIR).")
def plan(
    tree,
    dsc,
    defines,
    arches,
    strategy,
    out_dir,
    author,
    signoff,
    verify,
    target,
    before_image,
    measure_dsc_switch,
    no_boot,
    scratch,
):
    """Write an EDK II patch series that removes every string port-I/O instruction the tree and DSC build."""
    from ovmftool.edk2.output import write_plan
    from ovmftool.report.plan_report import plan_files, plan_summary

    if (target or before_image or measure_dsc_switch or no_boot or scratch) and not verify:
        _fail("--target, --before, --scratch, --measure-dsc-switch and --no-boot go with --verify")
    verification = (
        dict(
            target=target or "DEBUG",
            before_image=before_image,
            scratch=scratch,
            dsc_switch=measure_dsc_switch,
            boot=not no_boot,
            say=lambda m: _echo(m, err=True),
        )
        if verify
        else None
    )
    doc = write_plan(tree, dsc, defines, arches, strategy, out_dir, author, signoff, plan_files, verification)
    _echo(plan_summary(doc))  # what SUMMARY.md says (it reads no header field)


@main.command("boot-check")
@click.argument("image", type=click.Path(dir_okay=False))
@click.option(
    "--vars",
    "vars_file",
    type=click.Path(dir_okay=False, exists=True),
    help="Variable store template (copied, never written). Default: OVMF_VARS*.fd beside IMAGE, "
    "else a generated empty store of the size IMAGE's flash layout needs.",
)
@click.option(
    "--machine",
    type=click.Choice(["q35", "pc", "microvm"]),
    help="QEMU machine. Default: microvm for a microvm firmware (MicrovmX64), else q35.",
)
@click.option("--timeout", type=_Seconds(5, 3600), metavar="SECONDS", default=180.0, show_default=True)
@click.option(
    "--hang-after",
    type=_Seconds(1, 3600),
    metavar="SECONDS",
    default=30.0,
    show_default=True,
    help="Call the boot hung after this many seconds without new serial or debug-console output "
    "or newly translated code.",
)
@click.option("--fail-fast", is_flag=True, help="Stop at the first executed string I/O, as propolis does.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option(
    "--keep",
    metavar="DIR",
    callback=_out_dir,
    type=click.Path(file_okay=False),
    help="Keep QEMU's logs in DIR (absent or empty; its parent must exist). Default: a temporary "
    "directory, removed at the end.",
)
@click.option(
    "--no-count", is_flag=True, help="Do not count executions or read I/O ports (without the plugin: no second boot)."
)
def boot_check_cmd(image, vars_file, machine, timeout, hang_after, fail_fast, fmt, keep, no_count):
    """Boot IMAGE under QEMU (TCG) and report every string port-I/O instruction that executed.

    With the TCG plugin built (corpus/scripts/qemu-plugin.sh) the same boot counts how often
    each ran, the units it moved and its I/O port; without it a second boot does. Exit 0: it reached the UEFI shell
    (or the boot
    manager) and none executed; 1: some did (or --fail-fast stopped at the first); 2: error,
    including a boot that did not finish (hang, reset, QEMU exit, timeout); 143 (129):
    stopped by SIGTERM (SIGHUP), QEMU killed and the work directory removed.
    """
    from pathlib import Path

    from ovmftool.boot.check import Terminated, boot_image, stop_on_signals
    from ovmftool.report.boot_report import boot_error_json, boot_failure, progress_line, render_boot, terminated_line

    progress = progress_printer(progress_line) if fmt == "text" else None
    try:
        with stop_on_signals():
            bc = boot_image(
                image,
                vars_file,
                machine,
                timeout,
                fail_fast,
                Path(keep) if keep else None,
                progress,
                count=not no_count,
                hang_after=hang_after,
            )
    except OvmfToolError as e:  # JSON is written on every exit: here its error form
        _echo(boot_error_json(image, str(e)) if fmt == "json" else "", nl=False)
        raise
    except Terminated as t:
        _echo(("\n" if progress else "") + terminated_line(t, keep), err=True)
        sys.exit(t.exit_code)
    if progress:
        _echo("", err=True)
    _echo(render_boot(bc, fmt), nl=False)
    if failure := boot_failure(bc):
        _fail(failure)
    sys.exit(1 if bc.executed else 0)


@main.command("patch")
@click.argument("image", type=click.Path(dir_okay=False))
@click.option("-o", "--output", metavar="FILE", callback=_out_path, help="Patched image to write (never IMAGE itself).")
@click.option("--dry-run", is_flag=True, help="List every planned rewrite; assemble and write nothing.")
@click.option(
    "--allow-unknown", is_flag=True, help="Leave sites of unknown shape in place (listed) instead of refusing to write."
)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option(
    "--symbols",
    "symbols_dir",
    type=click.Path(file_okay=False),
    help="The image's EDK II build directory: names functions, and shows where each module's .text "
    "ends so IoFifo loops can go into the slack after it instead of growing the module.",
)
@click.option("-j", "--jobs", type=click.IntRange(1, 64), default=None, help="Scan worker processes.")
def patch_cmd(image, output, dry_run, allow_unknown, fmt, symbols_dir, jobs):
    """Rewrite every string port-I/O instruction of IMAGE into equivalent code, prove it, write OUTPUT.

    Each rewrite is checked by emulation; the output is re-parsed and rescanned before it is
    written (atomically). Exit 0: written (or, with --dry-run, every site has a rewrite) and no
    sites remain; 1: sites refused (nothing written) or left in place by --allow-unknown; 2: error.
    """
    from ovmftool.outputs import check_patch_output, write_atomic
    from ovmftool.patch.patcher import patch
    from ovmftool.report.patch_report import render_patch
    from ovmftool.scan.scanner import default_jobs

    check_patch_output(image, output, dry_run)
    res = patch(image, read_image(image), jobs or default_jobs(), allow_unknown, dry_run, symbols_dir)
    written = output if res.output is not None and output else None
    if written:
        write_atomic(written, res.output)
    _echo(render_patch(res, fmt, dry_run, written), nl=False)
    sys.exit(1 if res.refusals else 0)
