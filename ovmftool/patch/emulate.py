"""Prove a rewrite by emulation: run the original and the rewritten routine under unicorn and
compare everything a caller can observe.

The routine is called as its C prototype says, `IoReadFifoN (Port, Count, Buffer)` /
`IoWriteFifoN (Port, Count, Buffer)` (MS x64 in registers for X64, cdecl on the stack for IA32),
with counts 0, 1, 2 and many, from the module's own memory image (so calls it makes, such as
SevNoRepIo, run too). Port I/O is hooked: every IN returns the next value of a fixed sequence,
every OUT is recorded. Compared: the sequence of port accesses (direction, port, width, value),
the buffer and the caller's stack frame, the non-volatile registers and the stack pointer, the
direction flag, and that the routine returned to its caller.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

# unicorn is imported where it is used (19 ms): only `patch` runs the emulator.

COUNTS = (0, 1, 2, 37)
PORT = 0x510
_BASE = 0x01000000
_STACK, _STACK_SIZE = 0x00200000, 0x10000
_BUF, _BUF_SIZE = 0x00300000, 0x1000
_RET = 0x00500000
# Instructions one call may run: a FIFO routine moving 37 elements (the most the checks ask for)
# runs a few hundred; a routine still running after this many is not one (and with a hook per
# instruction, 200,000 took 10 s over the 40 runs of one patch).
_MAX_INSNS = 20_000
# Port accesses one call may make (a FIFO routine makes `count` of them, at most 37 here): a REP
# INS/OUTS is one instruction to the instruction cap however many times it repeats, so without
# this a mutated count register ran for minutes and recorded gigabytes of accesses.
_MAX_PORTS = 4096
_BUF_PATTERN = bytes((i * 7 + 3) & 0xFF for i in range(_BUF_SIZE))  # the buffer's bytes before each call


@dataclass(frozen=True)
class Run:
    """What one call observably did."""

    ports: tuple
    buffer: bytes
    frame: bytes
    regs: tuple
    df: int
    returned: bool
    error: str | None
    touched: frozenset = frozenset()  # module offsets executed, read or written


def _port_hooks(ports: list[tuple]):
    """unicorn's IN and OUT hooks, recording into `ports`: every IN returns the next value of a
    fixed sequence; both stop the run after _MAX_PORTS accesses."""

    def on_in(uc, port, size, _ud):
        v = (0x5A + 0x11 * len(ports)) & ((1 << (8 * size)) - 1)
        ports.append(("in", port, size, v))
        if len(ports) >= _MAX_PORTS:
            uc.emu_stop()
        return v

    def on_out(uc, port, size, value, _ud):
        ports.append(("out", port, size, value))
        if len(ports) >= _MAX_PORTS:
            uc.emu_stop()

    return on_in, on_out


def _run(mem: bytes, bits: int, entry: int, count: int) -> Run:
    """Call the routine at `entry` of the code `mem` (mapped at _BASE) with `count`."""
    from unicorn import (
        UC_ARCH_X86,
        UC_HOOK_CODE,
        UC_HOOK_INSN,
        UC_HOOK_MEM_READ,
        UC_HOOK_MEM_WRITE,
        UC_MODE_32,
        UC_MODE_64,
        Uc,
        UcError,
    )
    from unicorn import x86_const as X

    uc = Uc(UC_ARCH_X86, UC_MODE_64 if bits == 64 else UC_MODE_32)
    size = (len(mem) + 0xFFF) & ~0xFFF
    uc.mem_map(_BASE, max(size, 0x1000))
    uc.mem_write(_BASE, mem)
    uc.mem_map(_STACK, _STACK_SIZE)
    uc.mem_map(_BUF, _BUF_SIZE)
    uc.mem_map(_RET, 0x1000)
    uc.mem_write(_RET, b"\xf4")  # hlt, never reached: emulation stops at _RET
    uc.mem_write(_BUF, _BUF_PATTERN)
    ports: list[tuple] = []
    on_in, on_out = _port_hooks(ports)

    touched: set[int] = set()
    executed: set[tuple[int, int]] = set()  # (address, size): loops repeat the same few, expanded once below

    def on_code(_uc, addr, size, _ud):
        executed.add((addr, size))

    def on_mem(_uc, _access, addr, size, _value, _ud):
        touched.update(range(addr - _BASE, addr - _BASE + min(size, 64)))

    hi = _BASE + max(size, 0x1000) - 1
    uc.hook_add(UC_HOOK_CODE, on_code, None, _BASE, hi)
    uc.hook_add(UC_HOOK_MEM_READ | UC_HOOK_MEM_WRITE, on_mem, None, _BASE, hi)
    uc.hook_add(UC_HOOK_INSN, on_in, None, 1, 0, X.UC_X86_INS_IN)
    uc.hook_add(UC_HOOK_INSN, on_out, None, 1, 0, X.UC_X86_INS_OUT)
    buf = _BUF + 0x100
    top = _STACK + _STACK_SIZE - 0x100
    if bits == 64:
        nonvol = [
            X.UC_X86_REG_RBX,
            X.UC_X86_REG_RBP,
            X.UC_X86_REG_RSI,
            X.UC_X86_REG_RDI,
            X.UC_X86_REG_R12,
            X.UC_X86_REG_R13,
            X.UC_X86_REG_R14,
            X.UC_X86_REG_R15,
            X.UC_X86_REG_RSP,
        ]
        for i, r in enumerate(nonvol[:-1]):
            uc.reg_write(r, 0x1111111111111111 * (i + 1) & 0xFFFFFFFFFFFFFFFF)
        sp = top - 0x28  # shadow space above the return address
        uc.mem_write(sp, _RET.to_bytes(8, "little"))
        uc.reg_write(X.UC_X86_REG_RSP, sp)
        uc.reg_write(X.UC_X86_REG_RCX, PORT)
        uc.reg_write(X.UC_X86_REG_RDX, count)
        uc.reg_write(X.UC_X86_REG_R8, buf)
        flags_reg = X.UC_X86_REG_EFLAGS
    else:
        nonvol = [X.UC_X86_REG_EBX, X.UC_X86_REG_EBP, X.UC_X86_REG_ESI, X.UC_X86_REG_EDI, X.UC_X86_REG_ESP]
        for i, r in enumerate(nonvol[:-1]):
            uc.reg_write(r, 0x11111111 * (i + 1))
        sp = top - 0x10
        frame = b"".join(v.to_bytes(4, "little") for v in (_RET, PORT, count, buf))
        uc.mem_write(sp, frame)
        uc.reg_write(X.UC_X86_REG_ESP, sp)
        flags_reg = X.UC_X86_REG_EFLAGS
    error = None
    try:
        uc.emu_start(_BASE + entry, _RET, count=_MAX_INSNS)
    except UcError as e:
        error = str(e)
    if len(ports) >= _MAX_PORTS:
        error = f"stopped after {_MAX_PORTS} port accesses"
    for addr, n in executed:  # unicorn reports an undecodable instruction's size as 0xF1F1F1F1: cap at 15
        touched.update(range(addr - _BASE, addr - _BASE + min(n, 15)))
    pc = uc.reg_read(X.UC_X86_REG_RIP if bits == 64 else X.UC_X86_REG_EIP)
    run = Run(
        ports=tuple(ports),
        buffer=bytes(uc.mem_read(_BUF, _BUF_SIZE)),
        frame=bytes(uc.mem_read(top - 0x40, 0x100)),
        regs=tuple(uc.reg_read(r) for r in nonvol),
        df=(uc.reg_read(flags_reg) >> 10) & 1,
        returned=pc == _RET and error is None,
        error=error,
        touched=frozenset(touched),
    )
    # The binding's engine object sits in a reference cycle, so without this every engine (a few MB
    # each, about 100 per patch) lived until the next garbage collection: close it now (uc_close,
    # through the finalizer the binding registers for it).
    close = getattr(uc, "_Uc__finalizer", None)
    if close is not None:
        close()
    return run


def routine_io(name: str) -> tuple[str, int] | None:
    """("in"|"out", width) from a FIFO routine's name (IoReadFifo16, SevIoWriteFifo8, ...)."""
    for d, tag in (("in", "ReadFifo"), ("out", "WriteFifo")):
        if tag in name:
            w = name.split(tag, 1)[1]
            if w in ("8", "16", "32"):
                return d, int(w)
    return None


