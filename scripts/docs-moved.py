#!/usr/bin/env python3
"""Lines of an earlier README that are in neither README.md nor docs/ (nothing lost in a move).

    git show REV:README.md | scripts/docs-moved.py

Compares non-blank lines with surrounding whitespace and a heading's leading #s removed (a
section moved into docs/ changes level). Prints each missing line and a count; exits 1 if any
is missing. For merging README edits made before the move into docs/: what it prints is what
still has to be placed (or was rewritten on purpose).
"""
import pathlib
import re
import sys


def norm(line):
    return re.sub(r"^#+\s*", "", line.strip())


root = pathlib.Path(__file__).resolve().parent.parent
old = [norm(l) for l in sys.stdin.read().split("\n") if l.strip()]
have = set()
for f in [root / "README.md", *sorted((root / "docs").rglob("*.md"))]:
    have.update(norm(l) for l in f.read_text().split("\n") if l.strip())
missing = [l for l in old if l not in have]
for l in missing:
    print("missing:", l)
print(f"{len(old)} lines checked, {len(missing)} missing")
sys.exit(1 if missing else 0)
