"""Per-module summary of a mutmut run: mutants generated, killed, survived, timed out and other outcomes.

Reads the results mutmut 3 keeps next to each mutated file (mutants/<path>.meta) and the surviving mutants
judged equivalent to the original (tests/mutation/equivalent.txt: a name and the reason per line). The score is
the share killed (or timed out) of the mutants that have tests and are not equivalent; "all tested" counts the
equivalent ones as survivors. Run from the project root:

    python tests/mutation/summary.py                    # the table
    python tests/mutation/summary.py --list survived    # and the names of the surviving mutants per module
    python tests/mutation/summary.py --diffs            # the diff of every surviving mutant
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from mutmut.stats import status_by_exit_code

COLUMNS = ("killed", "survived", "equivalent", "timeout")
EQUIVALENT = Path(__file__).with_name("equivalent.txt")


def load_equivalent(path: Path = EQUIVALENT) -> dict[str, str]:
    """{mutant name: why it is equivalent}, from lines `name  reason` ('#' starts a comment)."""
    lines = (line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines())
    return dict((line.split(maxsplit=1) + [""])[:2] for line in lines if line)


def load(root: Path = Path("mutants"), equivalent: dict[str, str] | None = None) -> dict[str, dict[str, str]]:
    """{module path: {mutant name: status}} for every mutated file under root; a survivor listed in
    `equivalent` has the status "equivalent"."""
    equivalent = equivalent or {}
    results = {}
    for meta in sorted(root.rglob("*.py.meta")):
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        statuses = {name: status_by_exit_code[code] for name, code in codes.items()}
        results[str(meta.relative_to(root))[: -len(".meta")]] = {
            name: "equivalent" if status == "survived" and name in equivalent else status
            for name, status in statuses.items()}
    return results


def table(results: dict[str, dict[str, str]]) -> str:
    width = max(map(len, [*results, "total"]))
    header = f"{'module':<{width}}  generated  " + "  ".join(f"{c:>10}" for c in (*COLUMNS, "other")) + \
        "   score  all tested"
    rows, total = [header, "-" * len(header)], Counter()

    def row(name: str, counts: Counter) -> str:
        n = sum(counts.values())
        other = n - sum(counts[c] for c in COLUMNS)
        killed = counts["killed"] + counts["timeout"]
        shares = [f"{100 * killed / tested:5.1f}%" if tested else "    -"  # of the non-equivalent, then of all
                  for tested in (killed + counts["survived"], killed + counts["survived"] + counts["equivalent"])]
        return f"{name:<{width}}  {n:>9}  " + "  ".join(f"{counts[c]:>10}" for c in COLUMNS) + \
            f"  {other:>10}  {shares[0]:>6}  {shares[1]:>10}"

    for module, statuses in results.items():
        counts = Counter(statuses.values())
        total += counts
        rows.append(row(module, counts))
    rows += ["-" * len(header), row("total", total)]
    others = {s: k for s, k in total.items() if s not in COLUMNS}
    if others:
        rows.append("other: " + ", ".join(f"{k} {s}" for s, k in sorted(others.items())))
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", metavar="STATUS", help="list the mutants with this status per module (e.g. survived)")
    parser.add_argument("--diffs", action="store_true", help="print the diff of every surviving mutant")
    args = parser.parse_args()
    equivalent = load_equivalent()
    results = load(equivalent=equivalent)
    if not results:
        raise SystemExit("no mutmut results under mutants/; run `make mutate` first")
    print(table(results))
    stale = sorted(name for statuses in results.values() for name, status in statuses.items()
                   if name in equivalent and status != "equivalent")
    if stale:
        print(f"\n{EQUIVALENT.name} lists mutants that did not survive (remove them):", *stale, sep="\n  ")
    if args.list:
        for module, statuses in results.items():
            names = [name for name, status in statuses.items() if status == args.list]
            print(f"\n{module}: {len(names)} {args.list}", *(f"  {name}" for name in names), sep="\n")
    if args.diffs:
        from mutmut.mutation.diff_apply import get_diff_for_mutant

        for module, statuses in results.items():
            for name in (name for name, status in statuses.items() if status == "survived"):
                print(f"\n# {name}: survived\n{get_diff_for_mutant(name, path=module)}")


if __name__ == "__main__":
    main()