_C_ENTRY, _C_LOOP = 0x100, 0x800  # canonical placement of a redirected routine and its loop


class Emulator:
    """The emulation of one patch run: the memo of routines compared so far and how many
    emulator runs were made (`runs`)."""

    def __init__(self) -> None:
        self.memo: dict[tuple, list[tuple[tuple[int, ...], bytes | None, bytes | None, list[str]]]] = {}
        self.runs = 0

    def compare(self, original: bytes, rewritten: bytes, bits: int, entry: int, routine: str) -> list[str]:
        """Differences between the two memory images' routine at `entry`, over every count; empty
        when they behave the same. A routine whose calls did not return is a difference too.

        Memoised: every run records the module bytes it executed, read or wrote; a later routine
        whose bytes at those same entry-relative offsets are identical (original and rewritten)
        would run identically, so it gets the recorded answer. The same routine linked into a
        hundred modules is emulated once."""
        return self._compare_memo(original, rewritten, bits, entry, routine)[0]

    def _compare_memo(
        self, original: bytes, rewritten: bytes, bits: int, entry: int, routine: str
    ) -> tuple[list[str], tuple[int, ...]]:
        """`compare`, also returning the entry-relative offsets the runs touched."""
        io = routine_io(routine)
        if io is None:
            return [f"no calling convention known for {routine}"], ()
        key = (bits, routine, original[entry : entry + 16], rewritten[entry : entry + 16])
        for rel, old, new, problems in self.memo.get(key, ()):
            if _at(original, entry, rel) == old and _at(rewritten, entry, rel) == new:
                return list(problems), rel
        problems, touched = _compare(original, rewritten, bits, entry, io[1])
        self.runs += 2 * len(COUNTS)
        rel = tuple(sorted(t - entry for t in touched))
        self.memo.setdefault(key, []).append(
            (rel, _at(original, entry, rel), _at(rewritten, entry, rel), list(problems))
        )
        return problems, rel

    def compare_redirected(
        self,
        original: bytes,
        rewritten: bytes,
        bits: int,
        entry: int,
        length: int,
        loop: int,
        loop_len: int,
        routine: str,
    ) -> list[str]:
        """`compare` for a routine whose entry was turned into `jmp rel32` to a loop elsewhere.

        Both are position-independent, so they are emulated once in a canonical placement (routine
        at one offset, loop at another); the answer holds for this module when the runs touched
        nothing but the routine's and the loop's bytes, and the module's jmp really goes to its loop.
        Otherwise the module's own memory images are emulated."""
        jmp = rewritten[entry : entry + 5]
        if (
            jmp[:1] == b"\xe9"
            and entry + 5 + int.from_bytes(jmp[1:5], "little", signed=True) == loop
            and length <= _C_LOOP - _C_ENTRY
            and loop_len <= 0x400
        ):
            size = _C_LOOP + 0x400
            a, b = bytearray(size), bytearray(size)
            a[_C_ENTRY : _C_ENTRY + length] = original[entry : entry + length]
            b[_C_ENTRY : _C_ENTRY + length] = (
                b"\xe9"
                + (_C_LOOP - _C_ENTRY - 5).to_bytes(4, "little", signed=True)
                + rewritten[entry + 5 : entry + length]
            )
            b[_C_LOOP : _C_LOOP + loop_len] = rewritten[loop : loop + loop_len]
            problems, rel = self._compare_memo(bytes(a), bytes(b), bits, _C_ENTRY, routine)
            inside = set(range(0, length)) | set(range(_C_LOOP - _C_ENTRY, _C_LOOP - _C_ENTRY + loop_len))
            if set(rel) <= inside:
                return problems
        return self.compare(original, rewritten, bits, entry, routine)


