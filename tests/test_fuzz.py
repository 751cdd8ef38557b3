"""The fuzzer (tools/fuzz.py) on a bounded, seeded slice: every input ends in time and memory,
exits 0, 1 or 2 with at most one line on stderr, and leaves no output behind when it fails.

The long campaigns (a million inputs and more) run outside CI: `python -m tools.fuzz --dir DIR
--seed N --count M` and `--resume`. This slice runs the same machinery (forked worker, SIGALRM,
RSS checks, failure records) on synthetic seeds only, so it is fast and needs no build.
"""

import json
import time

import pytest

from tests.conftest import CORPUS_IMAGES
from tools import fuzz


@pytest.fixture(scope="module")
def seeds():
    return fuzz.default_seeds(corpus=False)


def test_seeds_are_clean_images_holding_every_structure(seeds):
    from ovmftool.model.node import all_problems, walk

    kinds, comps = set(), set()
    for s in seeds:
        assert all_problems(s.root) == [], s.name
        for n in walk(s.root):
            kinds.add(n.kind)
            comps.add(getattr(n, "compression", None))
    assert {"volume", "file", "section", "image", "code", "binary"} <= kinds
    assert {"LZMA", "LZMAF86", "BROTLI", "TIANO", "EFI", "CRC32", "NONE"} <= comps


def test_inputs_are_a_function_of_seed_and_number(seeds):
    a, b = fuzz.Generator(7, seeds), fuzz.Generator(7, seeds)
    for i in (0, 1, 17, 999):
        assert a.make(i).data == b.make(i).data and a.command(i) == b.command(i)
    assert fuzz.Generator(8, seeds).make(17).data != a.make(17).data


def test_mutations_inside_compressed_data_are_reencoded(seeds):
    """A field mutation in a decoded space comes back re-encoded with valid containers: the
    outer volume and file still parse clean and the change is visible in the decoded bytes."""
    from ovmftool.model.node import walk
    from ovmftool.model.parser import parse_flash
    from ovmftool.model.pe import PeImage

    seed = next(s for s in seeds if s.name == "lzma-nested")
    img = next(n for n in walk(seed.root) if isinstance(n, PeImage))
    assert img.space.origin is not None  # inside the LZMA section
    new = fuzz.splice(img.space, img.offset + 0x3C, img.offset + 0x40, b"\x00\x10\x00\x00", img)
    root = parse_flash(new, "x")
    img2 = next(n for n in walk(root) if isinstance(n, PeImage))
    assert img2.raw[0x3C:0x40] == b"\x00\x10\x00\x00" and img2.problems
    assert all(not n.problems for n in walk(root) if n.kind in ("volume", "file") and n.space.origin is None)


def test_watchdog_stops_a_slow_input(tmp_path):
    data = CORPUS_IMAGES["images/debian-2022.11/OVMF_CODE_4M.fd"].read_bytes()
    o = fuzz.run_one(data, "scan", ["scan", "IMG"], str(tmp_path), time_limit=0.05)
    assert o.symptom == "timeout" and o.seconds < 5


def test_fuzz_slice_finds_no_failure(tmp_path, seeds):
    camp = fuzz.run_campaign(tmp_path / "run", seed=20261201, count=4000, workers=1, seeds=seeds)
    report = {sig: (f["count"], f["detail"], f["examples"][:1]) for sig, f in camp.failures.items()}
    assert camp.failures == {}, json.dumps(report, indent=1)
    assert camp.inputs == 4000 and camp.next_index == 4000
    # the slice gets past parsing: clean scans, sites found, patches written, damage refused
    assert camp.exits.get("0", 0) > 200 and camp.exits.get("1", 0) > 50 and camp.exits.get("2", 0) > 500
    assert set(camp.commands) == set(fuzz.COMMANDS)
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["seed"] == 20261201 and state["next_index"] == 4000 and state["inputs"] == 4000
    more = fuzz.run_campaign(tmp_path / "run", count=100, resume=True, seeds=seeds)
    assert more.inputs == 4100 and more.next_index == 4100 and more.seed == 20261201 and more.failures == {}


def test_failures_are_recorded_with_their_input_and_replay(tmp_path, seeds, monkeypatch):
    """A bug (here: the text tree raising) is caught in the forked worker, recorded once per
    signature with the input that triggered it, and the saved input replays to the same failure."""
    from ovmftool.ops import tree

    def broken(root):
        raise RuntimeError("boom")

    monkeypatch.setattr(tree, "text_lines", broken)
    camp = fuzz.run_campaign(tmp_path / "run", seed=3, count=60, seeds=seeds)
    bad = [f for f in camp.failures.values() if f["symptom"] == "exception" and "boom" in f["detail"]]
    assert bad and bad[0]["cmd"] == "info" and bad[0]["examples"]
    example = bad[0]["examples"][0]
    meta = json.loads(open(example[:-3] + ".json").read())
    assert meta["argv"] == ["info", "IMG"] and meta["seed"] and meta["campaign_seed"] == 3
    assert fuzz.replay(example, "info").symptom == "exception"


def test_a_hang_that_ignores_the_alarm_is_killed_and_the_worker_respawned(tmp_path, seeds, monkeypatch):
    import signal

    from ovmftool.ops import tree

    def stuck(root):  # as C code that never returns to the interpreter: SIGALRM cannot stop it
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        time.sleep(120)

    monkeypatch.setattr(tree, "text_lines", stuck)
    gen = fuzz.Generator(5, seeds)
    first = next(i for i in range(100) if gen.command(i)[0] == "info")
    camp = fuzz.run_campaign(tmp_path / "run", seed=5, count=first + 3, seeds=seeds, time_limit=0.5)
    hangs = [f for f in camp.failures.values() if f["symptom"] == "hang"]
    assert hangs and hangs[0]["first"] == first and camp.inputs == first + 3
