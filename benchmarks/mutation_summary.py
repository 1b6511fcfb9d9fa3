"""Score per module of the last ``make mutate`` run, read from mutmut's records in mutants/.

Prints a Markdown table: killed, survived, no test, timeout, and the score = detected /
(detected + survived), a mutant being detected when a test fails or times out on it. "No test"
counts mutants of functions that no selected unit test calls (notebook-only code).

``--survivors`` lists every surviving mutant (``mutmut show NAME`` prints its diff);
``--unexplained`` lists those with no reason, or a stale one, in ``benchmarks/mutation_reasons``
(and the reasons left for mutants that no longer survive, which ``--prune`` deletes);
``--write benchmarks/mutation.md`` replaces the part of that file between its two
``mutation-summary`` markers with the score table and, per module, every survivor, its change and
why it survives. Run from the project's root (mutmut reads ``mutants/`` there).

The reasons are kept per module in ``benchmarks/mutation_reasons/<module>.toml``, one table per
surviving mutant (its name without the module prefix) with the ``change`` it was explained for
(as this script prints it) and ``why``: a sentence, or ``kind:NAME`` for one of the recurring
reasons of ``kinds.toml``. A reason whose ``change`` no longer matches the mutant (the function
was edited and mutmut renumbered its mutants) counts as unexplained.
"""

from __future__ import annotations

import argparse
import json
import re
import time
import tomllib
from collections import Counter
from pathlib import Path

from mutmut.mutation.diff_apply import get_diff_for_mutant
from mutmut.stats import status_by_exit_code

from gsfh_utils.lab.io import atomic_write_text

MODULES = ("gibbs", "estimation", "offline", "online", "dpo", "sampling", "kl_estimators",
           "instance", "policy_optimization", "out_of_preference")
REASONS = Path(__file__).parent / "mutation_reasons"
START, END = "<!-- mutation-summary:start -->", "<!-- mutation-summary:end -->"
CONTEXT = 30  # characters of unchanged code kept on each side of a one-line change


def module_statuses(root: Path, module: str) -> dict[str, str]:
    """Mutant name -> mutmut status (killed, survived, no tests, timeout, not checked...)."""
    meta = root / "gsfh_utils" / f"{module}.py.meta"
    if not meta.exists():
        return {}
    for attempt in range(5):  # mutmut rewrites the file in place while it runs
        try:
            codes = json.loads(meta.read_text())["exit_code_by_key"]
            break
        except json.JSONDecodeError:
            if attempt == 4:
                raise
            time.sleep(0.5)
    return {name: status_by_exit_code[code] for name, code in codes.items()}


def score_row(module: str, statuses: dict[str, str]) -> str:
    counts = Counter(statuses.values())
    killed = counts["killed"] + counts["caught by type check"]
    tested = killed + counts["timeout"] + counts["survived"]
    score = f"{100 * (killed + counts['timeout']) / tested:.1f}%" if tested else "-"
    return (f"| {module} | {len(statuses)} | {killed} | {counts['survived']} | "
            f"{counts['no tests']} | {counts['timeout']} | {counts['not checked']} | {score} |")


def trimmed(before: str, after: str) -> tuple[str, str]:
    """The two versions of a changed line, cut to the change and ``CONTEXT`` characters around."""
    prefix = 0
    while prefix < min(len(before), len(after)) and before[prefix] == after[prefix]:
        prefix += 1
    suffix = 0
    while (suffix < min(len(before), len(after)) - prefix and
           before[-1 - suffix] == after[-1 - suffix]):
        suffix += 1
    start = max(0, prefix - CONTEXT)

    def cut(line):
        end = min(len(line), len(line) - suffix + CONTEXT)
        return (("..." if start else "") + line[start:end] + ("..." if end < len(line) else ""))
    return cut(before), cut(after)


def change(mutant: str) -> str:
    """The mutant's diff as ``old -> new`` on one line (several lines joined by `` / ``)."""
    module = mutant.split(".")[1]
    diff = get_diff_for_mutant(mutant, path=f"gsfh_utils/{module}.py").splitlines()[2:]
    removed = [line[1:].strip() for line in diff if line.startswith("-")]
    added = [line[1:].strip() for line in diff if line.startswith("+")]
    if len(removed) == len(added) == 1:
        removed[0], added[0] = trimmed(removed[0], added[0])
    old, new = " / ".join(removed), " / ".join(added) or "(deleted)"
    return f"`{old}` -> `{new}`".replace("|", "\\|")


