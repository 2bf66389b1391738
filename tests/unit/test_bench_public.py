"""bench/ measures relaybus through its public names only: a benchmark that reaches
into a private helper stops measuring what users run (or breaks on a refactor)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_bench_imports_and_calls_no_private_relaybus_name() -> None:
    problems = []
    for path in sorted((REPO / "bench").glob("*.py")):
        tree = ast.parse(path.read_text())
        relaybus_names: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("relaybus"):
                for alias in node.names:
                    relaybus_names.add(alias.asname or alias.name)
                    if alias.name.startswith("_"):
                        problems.append(f"{path.name}: imports {node.module}.{alias.name}")
                if any(part.startswith("_") for part in (node.module or "").split(".")):
                    problems.append(f"{path.name}: imports from {node.module}")
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and isinstance(node.value, ast.Name)
                and node.value.id not in ("self", "cls")
            ):
                problems.append(f"{path.name}:{node.lineno}: {node.value.id}.{node.attr}")
    assert not problems, "\n".join(problems)
