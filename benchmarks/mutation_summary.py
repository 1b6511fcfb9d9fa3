"""Score per module of the last ``make mutate`` run, read from mutmut's records in mutants/.

Prints a Markdown table: killed, survived, no test, timeout, and the score = detected /
(detected + survived), a mutant being detected when a test fails or times out on it. With
``--survivors``, the name of every surviving mutant (``mutmut show NAME`` prints its diff).
"No test" counts mutants of functions that no selected unit test calls (notebook-only code).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from mutmut.stats import status_by_exit_code

MODULES = ("gibbs", "estimation", "offline", "online", "dpo", "sampling", "kl_estimators",
           "instance", "policy_optimization", "out_of_preference")


def module_statuses(root: Path, module: str) -> dict[str, str]:
    """Mutant name -> mutmut status (killed, survived, no tests, timeout, not checked...)."""
    meta = root / "gsfh_utils" / f"{module}.py.meta"
    if not meta.exists():
        return {}
    codes = json.loads(meta.read_text())["exit_code_by_key"]
    return {name: status_by_exit_code[code] for name, code in codes.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", type=Path, default=Path("mutants"))
    parser.add_argument("--survivors", action="store_true", help="list every surviving mutant")
    args = parser.parse_args()
    print("| module | mutants | killed | survived | no test | timeout | not checked | score |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    survivors = []
    for module in MODULES:
        statuses = module_statuses(args.root, module)
        counts = Counter(statuses.values())
        killed = counts["killed"] + counts["caught by type check"]
        tested = killed + counts["timeout"] + counts["survived"]
        score = f"{100 * (killed + counts['timeout']) / tested:.1f}%" if tested else "-"
        print(f"| {module} | {len(statuses)} | {killed} | {counts['survived']} | "
              f"{counts['no tests']} | {counts['timeout']} | {counts['not checked']} | {score} |")
        survivors += sorted(name for name, status in statuses.items() if status == "survived")
    if args.survivors:
        print()
        print("\n".join(survivors))


if __name__ == "__main__":
    main()