def load_reasons() -> tuple[dict[str, str], dict[str, dict]]:
    kinds = tomllib.loads((REASONS / "kinds.toml").read_text())
    reasons = {module: tomllib.loads(path.read_text()) if (path := REASONS /
               f"{module}.toml").exists() else {} for module in MODULES}
    return kinds, reasons


def explanation(entry: dict | None, changed: str, kinds: dict[str, str]) -> str | None:
    """The reason recorded for this change, or None (none recorded, or for another change)."""
    if entry is None or entry["change"] != changed:
        return None
    why = entry["why"]
    return kinds[why.removeprefix("kind:")] if why.startswith("kind:") else why


def survivor_sections(root: Path, kinds, reasons) -> tuple[list[str], list[str], list[str]]:
    """Markdown tables of the survivors per module, the names left unexplained, and the reasons
    recorded for mutants that no longer survive (to delete from the toml)."""
    lines, unexplained, unused = [], [], []
    for module in MODULES:
        names = sorted(name for name, status in module_statuses(root, module).items()
                       if status == "survived")
        shorts = {name.removeprefix(f"gsfh_utils.{module}.").removeprefix("x_")
                  for name in names}
        unused += [f"{module}: {short}" for short in reasons[module] if short not in shorts]
        if not names:
            continue
        lines += ["", f"### {module} ({len(names)} survivors)", "",
                  "| mutant | change | why it survives |", "|---|---|---|"]
        for name in names:
            short = name.removeprefix(f"gsfh_utils.{module}.").removeprefix("x_")
            changed = change(name)
            why = explanation(reasons[module].get(short), changed, kinds)
            if why is None:
                unexplained.append(name)
            lines.append(f"| {short} | {changed} | {why or '**not explained**'} |")
    return lines, unexplained, unused


def prune(unused: list[str]) -> None:
    """Delete the reasons of mutants that no longer survive (``module: name`` entries)."""
    for module in MODULES:
        names = {entry.partition(": ")[2] for entry in unused if entry.startswith(f"{module}: ")}
        if not names:
            continue
        path = REASONS / f"{module}.toml"
        blocks = re.split(r"\n(?=\[)", path.read_text())
        kept = [block for block in blocks if not any(
            block.startswith(f"[{json.dumps(name, ensure_ascii=False)}]") for name in names)]
        atomic_write_text(path, "\n".join(kept).rstrip("\n") + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", type=Path, default=Path("mutants"))
    parser.add_argument("--survivors", action="store_true", help="list every surviving mutant")
    parser.add_argument("--unexplained", action="store_true",
                        help="list survivors without a current reason, with their change")
    parser.add_argument("--write", type=Path, help="the Markdown file whose summary to replace")
    parser.add_argument("--prune", action="store_true",
                        help="delete the reasons of mutants that no longer survive")
    args = parser.parse_args()
    table = ["| module | mutants | killed | survived | no test | timeout | not checked | score |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    table += [score_row(module, module_statuses(args.root, module)) for module in MODULES]
    print("\n".join(table))
    if args.survivors:
        print()
        print("\n".join(sorted(name for module in MODULES for name, status in
                               module_statuses(args.root, module).items()
                               if status == "survived")))
    if not (args.unexplained or args.write or args.prune):
        return
    kinds, reasons = load_reasons()
    sections, unexplained, unused = survivor_sections(args.root, kinds, reasons)
    if args.unexplained:
        print()
        print("\n".join(f"{name}  {change(name)}" for name in unexplained))
        if unused:
            print("\nreasons for mutants that no longer survive:\n" + "\n".join(unused))
    if args.prune:
        prune(unused)
        print(f"pruned {len(unused)} reasons")
    if args.write:
        text = args.write.read_text()
        head, rest = text.split(START)
        tail = rest.split(END)[1]
        body = "\n".join(["", "## Scores", "", *table, "", "## Surviving mutants", *sections, ""])
        atomic_write_text(args.write, head + START + body + END + tail)
        print(f"\n{args.write}: {len(unexplained)} survivors not explained")


if __name__ == "__main__":
    main()
