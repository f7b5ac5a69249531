"""``make mutate``: mutmut over the core modules, a score per module, and the survivors.

mutmut's settings are the ``[mutmut]`` section of setup.cfg (which modules, which tests). This
script runs ``mutmut run`` (all mutants, or ``--sample``: those whose number ends in one of
``--digits``, 0 or 5 by default, a fixed choice; ``--modules``: those of some modules only), then
reads mutmut's results and prints for
each module the mutants killed, the survivors and the score:

    score = killed / (mutants - equivalent)

where a mutant counts as killed when a test failed or it timed out (an endless loop is caught),
and ``equivalent`` are the survivors listed in ``mutation/equivalent.txt`` with the reason no
test can tell them from the original. Exit status 1 when any module scores below
``--threshold`` (90 %), or all modules together below ``--overall``. Survivors neither killed
nor listed are printed (and fail the run with ``--strict``). Mutant names carry mutmut's
numbering within a function, so a listed name goes stale when that function changes: it then
no longer counts, and the survivor shows up again.

Until 2026-12-03 every forked mutmut session shared one SQLite test file with mutmut's parent
(tests/settings.py names it by the pid that read the settings), creating and deleting it under
the others: most mutants were "killed" by a broken database, not by a test. Each session now
has its own file (``django_db_modify_db_settings`` in tests/conftest.py); the scores since are
the real ones, and lower (docs/development.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EQUIVALENT = ROOT / "mutation" / "equivalent.txt"
MUTANTS = ROOT / "mutants"

KILLED = {1, 3, 36, -24, 24, 152, 255}  # a failing test, or a timeout (mutmut's codes)
NOT_RUN = {None}


def module_of(name: str) -> str:
    # nomos_billing.client.xǁNomosClientǁrequest__mutmut_3 -> nomos_billing.client
    return name.split(".x_")[0].split(".xǁ")[0]


def load_results() -> dict[str, int | None]:
    results: dict[str, int | None] = {}
    for meta in sorted(MUTANTS.rglob("*.py.meta")):
        results.update(json.loads(meta.read_text())["exit_code_by_key"])
    return results


def load_equivalent() -> dict[str, str]:
    """``mutant name  # reason`` per line; blank lines and ``#`` comments are skipped."""
    listed: dict[str, str] = {}
    if EQUIVALENT.exists():
        for line in EQUIVALENT.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, _, reason = line.partition("#")
            listed[name.strip()] = reason.strip()
    return listed


#: ``--sample``: mutants whose mutmut number ends in one of these digits (a fixed choice).
SAMPLE_DIGITS = "05"


def in_sample(name: str, digits: str = SAMPLE_DIGITS) -> bool:
    return name[-1] in digits


def module_prefixes(modules: str) -> list[str]:
    """The start of the mutant names of ``--modules``: ``linking`` -> ``nomos_billing.linking.``,
    ``admin`` -> ``nomos_billing.admin.`` (its submodules too); none given -> every mutant."""
    names = [m.strip() for m in modules.split(",") if m.strip()]
    return [f"nomos_billing.{name}." for name in names] or [""]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", action="store_true",
                        help=f"only mutants numbered ...{SAMPLE_DIGITS[0]} or ...{SAMPLE_DIGITS[1]}"
                             " (a fixed fifth; CI runs this)")
    parser.add_argument("--digits", default=SAMPLE_DIGITS,
                        help="with --sample: the last digits of the mutants run (default 05)")
    parser.add_argument("--modules", default="",
                        help="comma-separated modules under nomos_billing (e.g. linking,admin): "
                             "run and report only their mutants (admin takes admin.*)")
    parser.add_argument("--threshold", type=float, default=90.0, help="per module, in %%")
    parser.add_argument("--overall", type=float, default=0.0,
                        help="all modules together, in %% (default: no such floor)")
    parser.add_argument("--no-run", action="store_true", help="only report the last run")
    parser.add_argument("--strict", action="store_true",
                        help="also fail on a survivor not listed in mutation/equivalent.txt")
    args = parser.parse_args()

    # mutmut's own entry point (``python -m mutmut`` imports its main module twice).
    mutmut = [str(Path(sys.executable).with_name("mutmut"))]
    env = {**os.environ}
    env.pop("DATABASE_URL", None)  # the fast subset runs on SQLite + local memory
    env.pop("CACHE_URL", None)
    if not args.no_run:
        patterns = [f"{prefix}*__mutmut_*{f'[{args.digits}]' if args.sample else ''}"
                    for prefix in module_prefixes(args.modules)]
        if patterns == ["*__mutmut_*"]:
            patterns = []  # every mutant: mutmut's own default
        result = subprocess.run(  # noqa: S603 - our own venv's mutmut
            [*mutmut, "run", *patterns], cwd=ROOT, env=env, check=False,
            stdout=subprocess.DEVNULL)
        if result.returncode != 0:
            print(f"mutmut run failed with exit status {result.returncode}", file=sys.stderr)
            return 2

    results = load_results()
    if args.modules:
        prefixes = tuple(module_prefixes(args.modules))
        results = {k: v for k, v in results.items() if k.startswith(prefixes)}
    if args.sample:
        results = {k: v for k, v in results.items() if in_sample(k, args.digits)}
    equivalent = load_equivalent()

    by_module: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for name, code in results.items():
        if code in KILLED:
            kind = "killed"
        elif code in NOT_RUN:
            kind = "not run"
        elif name in equivalent:
            kind = "equivalent"
        else:
            kind = "survived"  # survived (0), no tests (33/5), suspicious, skipped
        by_module[module_of(name)][kind].append(name)

    failed = False
    print(f"{'module':28} {'mutants':>7} {'killed':>6} {'equiv':>5} {'surv':>5} {'score':>7}")
    for module in sorted(by_module):
        kinds = by_module[module]
        tested = sum(len(v) for k, v in kinds.items() if k != "not run")
        killed, equiv = len(kinds["killed"]), len(kinds["equivalent"])
        survived = len(kinds["survived"])
        score = 100.0 * killed / (tested - equiv) if tested - equiv else 100.0
        low = score < args.threshold
        failed |= low or (args.strict and survived > 0)
        print(f"{module:28} {tested:7} {killed:6} {equiv:5} {survived:5} {score:6.1f}%"
              f"{'  < ' + str(args.threshold) + ' %' if low else ''}")
    all_killed = sum(len(kinds["killed"]) for kinds in by_module.values())
    all_counted = sum(
        sum(len(v) for k, v in kinds.items() if k not in ("not run", "equivalent"))
        for kinds in by_module.values()
    )
    overall = 100.0 * all_killed / all_counted if all_counted else 100.0
    low = overall < args.overall
    failed |= low
    print(f"{'all modules':28} {all_counted:7} {all_killed:6} {'':5} {'':5} {overall:6.1f}%"
          f"{'  < ' + str(args.overall) + ' %' if low else ''}")
    survivors = sorted(n for kinds in by_module.values() for n in kinds["survived"])
    if survivors:
        print("\nSurvivors not listed in mutation/equivalent.txt (mutmut show NAME):")
        for name in survivors:
            print(f"  {name}  (exit {results[name]})")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
