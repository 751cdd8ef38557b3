"""lief as an independent reader of PE32/PE32+ headers: every module of every corpus image and
stored build, read by ovmftool's model and by lief, must agree on the headers (format, machine,
entry point, image base and size, alignments, subsystem), every section header and the debug
directory's path. lief is never on the scan path (its import costs about a second); here it
checks the model. Known differences are named and counted, never silently skipped:

- TE images: lief does not read TE (the model does); they are counted, not compared;
- relocations: lief drops a base-relocation block whose page RVA is 0 (and when that block comes
  first, it reads no relocation at all), where the model keeps it (it relocates the first page):
  lief's count is then the model's less that block's, or 0; otherwise the two are equal.
"""

from __future__ import annotations

import json

import pytest

from ovmftool.model.parser import read_image
from ovmftool.ops.modules import iter_modules
from tests.conftest import CORPUS, CORPUS_IMAGES

lief = pytest.importorskip("lief", reason="lief is in the test extras")
pytestmark = pytest.mark.slow


def _firmware() -> list[str]:
    out = [str(p) for k, p in sorted(CORPUS_IMAGES.items()) if "_VARS" not in k and "QEMU_EFI" not in k]
    for d in sorted((CORPUS / "builds").iterdir()):
        meta = d / "build.json"
        if meta.is_file():
            fw = d / json.loads(meta.read_text()).get("firmware", "OVMF_CODE.fd")
            if fw.is_file():
                out.append(str(fw))
    return out


def _model(img) -> dict:
    return {
        "format": img.format,
        "machine": img.machine_code,
        "entry": img.entry_rva,
        "base": img.image_base,
        "size": img.size_of_image,
        "align": (img.section_alignment, img.file_alignment),
        "subsystem": img.subsystem,
        "headers": img.size_of_headers,
        "sections": [
            (s.name, s.rva, s.virtual_size, s.raw_offset, s.raw_size, s.characteristics) for s in img.sections
        ],
        "debug": img.debug_path,
    }


def _lief(pe) -> dict:
    oh = pe.optional_header
    cv = [d for d in pe.debug if isinstance(d, lief.PE.CodeViewPDB)]
    return {
        "format": "PE32+" if oh.magic == lief.PE.PE_TYPE.PE32_PLUS else "PE32",
        "machine": int(pe.header.machine),
        "entry": oh.addressof_entrypoint,
        "base": oh.imagebase,
        "size": oh.sizeof_image,
        "align": (oh.section_alignment, oh.file_alignment),
        "subsystem": int(oh.subsystem),
        "headers": oh.sizeof_headers,
        "sections": [
            (s.name, s.virtual_address, s.virtual_size, s.pointerto_raw_data, s.sizeof_raw_data, s.characteristics)
            for s in pe.sections
        ],
        "debug": cv[0].filename if cv else None,
    }


def test_lief_reads_every_pe_module_as_the_model_does():
    compared = te = reloc_fewer = 0
    differ: list[str] = []
    for path in _firmware():
        root = read_image(path)
        for m in iter_modules(root):
            img = m.image
            if img.format == "TE":
                te += 1
                continue
            pe = lief.PE.parse(list(img.raw))
            assert pe is not None, (path, m.name)
            ours, theirs = _model(img), _lief(pe)
            for k in ours:
                if ours[k] != theirs[k]:
                    differ.append(f"{path} {m.name} {k}: model {ours[k]!r}, lief {theirs[k]!r}")
            # type ABSOLUTE (0) is padding: the model keeps none
            n_lief = sum(
                1 for r in pe.relocations for e in r.entries if e.type != lief.PE.RelocationEntry.BASE_TYPES.ABS
            )
            n_model = len(img.relocations)
            page0 = sum(1 for rva, _ in img.relocations if rva < 0x1000)
            # equal, or page 0's block (and, when it comes first, every block after it) missing in lief
            ok = n_lief == n_model or (page0 > 0 and n_lief in (n_model - page0, 0))
            assert ok, (path, m.name, n_model, n_lief, page0)
            reloc_fewer += n_model > n_lief
            compared += 1
    assert differ == [], differ[:10]
    assert compared > 3000  # every module of every image (OVMF links no TE module: test_te.py makes its own)
    print(
        f"lief differential: {compared} PE modules agree; {te} TE modules (lief reads no TE); "
        f"{reloc_fewer} where lief counts fewer relocations (blocks at page RVA 0)"
    )
