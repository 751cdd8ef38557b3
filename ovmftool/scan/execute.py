"""Running scans: one image (`scan_image`, `scan_checked` with the verdict rules), its modules
over worker processes, several inputs (`scan_paths`: identical files once, skipped files,
workers per image) and the result cache's lookups."""

from __future__ import annotations

import ctypes
import gc
import hashlib
import os
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any, cast

from ovmftool.errors import NothingToCheck, NoVolume, OvmfToolError
from ovmftool.model.binary import BinaryFile
from ovmftool.model.flash import FlashImage
from ovmftool.model.parser import MAX_IMAGE_SIZE, read_image
from ovmftool.ops.modules import Module, iter_code_blobs, iter_modules
from ovmftool.scan import cache as C
from ovmftool.scan.analysis import (
    MAX_SCAN_MEMORY,
    analyse_checked,
    place_analysis,
    scan_blobs,
    tree_era,
)
from ovmftool.scan.cache import ImageEntry, ResultCache, module_key
from ovmftool.scan.codec import (
    analysis_from_payload,
    analysis_payload,
    result_from_payload,
    result_payload,
)
from ovmftool.scan.codemap import native_available
from ovmftool.scan.records import (
    Found,
    ModuleAnalysis,
    ScanFailure,
    ScanResult,
    ScanSkipped,
)
from ovmftool.scan.symbols import BuildSymbols
from ovmftool.scan.verdict import (
    check_scannable,
    codeless_modules,
    refuse_codeless,
    refuse_damage,
)

# multiprocessing and concurrent.futures are imported where workers start (about 15 ms): a one-job
# scan, the default for one image, does not pay for them.


def ProcessPoolExecutor(*args: Any, **kwargs: Any) -> concurrent.futures.ProcessPoolExecutor:
    """concurrent.futures.ProcessPoolExecutor, imported on first use: it and multiprocessing cost
    a one-job scan ~10 ms of start-up for nothing."""
    from concurrent.futures import ProcessPoolExecutor as pool

    return pool(*args, **kwargs)


if TYPE_CHECKING:
    import concurrent.futures
    from collections.abc import Iterable
    from multiprocessing.context import BaseContext


# --- whole images ----------------------------------------------------------------------------

_WORK: dict[str, Any] = {}


def _work(i: int) -> ModuleAnalysis:
    return analyse_checked(_WORK["modules"][i], _WORK["symbols"], _WORK["era"])


def _module_key(m: Module, era: str | None) -> str:

    img = m.image
    return module_key(hashlib.sha256(img.raw).hexdigest(), img.mem_size, m.arch, era)


