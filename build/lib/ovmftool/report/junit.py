"""JUnit XML output (`scan --format junit`): one test case per module, a failure per module with sites."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from ovmftool.scan.scanner import ScanResult


def junit_xml(results: list[ScanResult]) -> str:
    """A <testsuites> document with one <testsuite> per image."""
    suites = ET.Element("testsuites", name="ovmftool scan")
    total_t = total_f = 0
    for r in results:
        by_mod: dict[tuple, list] = {}
        for f in r.findings:
            by_mod.setdefault((f.guid, f.arch, f.volume), []).append(f)
        suite = ET.SubElement(suites, "testsuite", name=r.path, tests=str(len(r.modules)),
                              failures=str(sum(1 for m in r.modules if m.sites)), errors="0", skipped="0")
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
        total_t += len(r.modules)
        total_f += sum(1 for m in r.modules if m.sites)
    suites.set("tests", str(total_t))
    suites.set("failures", str(total_f))
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"
