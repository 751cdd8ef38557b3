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


def _scan_one(image: str, symbols_dir: str | None = None, jobs: int | None = None, root=None):
    """Parse (unless `root` is the parsed image) and scan one image; damaged images are errors."""
    from ovmftool.model.node import all_problems
    from ovmftool.scan.scanner import default_jobs, scan_image

    root = _load(image) if root is None else root
    probs = all_problems(root)
    if probs:
        raise OvmfToolError(f"{image}: damaged image: {probs[0]}")
    return scan_image(image, symbols_dir, jobs or default_jobs(), root=root)


@main.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["text", "json", "sarif", "junit"]), default="text",
              show_default=True)
@click.option("--symbols", "symbols_dir", type=click.Path(file_okay=False),
              help="EDK II build directory whose <ARCH>/*.debug (or .map) files name functions.")
@click.option("-j", "--jobs", type=click.IntRange(1, 64), default=None,
              help="Worker processes (default: 1 with the native walk, else CPU count, at most 4).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write to a file instead of stdout.")
def scan(images: tuple[str, ...], fmt: str, symbols_dir: str | None, jobs: int | None, output: str | None) -> None:
    """Find every string port-I/O instruction (INS/OUTS) in the code of each IMAGE.

    Exit 0: no sites; 1: sites found; 2: error (an image could not be read or is damaged).
    """
    from ovmftool.report.scan_report import scan_json, scan_text

    results, errors = [], []
    for image in images:
        try:
            results.append(_scan_one(image, symbols_dir, jobs))
        except OvmfToolError as e:
            errors.append(str(e))
    if results:
        if fmt == "json":
            docs = [scan_json(r) for r in results]
            text = json.dumps(docs[0] if len(images) == 1 else docs, indent=2, sort_keys=True) + "\n"
        elif fmt == "sarif":
            from ovmftool.report.sarif import sarif_log

            text = json.dumps(sarif_log(results), indent=2, sort_keys=True) + "\n"
        elif fmt == "junit":
            from ovmftool.report.junit import junit_xml

            text = junit_xml(results)
        else:
            text = "".join(scan_text(r) for r in results)
        _emit(text, output)
    for e in errors:
        click.echo(f"ovmftool: error: {e}", err=True)
    sites = sum(len(r.findings) for r in results)
    sys.exit(2 if errors else (1 if sites else 0))


@main.command()
@click.argument("image", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Baseline file to write.")
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
    from ovmftool.gate.diff import diff as do_diff

    a, b = _scan_one(old, symbols_old), _scan_one(new, symbols_new)
    d = do_diff(a, b)

    def row(f):
        return {"module": f.module, "guid": f.guid, "arch": f.arch, "function": f.function,
                "mnemonic": f.mnemonic, "bytes": f.bytes, "rva": f.rva, "volume": f.volume}

    if fmt == "json":
        doc = {"schema_version": "ovmftool.diff/1", "old": {"path": old, "sha256": a.sha256},
               "new": {"path": new, "sha256": b.sha256}, "added": [row(f) for f in d.added],
               "removed": [row(f) for f in d.removed], "unchanged": len(d.unchanged),
               "modules_added": d.modules_added, "modules_removed": d.modules_removed}
        click.echo(json.dumps(doc, indent=2, sort_keys=True))
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
@click.argument("text", nargs=-1, required=True)
@click.option("--bits", type=click.Choice(["16", "32", "64"]), default="64", show_default=True)
@click.option("--image", type=click.Path(dir_okay=False), help="Find where these bytes sit in this image.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def decode(text: tuple[str, ...], bits: str, image: str | None, fmt: str) -> None:
    """Decode propolis' InstEmul bytes (the panic line, [243, 110, ...], or hex) and explain them."""
    from dataclasses import asdict

    from ovmftool.triage.decode import decode as do_decode, find_in_image, parse_bytes

    t = do_decode(parse_bytes(" ".join(text)), int(bits))
    if image:
        t.matches = find_in_image(t, _load(image))
    if fmt == "json":
        doc = {"schema_version": "ovmftool.decode/1", "bytes": t.data.hex(), "bits": t.bits,
               "instructions": [asdict(i) for i in t.instructions], "explanation": t.explanation,
               "matches": [asdict(m) for m in t.matches] if image else None}
        click.echo(json.dumps(doc, indent=2, sort_keys=True))
        return
    click.echo(f"bytes ({len(t.data)}): {t.data.hex(' ')}")
    for i, ins in enumerate(t.instructions):
        mark = "=>" if i == 0 else "  "
        click.echo(f"{mark} +{ins.offset:<3} {ins.bytes:<20} {ins.mnemonic} {ins.operands}".rstrip())
    click.echo("")
    click.echo(t.explanation)
    if image:
        click.echo("")
        if not t.matches:
            click.echo(f"no code in {image} matches these bytes")
        for m in t.matches:
            where = f"fd 0x{m.fd_offset:X}" if m.fd_offset is not None else "compressed"
            click.echo(f"match {m.matched}/{len(t.data)} bytes: {m.module} {m.arch} rva 0x{m.rva:X} ({where}, "
                       f"{m.volume}) in {m.function or '?'}" + (f" [{m.function_source}]" if m.function else "")
                       + ("" if m.is_site else " (not at a scanned site)"))


@main.command()
@click.option("--edk2", "tree", required=True, type=click.Path(file_okay=False, exists=True), help="EDK II tree.")
@click.option("--dsc", required=True, help="Platform DSC, relative to the tree (e.g. OvmfPkg/OvmfPkgX64.dsc).")
@click.option("-D", "defines", multiple=True, metavar="NAME=VALUE", help="As for build -D.")
@click.option("--arch", "arches", multiple=True, type=click.Choice(["IA32", "X64"], case_sensitive=False),
              help="Architectures (default: the DSC's SUPPORTED_ARCHITECTURES).")
@click.option("--strategy", type=click.Choice(["auto", "dsc-inf", "unroll"]), default="auto", show_default=True)
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Directory for the series, plan.json and SUMMARY.md (must not exist, or be empty).")
@click.option("--author", default="ovmftool <ovmftool@users.noreply.invalid>", show_default=True)
@click.option("--signoff", default=None, help="Signed-off-by line value (default: the author).")
@click.option("--verify", is_flag=True, help="Apply to a scratch copy, build, scan: fail unless 0 sites remain.")
@click.option("--target", default="DEBUG", show_default=True, help="Build target for --verify.")
@click.option("--before", "before_image", type=click.Path(dir_okay=False, exists=True),
              help="The unpatched build's image for the before count (otherwise --verify builds it).")
@click.option("--scratch", type=click.Path(file_okay=False), help="Where --verify copies the tree (default: TMPDIR).")
def plan(tree, dsc, defines, arches, strategy, out_dir, author, signoff, verify, target, before_image, scratch):
    """Write an EDK II patch series that removes every string port-I/O instruction the tree and DSC build."""
    import os
    import shutil
    import tempfile
    from pathlib import Path

    from ovmftool.edk2.plan import make_plan
    from ovmftool.edk2.series import check_applies, write_series

    defs = {}
    for d in defines:
        if "=" not in d:
            _fail(f"-D {d}: expected NAME=VALUE")
        k, v = d.split("=", 1)
        defs[k] = v
    tree_p = Path(tree).resolve()
    out = Path(out_dir).resolve()
    if out.exists() and any(out.iterdir()):
        _fail(f"output directory {out} exists and is not empty")
    p = make_plan(tree_p, dsc, defs, list(arches) or None, strategy)
    if verify:
        from ovmftool.edk2.verify import check_toolchain

        check_toolchain()  # before anything is written or copied
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".ovmftool-plan-", dir=out.parent))
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
        if out.exists():
            out.rmdir()
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
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
              help="Variable store template (copied, never written). Default: OVMF_VARS*.fd beside IMAGE.")