def _analyses(
    modules: list[Module], symbols: BuildSymbols | None, era: str | None, jobs: int, cache: ResultCache | None
) -> list[ModuleAnalysis]:
    """Each module's analysis, in order: from the cache when it holds a valid entry (never with
    symbols: their names come from files outside the image), else computed (over `jobs` worker
    processes when there are enough modules) and stored."""
    cache = cache if symbols is None else None
    out: list[ModuleAnalysis | None] = [None] * len(modules)
    keys: list[str] = []
    if cache is not None:
        for i, m in enumerate(modules):
            keys.append(_module_key(m, era))
            t0 = time.perf_counter()
            doc = cache.get(keys[i])
            if doc is not None and m.image.mem_size <= MAX_SCAN_MEMORY:
                out[i] = analysis_from_payload(doc, m.image.memory)
                if out[i] is not None:
                    cast(ModuleAnalysis, out[i]).seconds = time.perf_counter() - t0
                else:
                    cache.reject()  # whole, but not of this module's shape or bytes: recomputed, rewritten
    todo = [i for i, a in enumerate(out) if a is None]
    pool = _fork_context() if jobs > 1 and len(todo) > 8 else None
    if pool is not None:
        _WORK.update(modules=modules, symbols=symbols, era=era)
        try:
            with ProcessPoolExecutor(
                max_workers=jobs, mp_context=pool, initializer=_worker_init, initargs=(os.getpid(),)
            ) as ex:
                done = list(ex.map(_work, todo, chunksize=max(1, len(todo) // (jobs * 4))))
        finally:
            _WORK.clear()
    else:
        done = [analyse_checked(modules[i], symbols, era) for i in todo]
    for i, a in zip(todo, done):
        out[i] = a
        if cache is not None:
            cache.put(keys[i], analysis_payload(a))
    return cast("list[ModuleAnalysis]", out)  # every None filled in above


def _worker_init(parent: int) -> None:
    """In each worker: die with the parent (Linux: PR_SET_PDEATHSIG), so a scan killed by a
    signal leaves no worker behind holding its output pipes open."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, 15, 0, 0, 0)  # PR_SET_PDEATHSIG, SIGTERM
    except (OSError, AttributeError):
        pass  # not Linux: workers end when their queue does
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)


def _fork_context() -> BaseContext | None:
    """multiprocessing's fork context (workers inherit the parsed image), or None where there is
    none (then the work runs in this process)."""
    import multiprocessing

    try:
        return multiprocessing.get_context("fork")
    except ValueError:
        return None


def scan_image(
    path: str,
    symbols_dir: str | BuildSymbols | None = None,
    jobs: int = 1,
    root: FlashImage | None = None,
    cache: ResultCache | None = None,
) -> ScanResult:
    """Scan every module of the image at `path` (parsed here unless `root` is given).

    `symbols_dir`: a build directory, or its already-opened `BuildSymbols` (so a caller that
    needs the symbols too reads each symbol file once). `cache`: module analyses are looked up
    and stored there (`scan.cache`; not with symbols). `jobs` > 1: the modules are analysed in
    that many worker processes."""
    t0 = time.perf_counter()
    root = root if root is not None else read_image(path)
    symbols = BuildSymbols(symbols_dir) if isinstance(symbols_dir, str) else symbols_dir
    modules = list(iter_modules(root))
    era = tree_era(modules)
    analyses = _analyses(modules, symbols, era, jobs, cache)
    results = [place_analysis(m, a) for m, a in zip(modules, analyses)]
    findings = [f for r in results for f in r.findings]
    blobs = list(iter_code_blobs(root))
    if blobs:
        findings += scan_blobs(root)
    return ScanResult(
        path,
        root.sha256,
        root.size,
        [r.summary for r in results],
        findings,
        code_blobs=len(blobs),
        standalone=isinstance(root, BinaryFile),
        era=era,
        module_seconds=[a.seconds for a in analyses],
        seconds=time.perf_counter() - t0,
    )


def scan_checked(
    path: str,
    symbols: str | BuildSymbols | None = None,
    jobs: int = 1,
    root: FlashImage | None = None,
    cache: ResultCache | None = None,
) -> ScanResult:
    """`scan_image` with the verdict rules: damaged images, parts that could hold code left unread,
    inputs without code and modules in which no code was found are errors (ImageError),
    including damage the scan itself comes upon. `cache`: for module analyses (`scan_image`)."""
    root = root if root is not None else read_image(path)
    check_scannable(path, root)
    res = scan_image(path, symbols, jobs, root=root, cache=cache)
    refuse_damage(path, root)  # damage the scan itself came upon
    refuse_codeless(path, codeless_modules(res))
    return res


def _file_size(path: str) -> int | None:
    """The size of the regular file at `path` (within MAX_IMAGE_SIZE), else None: the scan then
    says what is wrong."""
    try:
        size = os.path.getsize(path) if os.path.isfile(path) else None
    except OSError:
        return None
    return size if size is not None and size <= MAX_IMAGE_SIZE else None


def _sha256_of(path: str) -> str | None:
    try:
        with open(path, "rb") as fh:
            return hashlib.sha256(fh.read(MAX_IMAGE_SIZE + 1)).hexdigest()
    except OSError:
        return None


def _same_contents(items: list[str | ScanFailure]) -> dict[int, int]:
    """index -> index of the first input with the same contents, for the inputs that are files;
    only files whose size another shares are read to compare."""
    sizes = {i: _file_size(p) for i, p in enumerate(items) if not isinstance(p, ScanFailure)}
    count: dict[int, int] = {}
    for s in sizes.values():
        if s is not None:
            count[s] = count.get(s, 0) + 1
    first: dict[int, int] = {}
    seen: dict[tuple[int, str], int] = {}
    for i, s in sizes.items():
        if s is None or count[s] < 2:
            continue
        digest = _sha256_of(cast(str, items[i]))  # `sizes` holds the files only
        if digest is not None:
            first[i] = seen.setdefault((s, digest), i)
    return first


def scan_paths(
    paths: Iterable[str | ScanFailure],
    symbols_dir: str | None = None,
    jobs: int | None = 1,
    cache: ResultCache | None = None,
) -> list[ScanResult | ScanFailure]:
    """Scan each input (`scan_inputs`), files of identical contents once: each is reported under
    its own name, with a note naming the first. A file a directory or pattern brought in
    (`Found`) that holds nothing the tool checks is `ScanSkipped`, unless every input is: then
    nothing was checked, and each is the error it would be if named."""
    items: list[Any] = list(paths)  # str or ScanFailure: a file's path (str) wherever used as a path below
    first = _same_contents(items)
    unique = [i for i in range(len(items)) if first.get(i, i) == i]
    done = dict(zip(unique, scan_inputs([items[i] for i in unique], symbols_dir, jobs, cache)))
    out: list[ScanResult | ScanFailure] = []
    for i, p in enumerate(items):
        o = done.get(i)
        if o is None:  # same contents as an input before it
            o0, p0 = done[first[i]], items[first[i]]
            if isinstance(o0, ScanResult):
                o = replace(o0, path=p, same_as=str(p0))
            else:
                o = ScanFailure(p, o0.message.replace(p0, p, 1), o0.nothing)
        if isinstance(o, ScanFailure) and o.nothing and isinstance(p, Found):
            o = ScanSkipped(o.path, o.message, True)
        out.append(o)
    if out and all(isinstance(o, ScanSkipped) for o in out):  # nothing checked at all: not a clean verdict
        out = [ScanFailure(o.path, cast(ScanSkipped, o).message, True) for o in out]
    return out


def scan_inputs(
    paths: Iterable[str | ScanFailure],
    symbols_dir: str | None = None,
    jobs: int | None = 1,
    cache: ResultCache | None = None,
) -> list[ScanResult | ScanFailure]:
    """Scan each input: its result, or its failure, in the order given. `paths` may hold
    ScanFailure entries (inputs that named nothing to scan, `scan.inputs`): kept in their place.

    `jobs`: worker processes (None: `default_jobs(n)` for n images). Several images are spread
    over them, one image to a process (the largest first), each scanned with its modules in
    turn; one image has its modules spread over them (`scan_image`). The result is the same
    whatever the count. `cache`: whole images and module analyses are looked up and stored there
    (`scan.cache`; not with symbols).

    An unusable `symbols_dir` is an error of the whole command (raised before any scan); each
    image gets its own index of the build's symbol files (their matches are per image)."""
    first = BuildSymbols(symbols_dir) if symbols_dir is not None else None  # fails once, up front
    items: list[Any] = list(paths)  # a file's path (str) at every index in `todo`
    todo = [i for i, p in enumerate(items) if not isinstance(p, ScanFailure)]
    out: list[Any] = list(items)
    looked = cache is not None and symbols_dir is None and len(todo) > 1
    if looked:  # images seen before: no worker needed
        assert cache is not None  # looked: there is a cache
        for i in todo:
            out[i] = _cached_image(items[i], cache)
        todo = [i for i in todo if out[i] is None]
    jobs = default_jobs(len(todo)) if jobs is None else jobs
    pool = _fork_context() if jobs > 1 and len(todo) > 1 else None
    if pool is None:
        for n, i in enumerate(todo):
            symbols = first if n == 0 or first is None else BuildSymbols(cast(str, symbols_dir))
            out[i] = _scan_input(items[i], symbols, jobs, cache, lookup=not looked)
            if len(todo) > 1:
                gc.collect()  # the image's tree (parent links: cycles) goes now, not images later
        return out
    for i, res in zip(
        todo, _scan_spread([items[i] for i in todo], symbols_dir, min(jobs, len(todo)), cache, pool, not looked)
    ):
        out[i] = res
    return out


def _scan_input(
    path: str, symbols: str | BuildSymbols | None, jobs: int, cache: ResultCache | None, lookup: bool = True
) -> ScanResult | ScanFailure:
    """One input's result (from the cache's whole-image entry when it has one, unless `lookup`
    is False: already missed) or its failure."""

    whole = C.ImageEntry(path, cache) if cache is not None and symbols is None else None
    if whole is not None and lookup:
        assert cache is not None  # whole: made only with a cache
        res = _cached_image(path, cache, whole)
        if res is not None:
            return res
    try:
        res = scan_checked(path, symbols, jobs, cache=cache)
    except OvmfToolError as e:
        # a flash image's name with no volume in it is a cut image, not a blob: an error anywhere
        cut = isinstance(e, NoVolume) and path.lower().endswith((".fd", ".fv", ".rom"))
        return ScanFailure(path, str(e), isinstance(e, NothingToCheck) and not cut)
    if whole is not None:
        whole.put(res.sha256, res.size, result_payload(res))
    return res


def _cached_image(path: str, cache: ResultCache, whole: ImageEntry | None = None) -> ScanResult | None:
    """The cached result of the image at `path` (its whole-image entry, `scan.cache`), or None."""

    whole = whole or C.ImageEntry(path, cache)
    doc = whole.get()
    if doc is None:
        return None
    assert whole.sha256 is not None  # doc: the entry has a key, made from the file's sha256
    res = result_from_payload(doc, path, whole.sha256, whole.size)
    if res is None:
        cache.reject()
    return res


def _spread_work(
    path: str, symbols_dir: str | None, cache: ResultCache | None, lookup: bool
) -> ScanResult | ScanFailure:
    try:
        return _scan_input(path, BuildSymbols(symbols_dir) if symbols_dir is not None else None, 1, cache, lookup)
    finally:
        gc.collect()  # as in scan_paths: a worker holds one image's tree at a time


def _scan_spread(
    paths: list[str],
    symbols_dir: str | None,
    jobs: int,
    cache: ResultCache | None,
    ctx: BaseContext,
    lookup: bool = True,
) -> list[ScanResult | ScanFailure]:
    """`_scan_input` of each path in `jobs` worker processes, largest file first; in order."""
    from concurrent.futures.process import BrokenProcessPool

    def size(p: str) -> int:
        try:
            return os.stat(p).st_size
        except OSError:
            return 0

    order = sorted(range(len(paths)), key=lambda i: (-size(paths[i]), i))
    ex = ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_worker_init, initargs=(os.getpid(),))
    try:
        futures = {i: ex.submit(_spread_work, paths[i], symbols_dir, cache, lookup) for i in order}
        return [futures[i].result() for i in range(len(paths))]
    except BrokenProcessPool:
        raise OvmfToolError("a scan worker process died (killed, or out of memory?)") from None
    except BaseException:  # interrupted: no worker goes on scanning
        for proc in list((getattr(ex, "_processes", None) or {}).values()):
            proc.terminate()
        raise
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


def default_jobs(images: int = 1) -> int:
    """Worker processes to use by default. Several images: one each, up to the CPU count, at most
    4. One image: 1 with the native walk (starting workers costs more than it saves: measured
    0.35 s vs 0.38 s on OVMF_CODE_4M.fd, 0.47 s vs 0.54 s on a DEBUG build), else the CPU
    count, at most 4."""

    cpus = max(1, min(4, os.cpu_count() or 1))
    if images > 1:
        return min(images, cpus)
    return 1 if native_available() else cpus
