"""JUnit XML output (`scan --format junit`): one test suite per input, in the order given; one test
case per module, a failure per module with sites; an input that could not be scanned is a suite
with one test case holding an <error>, a file a directory brought in that holds nothing to check
one holding <skipped>.

The document is valid against both schemas CI report readers follow: the Apache Ant JUnit XSD
(every suite has `package`, `id`, `timestamp`, `hostname`, `time`, `properties`, `system-out` and
`system-err`; <testsuites> has no attributes) and Jenkins' junit-10.xsd (times with at most three
decimals). Times are what this run spent: a module the result cache served took nearly none.
"""

from __future__ import annotations

import datetime as dt
import socket
import xml.etree.ElementTree as ET

from ovmftool.errors import printable
from ovmftool.report.scan_notes import scan_notes
from ovmftool.scan.scanner import ScanFailure, ScanResult, ScanSkipped


def _secs(t: float) -> str:
    return f"{max(t, 0.0):.3f}"


def _suite(
    suites: ET.Element,
    index: int,
    name: str,
    stamp: str,
    host: str,
    *,
    tests: int,
    failures: int,
    errors: int,
    skipped: int,
    seconds: float,
) -> ET.Element:
    return ET.SubElement(
        suites,
        "testsuite",
        name=name,
        package="ovmftool.scan",
        id=str(index),
        timestamp=stamp,
        hostname=host,
        tests=str(tests),
        failures=str(failures),
        errors=str(errors),
        skipped=str(skipped),
        time=_secs(seconds),
    )


def _close(suite: ET.Element, out: str = "") -> None:
    ET.SubElement(suite, "system-out").text = out
    ET.SubElement(suite, "system-err").text = ""


def _result_suite(suites: ET.Element, index: int, r: ScanResult, stamp: str, host: str) -> None:
    by_mod: dict[tuple, list] = {}
    for f in r.findings:
        by_mod.setdefault((f.guid, f.arch, f.volume), []).append(f)
    failures = sum(1 for m in r.modules if m.sites)
    suite = _suite(
        suites,
        index,
        printable(r.path),
        stamp,
        host,
        tests=len(r.modules),
        failures=failures,
        errors=0,
        skipped=0,
        seconds=r.seconds,
    )
    ET.SubElement(ET.SubElement(suite, "properties"), "property", name="sha256", value=r.sha256)
    times = r.module_seconds if len(r.module_seconds) == len(r.modules) else [0.0] * len(r.modules)
    for m, t in zip(r.modules, times):
        case = ET.SubElement(
            suite, "testcase", classname=f"{m.volume}", name=f"{m.name} {m.guid} {m.arch}", time=_secs(t)
        )
        sites = by_mod.get((m.guid, m.arch, m.volume), [])
        if sites:
            lines = [
                f"rva 0x{f.rva:06X} {f.mnemonic:<10} {f.bytes:<8} {f.function or '?'} "
                f"[{f.function_source}]{' reachable' if f.reachable else ''}"
                for f in sites
            ]
            fail = ET.SubElement(
                case, "failure", type="StringPortIo", message=f"{len(sites)} string port-I/O instruction(s) in {m.name}"
            )
            fail.text = "\n".join(lines)
    _close(suite, "".join(n + "\n" for n in scan_notes(r)))


def _other_suite(suites: ET.Element, index: int, o: ScanFailure, stamp: str, host: str) -> None:
    skip = isinstance(o, ScanSkipped)
    suite = _suite(
        suites,
        index,
        printable(o.path),
        stamp,
        host,
        tests=1,
        failures=0,
        errors=0 if skip else 1,
        skipped=1 if skip else 0,
        seconds=0.0,
    )
    ET.SubElement(suite, "properties")
    case = ET.SubElement(
        suite, "testcase", classname="ovmftool.scan", name=f"scan {printable(o.path)}", time=_secs(0.0)
    )
    if skip:
        ET.SubElement(case, "skipped", message=o.message)
    else:
        err = ET.SubElement(case, "error", type="ScanError", message=o.message)
        err.text = o.message
    _close(suite)


def junit_xml(outcomes: list[ScanResult | ScanFailure], now: dt.datetime | None = None, host: str | None = None) -> str:
    """A <testsuites> document with one <testsuite> per input. `now` and `host` stamp every suite
    (default: the current UTC time, this machine's name)."""
    stamp = (now or dt.datetime.now(dt.timezone.utc)).strftime("%Y-%m-%dT%H:%M:%S")
    host = host or socket.gethostname() or "localhost"
    suites = ET.Element("testsuites")
    for i, o in enumerate(outcomes):
        if isinstance(o, ScanResult):
            _result_suite(suites, i, o, stamp, host)
        else:
            _other_suite(suites, i, o, stamp, host)
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"