@click.option("--machine", type=click.Choice(["q35", "pc"]), default="q35", show_default=True)
@click.option("--timeout", type=click.FloatRange(5, 3600), default=180.0, show_default=True)
@click.option("--fail-fast", is_flag=True, help="Stop at the first executed string I/O, as propolis does.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--keep", type=click.Path(file_okay=False), help="Keep QEMU's logs in this directory.")
@click.option("--no-count", is_flag=True,
              help="Skip the second boot that counts executions and reads I/O ports.")
def boot_check_cmd(image, vars_file, machine, timeout, fail_fast, fmt, keep, no_count):
    """Boot IMAGE under QEMU (TCG) and report every string port-I/O instruction that executed.

    When some did, a second boot logs just the blocks holding them: how often each ran, the
    count it was given and the I/O port. Exit 0: none executed; 1: some did; 2: error.
    """
    from pathlib import Path

    from ovmftool.boot.check import boot_check

    root = _load(image)
    res_scan = _scan_one(image, root=root)
    vf = Path(vars_file) if vars_file else _sibling_vars(image)
    progress = None
    if fmt == "text" and sys.stderr.isatty():
        def progress(t):
            click.echo(f"\rbooting... {t:5.0f} s", nl=False, err=True)
    bc = boot_check(image, root, res_scan, vf, machine, timeout, fail_fast, Path(keep) if keep else None, progress,
                    count=not no_count)
    if progress:
        click.echo("", err=True)
    if fmt == "json":
        click.echo(json.dumps(bc.as_dict(), indent=2, sort_keys=True))
    else:
        click.echo(f"{image}: boot ended: {bc.ended} after {bc.seconds:.1f} s")
        for e in bc.executed:
            where = (f"{e.module} rva 0x{e.rva:X} in {e.function or '?'} ({e.mapped_by})" if e.module
                     else ("candidates: " + ", ".join(e.candidates) if e.candidates else "unmapped"))
            first = "  <= first: propolis without DecodeAssist stops here" if e.order == 0 else ""
            runs = ""
            if e.executions is not None:
                port = f"port 0x{e.port:X}" if e.port is not None else (
                    "ports " + ",".join(f"0x{p:X}" for p in e.ports) if e.ports else "port ?")
                units = f", {e.units} units" if e.units is not None else ""
                runs = f"  [{port}, {e.executions}x{units}]"
            click.echo(f"  0x{e.address:X}  {e.mnemonic:<10} {e.bytes:<8} {where}{runs}{first}")
        click.echo(f"boot-check: {len(bc.executed)} string I/O instruction(s) executed"
                   + ("" if bc.counted or not bc.executed else " (not counted: the second boot was skipped or "
                                                                  "ran differently)"))
    sys.exit(1 if bc.executed else 0)


def _sibling_vars(image: str):
    """The variable store that ships beside a code image (OVMF_CODE_4M.fd -> OVMF_VARS_4M.fd)."""
    from pathlib import Path

    p = Path(image)
    names = [p.name.replace("CODE", "VARS")] + (["OVMF_VARS_4M.fd"] if "4M" in p.name else []) + ["OVMF_VARS.fd"]
    for n in names:
        c = p.with_name(n.split(".secboot")[0].split(".ms")[0] if "VARS" in n else n)
        if c.is_file() and c != p:
            return c
    _fail(f"no variable store beside {image} (looked for {', '.join(dict.fromkeys(names))}); give --vars")


@main.command("patch")
@click.argument("image", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Patched image to write (never IMAGE itself).")
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
