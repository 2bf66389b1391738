"""The documentation cannot drift from the code: every ``relaybus`` command, option and
``RELAYBUS_*`` setting it names exists, docs/configuration.md is what the settings
generate, and no stale phrase survives."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from relaybus.cli.configuration import SECTIONS, render
from relaybus.cli.main import load_command, registered

REPO = Path(__file__).resolve().parents[2]
DOCS = sorted([REPO / "README.md", *(REPO / "docs").glob("*.md"), *REPO.glob("examples/*/*.md")])
# Environment variables the docs may name that are not settings fields.
NOT_SETTINGS = {
    "RELAYBUS_CHECKOUT",  # the README's path to this repository
}
STALE = [
    r"\bissue \d+",
    r"\bissues? #\d+",
    r"not built yet",
    r"[Aa]rrives with the",
    r"\bTODO\b",
    r"\bDESIGN\.md\b",
    r"shop\.app:app",
]


def _code(text: str) -> list[str]:
    """Inline code spans and the lines of fenced blocks."""
    blocks = re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S)
    rest = re.sub(r"```[a-z]*\n.*?```", "", text, flags=re.S)
    spans = re.findall(r"`([^`\n]+)`", rest)
    return spans + [line for block in blocks for line in block.splitlines()]


def _invocations(snippet: str) -> list[list[str]]:
    """``relaybus …`` invocations in a snippet: words up to a shell operator."""
    found = []
    for match in re.finditer(r"(?:^|[\s(;&|$])relaybus((?:\s+[^\s|;&)#`]+)*)", snippet):
        words = match.group(1).split()
        found.append(words)
    return found


def _resolve(words: list[str]) -> tuple[Any, list[str]] | None:
    """The click command the words name, and the words after it; None when the first
    word is not a command name at all (prose like "relaybus itself")."""
    if not words or words[0] not in registered():
        return None
    command = load_command(words[0])
    rest = words[1:]
    while hasattr(command, "commands") and rest and rest[0] in command.commands:
        command = command.commands[rest[0]]
        rest = rest[1:]
    return command, rest


def _options(command: Any) -> set[str]:
    names = {"--help"}
    for param in command.params:
        names.update(getattr(param, "opts", []))
        names.update(getattr(param, "secondary_opts", []))
    return names


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_command_and_option_named_exists(doc: Path) -> None:
    problems = []
    for snippet in _code(doc.read_text()):
        for words in _invocations(snippet):
            if not words or words[0].startswith(("-", "<", "[", "{", "$")):
                continue
            if not re.fullmatch(r"[a-z][a-z0-9-]*", words[0]):
                continue
            resolved = _resolve(words)
            if resolved is None:
                problems.append(f"no command: relaybus {words[0]}  ({snippet.strip()[:80]})")
                continue
            command, rest = resolved
            if hasattr(command, "commands") and rest and re.fullmatch(r"[a-z-]+", rest[0]):
                problems.append(f"no sub-command: relaybus {' '.join(words[:2])}")
            known = _options(command)
            for word in rest:
                for option in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", word):
                    if option not in known:
                        problems.append(f"no option {option} of: relaybus {' '.join(words)}")
    assert not problems, "\n".join(sorted(set(problems)))


SETTINGS = {
    f"{cls.model_config.get('env_prefix', '')}{name}".upper()
    for _, cls, _ in SECTIONS
    for name in cls.model_fields
}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_setting_named_exists(doc: Path) -> None:
    named = set(re.findall(r"\bRELAYBUS_[A-Z0-9_]*[A-Z0-9]\b", doc.read_text()))
    unknown = {
        name
        for name in named - SETTINGS - NOT_SETTINGS
        # "RELAYBUS_KAFKA_SASL_USERNAME / _PASSWORD"-style prefixes of real names
        if not any(real.startswith(name + "_") for real in SETTINGS)
    }
    assert not unknown, sorted(unknown)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_no_stale_phrase(doc: Path) -> None:
    text = doc.read_text()
    found = [m.group(0) for pattern in STALE for m in re.finditer(pattern, text)]
    assert not found, found


def test_configuration_md_is_generated_from_the_settings() -> None:
    assert (REPO / "docs" / "configuration.md").read_text() == render(), (
        "docs/configuration.md is stale: make docs"
    )


def test_the_readme_stays_short() -> None:
    assert len((REPO / "README.md").read_text().splitlines()) <= 300
