"""Lines per module and the longest function of a package: `python tools/census.py ablate`.

For the house's size before and after a change, e.g. against an older commit:
`git archive abf9a9b ablate | tar -x -C /tmp/old && python tools/census.py /tmp/old/ablate`.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path


def main(root: str) -> None:
    rows, longest = [], (0, "")
    for path in sorted(Path(root).rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        rows.append((len(source.splitlines()), path))
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > longest[0]:
                    longest = (length, f"{path}:{node.name}")
    print(f"{len(rows)} modules, {sum(n for n, _ in rows)} lines; longest function: {longest[1]} ({longest[0]} lines)")
    for n, path in sorted(rows, key=lambda r: -r[0]):
        print(f"{n:6d}  {path}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "ablate")
