#!/usr/bin/env python3
"""Import loops between gatehouse's top-level modules.

Every file under src/ counts in its top-level module (src/x.rs or src/x/...). The `crate::`,
`super::` and `self::` paths in its code (comments and string literals removed; `use` groups
such as `crate::{a, b::c}` expanded) that name another top-level module are edges of a graph;
its strongly connected components of more than one module are the loops.

Exit status 1 when a loop has more than --max modules (default 3), or joins `snapshot` with
`metrics` or `upstream` (the compiled configuration must not know the live state); 0 otherwise.

    scripts/module-cycles.py            # the loops, and whether they pass
    scripts/module-cycles.py --edges    # also every edge, with the files that make it
"""

import argparse
import pathlib
import re
import sys
from collections import defaultdict

SRC = pathlib.Path(__file__).resolve().parent.parent / "src"
FORBIDDEN_TOGETHER = [("snapshot", "metrics"), ("snapshot", "upstream")]


def strip_comments_and_strings(text):
    """Remove comments, string and char literals, keeping line structure irrelevant."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif c == "r" and re.match(r'r#*"', text[i:i + 10]) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            hashes = re.match(r'r(#*)"', text[i:]).group(1)
            end = text.find('"' + hashes, i + 2 + len(hashes))
            i = n if end < 0 else end + 1 + len(hashes)
            out.append('""')
        elif c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
            i += 1
            out.append('""')
        elif c == "'" and re.match(r"'(\\.|[^\\'])'", text[i:i + 4]) or text.startswith("'\\u{", i):
            end = text.find("'", i + 2)
            i = end + 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def expand_group(text, start):
    """The first segments of the paths in a `{...}` group starting at text[start] == '{'."""
    names, depth, token, expect_name = [], 0, "", True
    for i in range(start, len(text)):
        c = text[i]
        if c == "{":
            depth += 1
            if depth == 1:
                expect_name, token = True, ""
            continue
        if c == "}":
            depth -= 1
            if depth == 0:
                if token and expect_name:
                    names.append(token)
                return names
            continue
        if depth != 1:
            continue
        if c == ",":
            if token and expect_name:
                names.append(token)
            token, expect_name = "", True
        elif c.isalnum() or c == "_":
            if expect_name:
                token += c
        elif c == ":" or c.isspace():
            if token and expect_name:
                names.append(token)
                token, expect_name = "", False
    return names


def module_path(path):
    """The module path of a file: src/a/b.rs -> [a, b]; src/a/mod.rs -> [a]."""
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "mod":
        parts.pop()
    return parts


def referenced_modules(path, top_level):
    """Top-level modules that the file's paths name."""
    text = strip_comments_and_strings(path.read_text())
    here = module_path(path)
    found = set()
    for match in re.finditer(r"\b(crate|self|super)((?:\s*::\s*super)*)\s*::\s*(\{|[A-Za-z_][A-Za-z0-9_]*)", text):
        root, supers, first = match.group(1), match.group(2), match.group(3)
        if root == "crate":
            base = []
        elif root == "self":
            base = here
        else:
            ups = 1 + supers.count("super")
            base = here[:-ups] if ups <= len(here) else []
        names = expand_group(text, match.start(3)) if first == "{" else [first]
        for name in names:
            full = base + [name]
            if full and full[0] in top_level:
                found.add(full[0])
    return found


def strongly_connected(graph, nodes):
    index, low, on_stack, stack, result, counter = {}, {}, set(), [], [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == node:
                    break
            result.append(sorted(component))

    for node in sorted(nodes):
        if node not in index:
            visit(node)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max", type=int, default=3, help="largest loop allowed (modules)")
    parser.add_argument("--edges", action="store_true", help="print every edge and the files behind it")
    args = parser.parse_args()
    sys.setrecursionlimit(10000)

    files = sorted(p for p in SRC.rglob("*.rs") if p.name not in ("lib.rs", "main.rs") or p.parent != SRC)
    top_level = {module_path(p)[0] for p in files}
    graph = defaultdict(set)
    because = defaultdict(set)
    for path in files:
        source = module_path(path)[0]
        for target in referenced_modules(path, top_level):
            if target != source:
                graph[source].add(target)
                because[(source, target)].add(str(path.relative_to(SRC.parent)))

    if args.edges:
        for (source, target), paths in sorted(because.items()):
            print(f"{source} -> {target}: {', '.join(sorted(paths))}")
    loops = [c for c in strongly_connected(graph, top_level) if len(c) > 1]
    failed = False
    for loop in sorted(loops, key=len, reverse=True):
        problems = []
        if len(loop) > args.max:
            problems.append(f"more than {args.max} modules")
        for a, b in FORBIDDEN_TOGETHER:
            if a in loop and b in loop:
                problems.append(f"joins {a} with {b}")
        failed |= bool(problems)
        verdict = "FAIL: " + "; ".join(problems) if problems else "ok"
        print(f"loop of {len(loop)}: {', '.join(loop)} ({verdict})")
        for source in loop:
            for target in sorted(graph[source] & set(loop)):
                print(f"    {source} -> {target}: {', '.join(sorted(because[(source, target)]))}")
    print(f"{len(top_level)} top-level modules, {len(loops)} loop(s); largest allowed {args.max}: {'FAIL' if failed else 'pass'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