def compare(original: bytes, rewritten: bytes, bits: int, entry: int, routine: str) -> list[str]:
    """`Emulator.compare` with a memo of its own (one routine)."""
    return Emulator().compare(original, rewritten, bits, entry, routine)


def compare_redirected(
    original: bytes, rewritten: bytes, bits: int, entry: int, length: int, loop: int, loop_len: int, routine: str
) -> list[str]:
    """`Emulator.compare_redirected` with a memo of its own (one routine)."""
    return Emulator().compare_redirected(original, rewritten, bits, entry, length, loop, loop_len, routine)


def _at(mem: bytes, entry: int, rel: tuple[int, ...]) -> bytes | None:
    out = bytearray()
    for r in rel:
        a = entry + r
        if not 0 <= a < len(mem):
            return None
        out.append(mem[a])
    return bytes(out)


def _compare(original: bytes, rewritten: bytes, bits: int, entry: int, width: int) -> tuple[list[str], set[int]]:
    problems: list[str] = []
    touched: set[int] = set()
    for count in COUNTS:
        a = _run(original, bits, entry, count)
        b = _run(rewritten, bits, entry, count)
        touched |= a.touched | b.touched
        if not a.returned:
            problems.append(f"count {count}: the original routine did not return ({a.error or 'no return'})")
            continue
        expect = count * (width // 8)
        if sum(p[2] for p in a.ports) != expect:
            problems.append(f"count {count}: the original moved {sum(p[2] for p in a.ports)} bytes, expected {expect}")
        for what in ("returned", "ports", "buffer", "frame", "regs", "df"):
            if getattr(a, what) != getattr(b, what):
                problems.append(f"count {count}: {what} differ" + (f" ({b.error})" if what == "returned" else ""))
    return problems, touched


# --- detours (patch.detour): the window and its new code, on randomised states ---------------

_W_CODE, _W_SITE, _W_NEW = 0x0, 0x100000, 0x200000  # canonical places of the window and the detour
_W_CODE_SIZE = 0x400000
_W_BUF, _W_BUF_SIZE = 0x600000, 0x3000  # the pointer starts 3 bytes before (or after) a page boundary
_W_STACK, _W_STACK_SIZE = 0x800000, 0x10000
_W_SENTINEL = 0x00F00000  # a return address nothing maps: a displaced RET ends there
WINDOW_COUNTS = (0, 1, 2, 5, 37)
_GPR64 = ("RAX", "RBX", "RCX", "RDX", "RSI", "RDI", "RBP", "RSP", "R8", "R9", "R10", "R11", "R12", "R13", "R14", "R15")
_GPR32 = ("EAX", "EBX", "ECX", "EDX", "ESI", "EDI", "EBP", "ESP")
_FLAGS_MASK = 0xCD5 | 0x400  # CF PF AF ZF SF OF and DF


@dataclass(frozen=True)
class WindowRun:
    ports: tuple
    regs: tuple
    flags: int
    buffer: bytes
    stack: bytes
    exit: int | None
    error: str | None


def _run_window(code: bytes, new: bytes | None, bits: int, state: dict) -> WindowRun:
    """Run from the window's canonical place until execution leaves the window (and the detour,
    `new`, mapped at _W_NEW when given)."""
    from unicorn import UC_ARCH_X86, UC_HOOK_CODE, UC_HOOK_INSN, UC_MODE_32, UC_MODE_64, Uc, UcError
    from unicorn import x86_const as X

    uc = Uc(UC_ARCH_X86, UC_MODE_64 if bits == 64 else UC_MODE_32)
    uc.mem_map(_W_CODE, _W_CODE_SIZE)
    uc.mem_write(_W_SITE, code)
    inside = [(_W_SITE, _W_SITE + len(code))]
    if new is not None:
        uc.mem_write(_W_NEW, new)
        inside.append((_W_NEW, _W_NEW + len(new)))
    uc.mem_map(_W_BUF, _W_BUF_SIZE)
    uc.mem_write(_W_BUF, _BUF_PATTERN[: _W_BUF_SIZE // 2] * 2)
    uc.mem_map(_W_STACK, _W_STACK_SIZE)
    ports: list[tuple] = []
    left: list[int] = []
    on_in, on_out = _port_hooks(ports)

    def on_code(_uc, addr, _size, _ud):
        if not any(lo <= addr < hi for lo, hi in inside):
            left.append(addr)
            _uc.emu_stop()

    uc.hook_add(UC_HOOK_CODE, on_code, None, 1, 0)
    uc.hook_add(UC_HOOK_INSN, on_in, None, 1, 0, X.UC_X86_INS_IN)
    uc.hook_add(UC_HOOK_INSN, on_out, None, 1, 0, X.UC_X86_INS_OUT)
    names = _GPR64 if bits == 64 else _GPR32
    regs = [getattr(X, f"UC_X86_REG_{n}") for n in names]
    for n, r in zip(names, regs):
        uc.reg_write(r, state[n])
    sp = state["RSP" if bits == 64 else "ESP"]
    uc.mem_write(sp, _W_SENTINEL.to_bytes(bits // 8, "little"))
    uc.reg_write(X.UC_X86_REG_EFLAGS, state["FLAGS"])
    error = None
    try:
        uc.emu_start(_W_SITE, _W_SENTINEL + 0x1000, count=_MAX_INSNS)
    except UcError as e:
        pc = uc.reg_read(X.UC_X86_REG_RIP if bits == 64 else X.UC_X86_REG_EIP)
        if any(lo <= pc < hi for lo, hi in inside):
            error = str(e)
        else:
            left.append(pc)  # left for code nothing maps (the sentinel of a displaced RET)
    if len(ports) >= _MAX_PORTS:
        error = f"stopped after {_MAX_PORTS} port accesses"
    final_sp = uc.reg_read(regs[names.index("RSP" if bits == 64 else "ESP")])
    lo = max(min(final_sp, sp), _W_STACK)
    run = WindowRun(
        tuple(ports),
        tuple(uc.reg_read(r) for r in regs),
        uc.reg_read(X.UC_X86_REG_EFLAGS) & _FLAGS_MASK,
        bytes(uc.mem_read(_W_BUF, _W_BUF_SIZE)),
        bytes(uc.mem_read(lo, _W_STACK + _W_STACK_SIZE - lo)),
        left[0] if left else None,
        error,
    )
    close = getattr(uc, "_Uc__finalizer", None)
    if close is not None:
        close()
    return run


def _window_states(bits: int, direction: str, rep: bool):
    """Randomised register states (seeded: the same every run): counts 0 to 37 for REP, DF 0 and
    1, the pointer 3 bytes from a page boundary it crosses, the port in DX."""

    rng = random.Random(0x510)
    mask = (1 << bits) - 1
    for count in WINDOW_COUNTS if rep else (1,):
        for df in (0, 1):
            st = {n: rng.getrandbits(bits) & mask for n in (_GPR64 if bits == 64 else _GPR32)}
            ptr = _W_BUF + 0x1000 + (2 if df else -3)
            st["RCX" if bits == 64 else "ECX"] = count if rep else st["RCX" if bits == 64 else "ECX"]
            st["RDX" if bits == 64 else "EDX"] = (st["RDX" if bits == 64 else "EDX"] & ~0xFFFF) | 0x510
            st[("RDI" if bits == 64 else "EDI") if direction == "in" else ("RSI" if bits == 64 else "ESI")] = ptr
            st["RSP" if bits == 64 else "ESP"] = _W_STACK + _W_STACK_SIZE - 0x800
            st["FLAGS"] = 0x2 | (rng.getrandbits(12) & 0x8D5) | (df << 10)
            yield count, df, st


def compare_window(window: bytes, site_new: bytes, detour: bytes, bits: int, direction: str, rep: bool) -> list[str]:
    """Differences between the window's original code and its detour (the window's new bytes
    jumping to `detour`, both built for the canonical places: `window` at _W_SITE, `detour` at
    _W_NEW) over randomised states: port accesses, registers, flags, buffer, the caller's stack,
    where execution leaves. Empty when they agree in every state."""
    problems = []
    for count, df, st in _window_states(bits, direction, rep):
        a = _run_window(window, None, bits, st)
        b = _run_window(site_new, detour, bits, st)
        where = f"count {count}, DF {df}"
        if a.error or a.exit is None:
            problems.append(f"{where}: the original did not leave the window ({a.error or 'no exit'})")
            continue
        for what in ("exit", "ports", "regs", "flags", "buffer", "stack", "error"):
            if getattr(a, what) != getattr(b, what):
                problems.append(f"{where}: {what} differ")
    return problems
