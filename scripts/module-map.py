#!/usr/bin/env python3
"""The module map in README.md, generated from each source file's `//!` comment.

Every file under src/ is listed with the first sentence of its module documentation, grouped by
top-level module in the order data flows through them. README.md holds the table between the
markers `<!-- module-map:start -->` and `<!-- module-map:end -->`.

    scripts/module-map.py            # print the table
    scripts/module-map.py --write    # put it into README.md
    scripts/module-map.py --check    # exit 1 when README.md's table differs (CI)
"""

import argparse
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
README = ROOT / "README.md"
START, END = "<!-- module-map:start -->", "<!-- module-map:end -->"
# Configuration first, then a request's way through, then what serves both.
ORDER = [
    "main", "lib", "cli", "config", "snapshot", "live", "watch", "server", "tls", "connection", "proxy",
    "route", "access", "upstream", "body", "headers", "pages", "metrics", "logs", "explain",
]


def first_sentence(path):
    doc = []
    for line in path.read_text().splitlines():
        if not line.startswith("//!"):
            break
        text = line[3:].strip()
        if not text:
            break
        doc.append(text)
    joined = " ".join(doc)
    match = re.match(r"(.+?[.])(\s|$)", joined)
    sentence = match.group(1) if match else joined
    return sentence.rstrip(".").replace("|", "\\|")


def table():
    files = sorted(SRC.rglob("*.rs"))
    top = lambda p: p.relative_to(SRC).parts[0].removesuffix(".rs")
    rank = lambda p: (ORDER.index(top(p)) if top(p) in ORDER else len(ORDER), top(p),
                      p.name not in ("mod.rs",), str(p))
    rows = ["| file | what it is for (its `//!` comment) |", "| --- | --- |"]
    for path in sorted(files, key=rank):
        rows.append(f"| `{path.relative_to(SRC)}` | {first_sentence(path) or '(no module comment)'} |")
    return "\n".join(rows) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    generated = table()
    if not (args.write or args.check):
        sys.stdout.write(generated)
        return 0
    text = README.read_text()
    if START not in text or END not in text:
        print(f"README.md has no {START} ... {END} block", file=sys.stderr)
        return 1
    before, rest = text.split(START, 1)
    current, after = rest.split(END, 1)
    wanted = f"{START}\n{generated}{END}"
    if args.check:
        if current.strip() != generated.strip():
            print("README.md's module map differs from the modules' //! comments: run scripts/module-map.py --write",
                  file=sys.stderr)
            return 1
        print(f"module map: {generated.count(chr(10)) - 2} files, README.md up to date")
        return 0
    README.write_text(before + wanted + after)
    return 0


if __name__ == "__main__":
    sys.exit(main())
