"""What ``docker build .`` would send: the files of a folder that its ``.dockerignore`` keeps,
and the Dockerfile and compose file read as data. No Docker engine runs here, so the tests
check the build context and the files' wiring with these instead.

``.dockerignore`` rules as Docker applies them: patterns are slash-separated paths relative to
the context root (a leading or trailing ``/`` is dropped), ``*`` and ``?`` stay within one
segment, ``**`` spans any number of them, a pattern that matches a folder matches everything
under it, ``!`` re-includes, and the last pattern that matches a path decides.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Rule:
    regex: re.Pattern[str]
    include: bool  # a ``!`` pattern
    pattern: str


def _to_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def parse_dockerignore(text: str) -> list[Rule]:
    rules = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        include = line.startswith("!")
        pattern = line[1:].strip() if include else line
        pattern = os.path.normpath(pattern).strip("/")
        rules.append(Rule(_to_regex(pattern), include, pattern))
    return rules


def ignored(rules: list[Rule], path: str) -> bool:
    """Whether ``path`` (relative, slash-separated) is left out of the context."""
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]  # parents, then itself
    verdict = False
    for rule in rules:
        if any(rule.regex.match(c) for c in candidates):
            verdict = not rule.include
    return verdict


def build_context(root: Path) -> set[str]:
    """Every file under ``root`` that ``docker build root`` would send."""
    rules = parse_dockerignore((root / ".dockerignore").read_text(encoding="utf-8"))
    includes = [r.pattern for r in rules if r.include]
    kept: set[str] = set()
    for folder, dirs, files in os.walk(root):
        rel = Path(folder).relative_to(root).as_posix()
        prefix = "" if rel == "." else f"{rel}/"
        # Skip a folder that is ignored and that no ``!`` pattern reaches into (.git, .venv).
        dirs[:] = [
            d
            for d in dirs
            if not ignored(rules, prefix + d)
            or any(p.startswith(prefix + d + "/") or p.startswith("**") for p in includes)
        ]
        kept.update(prefix + f for f in files if not ignored(rules, prefix + f))
    return kept


@dataclass(frozen=True)
class Instruction:
    stage: int  # 0-based FROM index
    keyword: str
    args: str


def dockerfile_instructions(text: str) -> list[Instruction]:
    """The instructions of a Dockerfile, continuation lines joined, comments dropped."""
    joined, buffer = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not buffer and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            buffer += stripped[:-1] + " "
            continue
        joined.append(buffer + stripped)
        buffer = ""
    instructions, stage = [], -1
    for line in joined:
        keyword, _, args = line.partition(" ")
        if keyword.upper() == "FROM":
            stage += 1
        instructions.append(Instruction(stage, keyword.upper(), args.strip()))
    return instructions


class MissingVariable(KeyError):
    """A ``${NAME:?message}`` whose variable is unset or empty: compose refuses to start."""


_VARIABLE = re.compile(
    r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
)


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's variable substitution: ``${NAME}``, ``${NAME:-default}``, ``${NAME-default}``,
    ``${NAME:?error}``, ``${NAME?error}`` and ``$$`` for a literal ``$``."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group("name"), match.group("op"), match.group("arg") or ""
        present = name in env
        usable = present and (env[name] != "" or op in ("-", "?"))
        if op in (":-", "-"):
            return env[name] if usable else arg
        if op in (":?", "?") and not usable:
            raise MissingVariable(f"{name}: {arg}")
        return env.get(name, "")

    return _VARIABLE.sub(replace, value)
