"""DSC `!if` expressions are evaluated by a small parser, never by Python's eval."""

import pytest

from ovmftool.edk2.dsc import _truth
from ovmftool.edk2.expr import evaluate


@pytest.mark.parametrize(
    "expr,defines,want",
    [
        ("$(SECURE_BOOT_ENABLE) == TRUE", {"SECURE_BOOT_ENABLE": "TRUE"}, True),
        ("$(SECURE_BOOT_ENABLE) == TRUE", {}, False),  # undefined macro: empty
        ("$(FD_SIZE_IN_KB) == 4096", {"FD_SIZE_IN_KB": "4096"}, True),
        ("$(FD_SIZE_IN_KB) == 1024 OR $(FD_SIZE_IN_KB) == 2048", {"FD_SIZE_IN_KB": "2048"}, True),
        ("$(SMM_REQUIRE) == FALSE && $(TPM2_ENABLE) == TRUE", {"SMM_REQUIRE": "FALSE", "TPM2_ENABLE": "TRUE"}, True),
        ("NOT ($(A) == TRUE)", {"A": "TRUE"}, False),
        ("!$(A)", {"A": "FALSE"}, True),
        ('"$(TOOL_CHAIN_TAG)" != "XCODE5"', {"TOOL_CHAIN_TAG": "GCC5"}, True),
        ("$(A) EQ 0x10", {"A": "16"}, True),
        ("$(A) > 3", {"A": "4"}, True),
        ("$(CUSTOM_STACK_CHECK_LIB) == DYNAMIC", {"CUSTOM_STACK_CHECK_LIB": "DYNAMIC"}, True),  # bare words: 2025.02
        ("$(CUSTOM_STACK_CHECK_LIB) == DYNAMIC", {"CUSTOM_STACK_CHECK_LIB": "STATIC"}, False),
        ("gEfiMdeModulePkgTokenSpaceGuid.PcdFoo == TRUE", {}, False),  # a PCD's value is not known
        ("$(A) == TRUE", {"A": "__import__('os').system('false')"}, False),  # a value is never code
        ("(" * 5000 + "TRUE" + ")" * 5000, {}, False),
        ("TRUE AND", {}, False),
        ("TRUE )", {}, False),
        ("$(A) == 1", {"A": "01"}, True),  # a leading zero is decimal (int(_, 0) raised: internal error)
        ("$(A) == 1", {"A": "9" * 5000}, False),  # more digits than Python converts
    ],
)
def test_dsc_expressions(expr, defines, want):
    assert _truth(expr, defines) is want


def test_no_eval_in_the_planner():
    from pathlib import Path

    src = Path(__file__).resolve().parent.parent / "ovmftool"
    assert [p.name for p in src.rglob("*.py") if "eval(" in p.read_text().replace("evaluate(", "")] == []
    assert evaluate("TRUE") and not evaluate("")


def test_library_class_precedence_is_the_builds(tmp_path):
    """A component's own mapping first, then the arch before the module type (BaseTools' lookup):
    [LibraryClasses.X64] wins over [LibraryClasses.common.DXE_DRIVER] for an X64 DXE driver."""
    from ovmftool.edk2.dsc import read_dsc

    (tmp_path / "P.dsc").write_text(
        "[Defines]\n  OUTPUT_DIRECTORY = Build/P\n"
        "[LibraryClasses]\n  IoLib|Common.inf\n"
        "[LibraryClasses.common.DXE_DRIVER]\n  IoLib|CommonDxe.inf\n"
        "[LibraryClasses.X64]\n  IoLib|X64.inf\n"
        "[LibraryClasses.X64.PEIM]\n  IoLib|X64Peim.inf\n"
        "[Components]\n  A/A.inf {\n    <LibraryClasses>\n      IoLib|Own.inf\n  }\n"
    )
    d = read_dsc(tmp_path, "P.dsc", {})
    assert d.resolve("IoLib", "X64", "DXE_DRIVER") == "X64.inf"
    assert d.resolve("IoLib", "X64", "PEIM") == "X64Peim.inf"
    assert d.resolve("IoLib", "IA32", "DXE_DRIVER") == "CommonDxe.inf"
    assert d.resolve("IoLib", "IA32", "PEIM") == "Common.inf"
    assert d.resolve("IoLib", "X64", "DXE_DRIVER", "A/A.inf") == "Own.inf"
