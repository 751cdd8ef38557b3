"""Encoders for encapsulated section data: the inverse of `codecs`, used when a patched module
has to go back into a compressed section.

EDK II's LZMA sections use the ".lzma alone" header LzmaCompress writes: 5 property bytes
(lc/lp/pb and dictionary size), then the u64 decoded size. The re-encoded stream keeps the
original stream's properties (read from its header), so the firmware's decoder sees the same
parameters; the encoder's effort (match finder, nice length) is not part of the format and is
chosen for speed first, with EDK II's own level-5 effort as the fallback when space is tight.
"""

from __future__ import annotations

import lzma
import os
import queue
import threading
from collections.abc import Callable

from ovmftool.errors import DecodeError, OvmfToolError
from ovmftool.model import structs as S
from ovmftool.model.codecs import LzmaStream, x86_convert
from ovmftool.model.limits import Limits

# uefi_firmware's compressor (a C extension) and brotli are imported by the encoders that use them:
# most images need neither.

# Encoder effort levels, fastest first; the assembler takes the first whose output fits. "edk2" is
# what LzmaEncProps_Init's level 5 selects (normal mode, fb 32, bt4, mc 32), the level EDK II's
# LzmaCompress uses. The faster levels search a dictionary of at most `dict_cap` bytes: the stream
# still carries the original header (a decoder given a larger dictionary than the encoder used
# decodes the same), and liblzma's match finders take about 7.5 times the dictionary in memory
# (16 MiB, OVMF's usual, is about 120 MB; 4 MiB about 30 MB).
MIB = 1 << 20
LZMA_EFFORTS: dict[str, dict[str, int | None]] = {
    "fast": {"mode": lzma.MODE_FAST, "nice_len": 8, "mf": lzma.MF_HC3, "depth": 0, "dict_cap": 4 * MIB},
    "tight": {"mode": lzma.MODE_FAST, "nice_len": 32, "mf": lzma.MF_HC4, "depth": 0, "dict_cap": 16 * MIB},
    "edk2": {"mode": lzma.MODE_NORMAL, "nice_len": 32, "mf": lzma.MF_BT4, "depth": 32, "dict_cap": None},
}


class EncodeError(OvmfToolError):
    """Section data could not be re-encoded."""


def lzma_props(old_stream: bytes, size: int | None = None) -> dict[str, int]:
    """lc, lp, pb and dictionary size from an ".lzma alone" header.

    With `size` (of the data to encode), the dictionary is no larger than that data needs (the
    next power of two, at least 4 KiB): the stream decodes the same under the header's larger
    dictionary (no match can reach further back than the data), and liblzma's encoder refuses
    dictionaries over 1.5 GiB and allocates several times the dictionary it is given."""
    if len(old_stream) < S.LZMA_HEADER.size:
        raise EncodeError("LZMA stream shorter than its header")
    p = old_stream[0]
    if p >= 9 * 5 * 5:
        raise EncodeError(f"LZMA properties byte 0x{p:02X} is invalid")
    lc, rest = p % 9, p // 9
    lp, pb = rest % 5, rest // 5
    if lc + lp > 4:
        raise EncodeError(f"LZMA properties lc={lc} lp={lp} (lc + lp > 4) cannot be encoded by liblzma")
    dict_size = S.LZMA_DICTIONARY_SIZE.get(old_stream)
    if size is not None:
        dict_size = min(dict_size, 1 << max(size - 1, 1).bit_length())
    return {"lc": lc, "lp": lp, "pb": pb, "dict_size": max(dict_size, 4096)}


_PIECE = 1 << 20  # bytes fed to the encoder at a time (the proof decodes each piece meanwhile)


