"""Finding the code in what the model wrote. Models forget closing fences, add prose, or write several blocks;
the last complete block is taken as the final answer, an unclosed final block as an attempt at one."""

from __future__ import annotations

import re

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)```", re.DOTALL)
_OPEN = re.compile(r"```[ \t]*[A-Za-z0-9_+-]*[^\n]*\n(.*)\Z", re.DOTALL)
CODE_LANGS = {"", "python", "py", "python3", "repl"}


def extract_code(text: str) -> str | None:
    """The last complete fenced code block; else an unclosed trailing one; else bare code; else None."""
    blocks = [body for lang, body in _FENCE.findall(text) if lang.lower() in CODE_LANGS]
    if blocks:
        return blocks[-1].strip("\n") or None
    tail = text[text.rfind("```"):] if "```" in text else ""
    if tail and (match := _OPEN.match(tail)):
        return match.group(1).strip("\n") or None
    if re.search(r"^\s*(import|from)\s+\w+", text, re.MULTILINE):
        return text.strip("\n")
    return None
