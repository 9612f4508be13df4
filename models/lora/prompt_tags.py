"""AUTOMATIC1111's prompt syntax for LoRAs: `<lora:name:0.8>` (and `<lora:name>` = 1.0).

`parse_lora_tags` takes the tags out of a prompt (the text encoder must not see them) and
returns what they ask for; `lookup_loras` checks the names against the LoRAs a model has.
Tags may sit anywhere; the prompt is rejoined so that removing one leaves no double space and
no space before punctuation ("a cat <lora:x:1>, oil" -> "a cat, oil"). A name runs up to the
first colon; the scale is one decimal number (negative allowed, as in A1111). A malformed tag
(no name, a scale that is not a number, A1111's separate text-encoder/UNet multipliers, an
unclosed `<lora:`) is an InvalidInput error quoting the tag, never text passed to the model.
A name given twice counts twice: the two updates add, as the merge is linear.
"""

from __future__ import annotations

import math
import re

from ..errors import InvalidInput

TAG = re.compile(r"<lora:([^<>]*)>", re.IGNORECASE)
OPEN = re.compile(r"<lora:", re.IGNORECASE)
NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
_NO_SPACE_BEFORE = tuple(",.;:!?)]}>\n")
_NO_SPACE_AFTER = tuple("([{<\n")


def parse_scale(text: str, what: str) -> float:
    """A decimal number (no nan/inf, no underscores: only what a person types as a scale)."""
    text = text.strip()
    if not NUMBER.fullmatch(text):
        raise InvalidInput(f"{what}: the scale {text!r} is not a number (write e.g. 0.8)", "bad_lora_tag")
    value = float(text)
    if not math.isfinite(value):
        raise InvalidInput(f"{what}: the scale {text!r} is too large", "bad_lora_tag")
    return value


def _tag(body: str, tag: str) -> tuple[str, float]:
    name, sep, rest = body.partition(":")
    name = name.strip()
    if not name:
        raise InvalidInput(f"{tag} names no LoRA (write <lora:name> or <lora:name:0.8>)", "bad_lora_tag")
    if not sep:
        return name, 1.0
    if ":" in rest:
        raise InvalidInput(f"{tag}: give one scale (<lora:{name}:0.8>); separate text-encoder and UNet "
                           "multipliers are not supported", "bad_lora_tag")
    return name, parse_scale(rest, tag)


def _join(left: str, right: str) -> str:
    """left + right where a tag stood between them: one space where either side had some."""
    stripped_left, stripped_right = left.rstrip(" \t"), right.lstrip(" \t")
    gap = stripped_left != left or stripped_right != right
    if not stripped_left or not stripped_right:
        # keep one pending space so that the next piece still knows there was one
        return stripped_left + stripped_right + (" " if gap and stripped_left and not stripped_right else "")
    if stripped_right.startswith(_NO_SPACE_BEFORE) or stripped_left.endswith(_NO_SPACE_AFTER) or not gap:
        return stripped_left + stripped_right
    return stripped_left + " " + stripped_right


def parse_lora_tags(prompt: str) -> tuple[str, list[tuple[str, float]]]:
    """(the prompt without its `<lora:...>` tags, [(name, scale)] in the order given)."""
    if not isinstance(prompt, str):
        raise InvalidInput(f"the prompt must be text, got {type(prompt).__name__}", "bad_prompts")
    tags, pieces, pos = [], [], 0
    for m in TAG.finditer(prompt):
        pieces.append(prompt[pos:m.start()])
        tags.append(_tag(m.group(1), m.group(0)))
        pos = m.end()
    pieces.append(prompt[pos:])
    for piece in pieces:
        m = OPEN.search(piece)
        if m:
            raise InvalidInput(f"unclosed LoRA tag {piece[m.start():m.start() + 40]!r}: write <lora:name:0.8>",
                               "bad_lora_tag")
    if not tags:
        return prompt, []
    text = pieces[0]
    for piece in pieces[1:]:
        text = _join(text, piece)
    return text.rstrip(" \t") if not pieces[-1].strip(" \t") else text, tags


def lookup_loras(requested, available) -> list[tuple[str, float]]:
    """[(name, scale)] with each name as `available` spells it (exact, else the one name that
    matches ignoring case). An unknown name is InvalidInput("unknown_lora") naming it and the
    available ones."""
    names = sorted(available)
    by_lower: dict = {}
    for n in names:
        by_lower.setdefault(n.lower(), []).append(n)
    out = []
    for name, scale in requested:
        if name in available:
            out.append((name, scale))
            continue
        folded = by_lower.get(str(name).lower(), [])
        if len(folded) == 1:
            out.append((folded[0], scale))
            continue
        shown = ", ".join(names[:30]) + (f", ... ({len(names)} in all)" if len(names) > 30 else "")
        raise InvalidInput(f"unknown LoRA {name!r}; available: {shown or 'none (no LoRA is loaded)'}", "unknown_lora")
    return out


def prompt_loras(prompt: str, available) -> tuple[str, list[tuple[str, float]]]:
    """parse_lora_tags then lookup_loras: what a server calls on a request's prompt."""
    text, tags = parse_lora_tags(prompt)
    return text, lookup_loras(tags, available)


__all__ = ["parse_lora_tags", "lookup_loras", "prompt_loras", "parse_scale"]
