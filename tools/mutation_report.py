"""The mutation score of the verdict core from a finished `mutmut run` (configured in pyproject.toml,
results under mutants/): per file and function, killed / survived / no tests / timeout, and the
survivors with their diffs (`--diffs`).

    mutmut run --max-children 2        # in the checkout (about 40 minutes on 2 cores)
    python -m tools.mutation_report [--diffs] [--json OUT]
    python -m tools.mutation_report --recheck tests/test_verdict_core.py   # survivors against tests added since
    python -m tools.mutation_report --recheck tests/test_verdict_core.py --only ovmftool.scan.signatures

Score = killed / (killed + survived): mutants no test reaches ("no tests") are listed apart, as
mutmut itself does; a timeout counts as killed (the mutant made a test hang).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# mutmut 3's own table (mutmut.ui.browse.status_by_exit_code), what is counted here
STATUS = {
    **{c: "killed" for c in (1, 3)},
    0: "survived",
    **{c: "no tests" for c in (5, 33)},
    **{c: "timeout" for c in (36, -24, 24, 152, 255)},
}


def results(mutants: Path) -> dict[str, str]:
    """mutant name -> status, from mutmut's .meta files."""
    out = {}
    for meta in sorted(mutants.rglob("*.py.meta")):
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            out[name] = "not checked" if code is None else STATUS.get(code, f"exit {code}")
    return out


def function_of(mutant: str) -> str:
    """`ovmftool.gate.baseline.x_check__mutmut_6` -> `ovmftool.gate.baseline.check`."""
    mod, _, rest = mutant.rpartition(".")
    fn = rest.split("__mutmut_")[0]
    fn = fn[2:] if fn.startswith("x_") else fn
    return f"{mod}.{fn.replace('xǁ', '').replace('ǁ', '.')}"


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mutants", default=str(ROOT / "mutants"))
    ap.add_argument("--diffs", action="store_true", help="print each survivor's diff (mutmut show)")
    ap.add_argument("--json", help="write the figures as JSON")
    ap.add_argument(
        "--recheck",
        nargs="+",
        metavar="TEST",
        help="run each survivor against these tests (copied into mutants/ first, as mutmut runs a mutant: "
        "MUTANT_UNDER_TEST set) and count those they kill",
    )
    ap.add_argument(
        "--only",
        metavar="PREFIX",
        default="",
        help="recheck only the survivors whose name starts with PREFIX (e.g. ovmftool.scan.signatures)",
    )
    ap.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="seconds one recheck may take; past them the mutant counts as killed (a hang)",
    )
    a = ap.parse_args(argv)
    res = results(Path(a.mutants))
    if not res:
        print(f"mutation_report: no mutmut results under {a.mutants}", file=sys.stderr)
        return 2
    by_file: dict[str, Counter[str]] = defaultdict(Counter)
    for name, status in res.items():
        by_file[name.rsplit(".", 1)[0]][status] += 1
    total: Counter[str] = Counter(res.values())

    def score(c: Counter[str]) -> str:
        k, s = c["killed"] + c["timeout"], c["survived"]
        return f"{100 * k / (k + s):.1f}%" if k + s else "-"

    print("| module | mutants | killed | timeout | survived | no tests | not checked | score |")
    print("|---|---|---|---|---|---|---|---|")
    for mod, c in sorted(by_file.items()):
        print(
            f"| `{mod}` | {sum(c.values())} | {c['killed']} | {c['timeout']} | {c['survived']} | {c['no tests']} "
            f"| {c['not checked']} | {score(c)} |"
        )
    print(
        f"| all | {sum(total.values())} | {total['killed']} | {total['timeout']} | {total['survived']} "
        f"| {total['no tests']} | {total['not checked']} | {score(total)} |"
    )
    survivors = sorted(n for n, s in res.items() if s == "survived")
    per_fn = Counter(function_of(n) for n in survivors)
    print("\nsurvivors by function:")
    for fn, n in sorted(per_fn.items(), key=lambda t: (-t[1], t[0])):
        print(f"  {n:3d}  {fn}")
    if a.diffs:
        for n in survivors:
            r = subprocess.run(["mutmut", "show", n], capture_output=True, text=True, cwd=ROOT)
            lines = [ln for ln in r.stdout.splitlines() if ln[:1] in "+-" and ln[:3] not in ("+++", "---")]
            print(f"\n{n}\n  " + "\n  ".join(lines))
    rechecked: dict[str, bool] = {}
    if a.recheck:
        mutants = Path(a.mutants)
        for t in {t.split("::")[0] for t in a.recheck}:  # a test file, or one test of it (FILE::NAME)
            (mutants / t).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / t, mutants / t)
        pytest = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", *a.recheck]
        for n in (n for n in survivors if n.startswith(a.only)):
            env = dict(os.environ, MUTANT_UNDER_TEST=n)
            try:
                r = subprocess.run(pytest, cwd=mutants, env=env, capture_output=True, timeout=a.timeout)
                rechecked[n] = r.returncode != 0
            except subprocess.TimeoutExpired:  # the mutant makes the tests hang: killed, as mutmut counts a timeout
                rechecked[n] = True
        killed = sorted(n for n, k in rechecked.items() if k)
        print(f"\nrecheck against {' '.join(a.recheck)}: {len(killed)} of {len(rechecked)} survivors killed")
        for n in sorted(set(rechecked) - set(killed)):
            print(f"  still surviving: {n}")
    if a.json:
        Path(a.json).write_text(
            json.dumps(
                {
                    "total": dict(total),
                    "by_module": {m: dict(c) for m, c in by_file.items()},
                    "survivors": survivors,
                    "rechecked": rechecked,
                },
                indent=2,
                sort_keys=True,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