class _Proof:
    """Decodes the stream the encoder writes, piece by piece in a thread while it is written (the
    decoder, like the encoder, releases the GIL: the two run on two cores), with the section decoder
    the parser uses (`codecs.LzmaStream`), and compares it with the data: the stream, with the
    header that will be written, decodes to exactly the data or the encoding fails."""

    def __init__(self, header: bytes, data: bytes) -> None:
        self.header, self.data = header, data
        self.pieces: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self.problem: str | None = None
        self.thread = threading.Thread(target=self._run, name="ovmftool-lzma-proof", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        ended = False  # the writer's end mark (None) was taken
        try:  # the lowest CPU priority (Linux: per thread): the proof takes what the encoder and
            # the emulation running beside it leave of the two cores, instead of slowing them
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except (AttributeError, OSError):
            pass
        try:
            dec = LzmaStream(self.header, Limits(), "the re-encoded stream")
            skip, pos = S.LZMA_HEADER.size, 0  # liblzma's own header: replaced by `header`
            while (piece := self.pieces.get()) is not None:
                if skip:
                    piece, skip = piece[skip:], max(0, skip - len(piece))
                out = dec.feed(piece)
                if out != self.data[pos : pos + len(out)]:
                    raise DecodeError(f"decodes to other bytes at offset 0x{pos:X}", "")
                pos += len(out)
            ended = True
            dec.end()
        except Exception as e:  # noqa: BLE001 - reported by close()
            self.problem = str(e).strip() or type(e).__name__
            while not ended:  # let the writer finish
                ended = self.pieces.get() is None

    def put(self, piece: bytes) -> None:
        if piece:
            self.pieces.put(piece)

    def close(self) -> None:
        self.pieces.put(None)
        self.thread.join()
        if self.problem:
            raise EncodeError(f"the re-encoded LZMA stream failed its proof: {self.problem}")


def encode_lzma(data: bytes, old_stream: bytes, effort: str = "fast") -> bytes:
    """LZMA-compress `data` with the properties of `old_stream`, in EDK II's header format; the
    stream is proven to decode to `data` (`_Proof`) before it is returned (so `PROVEN`)."""
    level = dict(LZMA_EFFORTS[effort])
    cap = level.pop("dict_cap")
    f = dict(lzma_props(old_stream, len(data)), id=lzma.FILTER_LZMA1, **level)
    if cap is not None:
        f["dict_size"] = min(int(f["dict_size"] or 0), cap)
    # liblzma writes "size unknown" (all ones) and an end marker; EDK II's decoder reads the size
    # from the header (and accepts the end marker), so the header written has the real size.
    header = bytes(old_stream[0 : S.LZMA_PROPERTIES_SIZE]) + len(data).to_bytes(8, "little")
    try:
        comp = lzma.LZMACompressor(format=lzma.FORMAT_ALONE, filters=[f])
    except lzma.LZMAError as e:
        raise EncodeError(
            f"LZMA encoder refused lc={f['lc']} lp={f['lp']} pb={f['pb']} dictionary 0x{f['dict_size']:X} ({e})"
        ) from None
    proof = _Proof(header, data)
    out = bytearray()
    view = memoryview(data)
    try:
        for i in range(0, len(data), _PIECE):
            piece = comp.compress(view[i : i + _PIECE])
            out += piece
            proof.put(piece)
        piece = comp.flush()
        out += piece
        proof.put(piece)
    finally:
        proof.close()
    out[0 : S.LZMA_HEADER.size] = header
    return bytes(out)


def encode_lzma_f86(data: bytes, old_stream: bytes, effort: str = "fast") -> bytes:
    """LZMA with the x86 BCJ filter applied first (EDK II's LZMA-F86 sections)."""
    return encode_lzma(bytes(x86_convert(bytearray(data), encoding=True)), old_stream, effort)


def _efi(data: bytes, old_stream: bytes, effort: str = "fast") -> bytes:
    from uefi_firmware import efi_compressor

    try:
        return bytes(efi_compressor.EfiCompress(data, len(data)))
    except Exception as e:  # the extension raises bare Exceptions
        raise EncodeError(f"EFI compression failed ({e})") from None


def _tiano(data: bytes, old_stream: bytes, effort: str = "fast") -> bytes:
    from uefi_firmware import efi_compressor

    try:
        return bytes(efi_compressor.TianoCompress(data, len(data)))
    except Exception as e:
        raise EncodeError(f"Tiano compression failed ({e})") from None


def _brotli(data: bytes, old_stream: bytes, effort: str = "fast") -> bytes:
    import brotli

    scratch = S.BROTLI_HEADER.unpack_from(old_stream)[1] if len(old_stream) >= S.BROTLI_HEADER.size else 0
    return S.BROTLI_HEADER.pack(len(data), scratch) + bytes(brotli.compress(data, quality=9, lgwin=22))


Encoder = Callable[..., bytes]
GUIDED_ENCODERS: dict[str, Encoder] = {
    S.LZMA_GUID: encode_lzma,
    S.LZMA_F86_GUID: encode_lzma_f86,
    S.TIANO_GUID: _tiano,
    S.BROTLI_GUID: _brotli,
}
COMPRESSION_ENCODERS: dict[int, Encoder] = {1: _efi}
# Encoders whose output is proven, as it is written, to decode to their input with the parser's
# own decoder: the re-parse of an assembled image takes the decoded bytes instead of decoding again.
PROVEN: frozenset[Encoder] = frozenset({encode_lzma})
