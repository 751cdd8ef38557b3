"""boot-check in one boot with the TCG plugin (ovmftool/boot/plugin): the same result as the two
boots (translation log, then a counting boot), the fallback when the plugin is missing or
refused, and the plugin's code dump."""

import json
import shutil
import struct

import jsonschema
import pytest
from click.testing import CliRunner

from ovmftool.boot import plugin
from ovmftool.cli import main
from tests.conftest import CORPUS_IMAGES, ROOT

SCHEMA = json.loads((ROOT / "docs" / "schema" / "boot-check-1.json").read_text())
IMAGE = CORPUS_IMAGES["images/debian-2022.11/OVMF_CODE_4M.fd"]

needs_qemu = pytest.mark.skipif(
    shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86 is installed by .ci/run"
)


@pytest.fixture(scope="module")
def _built_for_user():
    """The plugin, built for the installed QEMU into the user's cache (what
    corpus/scripts/qemu-plugin.sh does; nothing when it is there). Module scope: before
    conftest points XDG_CACHE_HOME at an empty directory for each test."""
    return plugin.build()


@pytest.fixture
def built(_built_for_user):
    """The plugin, installed into this test's own (otherwise empty) cache directory."""
    return install_into_test_cache(_built_for_user)


def install_into_test_cache(so):
    dest = plugin.cache_dir() / so.parent.name / so.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(so, dest)
    return dest


def _boot(*args):
    r = CliRunner().invoke(main, ["boot-check", "--format", "json", "--timeout", "240", *map(str, args)])
    assert r.exit_code in (0, 1), r.output
    doc = json.loads(r.stdout)
    jsonschema.validate(doc, SCHEMA)
    return r.exit_code, doc


@needs_qemu
def test_build_is_keyed_by_qemu_version_and_source(built):
    version = plugin.qemu_version()
    assert built == plugin.plugin_path() == plugin.cache_dir() / plugin.key(version) / "strio.so"
    assert built.read_bytes()[:4] == b"\x7fELF"
    assert plugin.build() == built  # idempotent: nothing rebuilt
    assert plugin.key(version).startswith("qemu-" + version.split()[0])


@needs_qemu
def test_one_boot_equals_two_boots(built, monkeypatch):
    code1, one = _boot(IMAGE)
    monkeypatch.setenv("OVMFTOOL_BOOT_PLUGIN", "0")
    code2, two = _boot(IMAGE)
    assert code1 == code2 == 1 and one["verdict"] == two["verdict"] == "shell"
    assert one["counted"] and two["counted"]
    assert one["notes"] == two["notes"] and not any("two boots" in n for n in one["notes"])  # forced: no note
    # the same sites, in the same order, mapped the same way, with the same ports, executions,
    # iterations and units
    assert len(one["executed"]) == len(two["executed"]) >= 10
    assert one["executed"] == two["executed"]
    assert {e["port"] for e in one["executed"]} == {0x511}
    assert all(e["executions"] == 2 and e["units"] == 8 for e in one["executed"])


@needs_qemu
def test_fail_fast_in_one_boot(built):
    code, doc = _boot("--fail-fast", IMAGE)
    assert code == 1 and doc["verdict"] == "fail-fast" and not doc["counted"]
    first = doc["first"]
    assert (first["module"], first["mnemonic"], first["mapped_by"]) == ("PlatformPei", "rep insb", "xip")
    assert first["executions"] is None and doc["stopped_at"]["source"] == "cpu"
    assert not any("two boots" in n for n in doc["notes"])


@needs_qemu
def test_without_the_plugin_two_boots_and_a_note(tmp_path, monkeypatch):
    # no plugin built, and none can be built at first use (no qemu-plugin.h here: boot-check
    # fetches nothing itself)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(plugin, "_local_header", lambda _version: None)
    assert plugin.plugin_path() is None
    code, doc = _boot("--fail-fast", IMAGE)
    assert code == 1 and doc["verdict"] == "fail-fast" and doc["first"]["module"] == "PlatformPei"
    assert any("TCG plugin could not be built" in n and "qemu-plugin.sh" in n for n in doc["notes"]), doc["notes"]


@needs_qemu
def test_a_plugin_qemu_refuses_falls_back_to_two_boots(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    bogus = plugin.cache_dir() / plugin.key(plugin.qemu_version()) / "strio.so"
    bogus.parent.mkdir(parents=True)
    bogus.write_bytes(b"not an ELF object")
    code, doc = _boot("--fail-fast", IMAGE)
    assert code == 1 and doc["verdict"] == "fail-fast" and doc["first"]["module"] == "PlatformPei"
    assert any("TCG plugin did not load" in n for n in doc["notes"]), doc["notes"]


def _record(va: int, insns: list[bytes]) -> bytes:
    body = struct.pack("<QH", va, len(insns)) + bytes(len(i) for i in insns) + b"".join(insns)
    return body + struct.pack("<I", len(body) + 4)


def test_code_dump_reads_forward_and_from_the_end(tmp_path):
    f = tmp_path / "code.bin"
    f.write_bytes(_record(0x1000, [b"\x90", b"\xf3\x6c", b"\xc3"]) + _record(0xFFFFFFF0, [b"\xeb\xfe"]))
    assert list(plugin.iter_blocks(f)) == [
        (0x1000, [(0x1000, b"\x90"), (0x1001, b"\xf3\x6c"), (0x1003, b"\xc3")]),
        (0xFFFFFFF0, [(0xFFFFFFF0, b"\xeb\xfe")]),
    ]
    assert plugin.last_block(f) == [(0xFFFFFFF0, b"\xeb\xfe")]
    f.write_bytes(f.read_bytes()[:-3])  # cut short (QEMU killed mid-write): the whole records only
    assert [va for va, _ in plugin.iter_blocks(f)] == [0x1000] and plugin.last_block(f) == []
