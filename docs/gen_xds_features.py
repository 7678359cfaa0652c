"""Write the field-by-field table of docs/xds.md from ``meshlib._xds.translate_features.FEATURES``.

    python docs/gen_xds_features.py           # rewrite the table between the markers in docs/xds.md
    python docs/gen_xds_features.py --check   # exit 1, with a diff, when docs/xds.md is not what FEATURES gives

FEATURES sits beside the translation code that honours or rejects each field, so the docs can't drift from
it: ``tests/xds/test_docs_features.py`` fails while the committed table differs.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path

DOC = Path(__file__).parent / "xds.md"
START = "<!-- features:start (docs/gen_xds_features.py writes this table) -->"
END = "<!-- features:end -->"
STATUS = {"honoured": "yes", "partial": "partly", "ignored": "ignored", "rejected": "NACK"}


def table() -> str:
    """The markdown table: one section per resource, one row per field."""
    from meshlib._xds.translate_features import FEATURES

    lines: list[str] = []
    resource = None
    for kind, field, status, note in FEATURES:
        if kind != resource:
            if resource is not None:
                lines.append("")
            lines += [f"**{kind}**", "", "| field | meshlib | note |", "| --- | --- | --- |"]
            resource = kind
        cell = note.replace("|", "\\|")
        lines.append(f"| `{field}` | {STATUS[status]} | {cell} |")
    return "\n".join(lines)


def rendered(text: str) -> str:
    """``text`` (docs/xds.md) with the table between the markers replaced by :func:`table`'s."""
    head, sep, rest = text.partition(START)
    _, sep2, tail = rest.partition(END)
    if not sep or not sep2:
        raise SystemExit(f"{DOC}: the markers {START!r} and {END!r} are missing")
    return f"{head}{START}\n{table()}\n{END}{tail}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail with a diff instead of writing")
    args = parser.parse_args()
    current = DOC.read_text()
    wanted = rendered(current)
    if args.check:
        if current != wanted:
            diff = difflib.unified_diff(
                current.splitlines(), wanted.splitlines(), "docs/xds.md", "FEATURES", lineterm=""
            )
            print("\n".join(diff))
            print("docs/xds.md is out of date: run python docs/gen_xds_features.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(wanted)
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
