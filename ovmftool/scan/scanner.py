"""`scan`: every string port-I/O instruction in a firmware image's code, attributed.

The scan's public interface, gathered from the files that do each job:

- `records`: what a scan produces (`Finding`, `Caller`, `ModuleSummary`, `ScanResult`,
  `ScanFailure`, `ScanSkipped`, `Found`) and what a module's bytes decide (`ModuleAnalysis`);
- `modulecode`: one module's code (ranges, signature matches, roots, code map), made once per
  image and shared by scan, patch, boot-check and decode (`module_code`, `function_label`);
- `analysis`: one module's analysis (`analyse_module`, `scan_module`, `code_map`), the tree era,
  the reset vector's code (`scan_blobs`);
- `verdict`: the rules that make "no sites" mean "checked and clean" (`check_scannable`,
  `unread_parts`, `unexecutable_modules`, `codeless_modules`);
- `execute`: running scans of one image (`scan_image`, `scan_checked`) and of several
  (`scan_paths`, `scan_inputs`) over worker processes and the result cache;
- `codec`: the result cache's JSON codec.
"""

from __future__ import annotations

from ovmftool.scan.analysis import (
    MAX_SCAN_MEMORY,
    analyse_module,
    code_map,
    containing_function,
    scan_blobs,
    scan_module,
    tree_era,
)
from ovmftool.scan.execute import default_jobs, scan_checked, scan_image, scan_inputs, scan_paths
from ovmftool.scan.modulecode import ModuleCode, exec_ranges, function_label, module_code, pointer_roots
from ovmftool.scan.records import (
    Caller,
    FdRegion,
    Finding,
    Found,
    ModuleAnalysis,
    ModuleKey,
    ModuleSummary,
    ScanFailure,
    ScanResult,
    ScanSkipped,
    SiteFacts,
    SiteSignature,
    plain,
    worst_exit,
)
from ovmftool.scan.verdict import (
    check_scannable,
    codeless_modules,
    no_code_hint,
    open_symbols,
    read_lazy_structures,
    unexecutable_modules,
    unread_parts,
)

__all__ = [
    "MAX_SCAN_MEMORY",
    "ModuleCode",
    "Caller",
    "FdRegion",
    "Finding",
    "Found",
    "ModuleAnalysis",
    "ModuleKey",
    "ModuleSummary",
    "ScanFailure",
    "ScanResult",
    "ScanSkipped",
    "SiteFacts",
    "SiteSignature",
    "analyse_module",
    "check_scannable",
    "code_map",
    "codeless_modules",
    "containing_function",
    "default_jobs",
    "exec_ranges",
    "function_label",
    "module_code",
    "no_code_hint",
    "open_symbols",
    "plain",
    "pointer_roots",
    "read_lazy_structures",
    "scan_blobs",
    "scan_checked",
    "scan_image",
    "scan_inputs",
    "scan_module",
    "scan_paths",
    "tree_era",
    "unexecutable_modules",
    "unread_parts",
    "worst_exit",
]
