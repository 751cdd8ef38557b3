"""JUnit XML output (`scan --format junit`): one test suite per input, in the order given; one test
case per module, a failure per module with sites; an input that could not be scanned is a suite
with one test case holding an <error>."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from ovmftool.scan.scanner import ScanFailure, ScanResult, ScanSkipped


def _result_suite(suites: ET.Element, r: ScanResult) -> tuple[int, int]:
    by_mod: dict[tuple, list] = {}
    for f in r.findings:
        by_mod.setdefault((f.guid, f.arch, f.volume), []).append(f)
    failures = sum(1 for m in r.modules if m.sites)
    suite = ET.SubElement(suites, "testsuite", name=r.path, tests=str(len(r.modules)),
                          failures=str(failures), errors="0", skipped="0")
    ET.SubElement(ET.SubElement(suite, "properties"), "property", name="sha256", value=r.sha256)
    for m in r.modules:
        case = ET.SubElement(suite, "testcase", classname=f"{m.volume}", name=f"{m.name} {m.guid} {m.arch}")
        sites = by_mod.get((m.guid, m.arch, m.volume), [])
        if sites:
            lines = [f"rva 0x{f.rva:06X} {f.mnemonic:<10} {f.bytes:<8} {f.function or '?'} "
                     f"[{f.function_source}]{' reachable' if f.reachable else ''}" for f in sites]
            fail = ET.SubElement(case, "failure", type="StringPortIo",
                                 message=f"{len(sites)} string port-I/O instruction(s) in {m.name}")
            fail.text = "\n".join(lines)
    return len(r.modules), failures


def _failure_suite(suites: ET.Element, f: ScanFailure) -> None:
    suite = ET.SubElement(suites, "testsuite", name=f.path, tests="1", failures="0", errors="1", skipped="0")
    case = ET.SubElement(suite, "testcase", classname="ovmftool.scan", name=f"scan {f.path}")
    err = ET.SubElement(case, "error", type="ScanError", message=f.message)
    err.text = f.message


def junit_xml(outcomes: list[ScanResult | ScanFailure]) -> str:
    """A <testsuites> document with one <testsuite> per input."""
    suites = ET.Element("testsuites", name="ovmftool scan")
    total_t = total_f = total_e = 0
    for o in outcomes:
        if isinstance(o, ScanResult):
            t, fl = _result_suite(suites, o)
            total_t += t
            total_f += fl
        elif isinstance(o, ScanSkipped):
            suite = ET.SubElement(suites, "testsuite", name=o.path, tests="1", failures="0", errors="0", skipped="1")
            case = ET.SubElement(suite, "testcase", classname="ovmftool.scan", name=f"scan {o.path}")
            ET.SubElement(case, "skipped", message=o.message)
            total_t += 1
        else:
            _failure_suite(suites, o)
            total_t += 1
            total_e += 1
    suites.set("tests", str(total_t))
    suites.set("failures", str(total_f))
    suites.set("errors", str(total_e))
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"
