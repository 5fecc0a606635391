"""Reading reflections as real VLMs write them, into the four fields of a critique.

Accepted, in any case and with chatter before, after and between the fields:
- the line format (`verdict: wrong`), also as markdown bullets, numbered items and **bold** keys;
- a key alone on its line (a heading `## Verdict`, `**Defects:**`) with its value on the lines
  below (a list of bullets, or one line), up to a blank line or the next key;
- a JSON object, bare or in a ```json fence (keys as below; lists or ';'-separated strings).
Keys have synonyms (`instruction:`, `fix:`, `issues:`, `final verdict:` ...) and verdicts too
(`correct`/`incorrect`, `yes`/`no`, `does not match` ...). Anything else raises CritiqueError.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from policies.critique import REGENERATE, CritiqueError

KEYS = {
    "verdict": ("verdict", "judgment", "judgement", "assessment", "decision", "result", "answer", "conclusion",
                "evaluation", "is it correct", "matches prompt", "status"),
    "observations": ("seen", "observations", "observation", "observed", "what i see", "i see", "description",
                     "image description", "contents", "objects", "visible", "analysis"),
    "defects": ("wrong", "defects", "defect", "issues", "issue", "problems", "problem", "errors", "error",
                "mistakes", "discrepancies", "differences", "mismatches", "what is wrong", "missing"),
    "instruction": ("edit", "instruction", "instructions", "fix", "edit instruction", "correction",
                    "suggested edit", "suggested fix", "suggestion", "action", "revision", "next step",
                    "how to fix", "to fix", "edit prompt", "editing instruction"),
}
FIELD_OF = {name: f for f, names in KEYS.items() for name in names}
LINE_NAME = {"verdict": "verdict", "observations": "seen", "defects": "wrong", "instruction": "edit"}
KEY_PREFIXES = ("final ", "overall ", "my ", "the ", "your ")

RIGHT = {"right", "correct", "yes", "pass", "passed", "passes", "good", "ok", "okay", "true", "matches", "match",
         "satisfied", "satisfies", "accurate", "acceptable", "success", "faithful", "✓", "✅"}
WRONG = {"wrong", "incorrect", "no", "fail", "failed", "fails", "bad", "false", "mismatch", "mismatched",
         "unsatisfied", "inaccurate", "unacceptable", "failure", "✗", "❌"}
NEGATORS = {"not", "isn't", "doesn't", "don't", "never", "partially", "partly", "mostly", "almost", "nearly"}
NOTHING = {"", "none", "nothing", "n/a", "na", "-", "null", "nil", "no edit", "no edit needed", "no edits",
           "no changes", "no change", "no changes needed", "no change needed", "not needed", "not applicable",
           "none needed", "no fix needed", "no issues", "no defects", "no problems"}
AGAIN = ("regenerate", "start over", "redraw", "generate again", "generate a new image", "try again")

BULLET = re.compile(r"^\s*(?:[-*+•]|\d+[.)])\s+")
MARKUP = re.compile(r"[*_`#>]+")


@dataclass
class Fields:
    verdict: str = ""
    observations: list[str] = field(default_factory=list)
    defects: list[str] = field(default_factory=list)
    instruction: str | None = None


def clean(text: str) -> str:
    """Markdown, quotes, a JSON line's trailing comma and a sentence's full stop off; spaces collapsed."""
    text = MARKUP.sub("", BULLET.sub("", text))
    text = " ".join(text.split()).strip().rstrip(",").strip().strip("\"'“”").strip()
    return text.rstrip(".").strip()


def field_of(key: str) -> str | None:
    """The field a key names; a key may end a sentence of chatter ("Does it match? Verdict: no")."""
    key = re.sub(r"\(.*?\)", "", clean(key).lower()).strip().strip("\"'")
    key = re.split(r"[.?!]\s+", key)[-1]
    for prefix in KEY_PREFIXES:
        key = key.removeprefix(prefix)
    return FIELD_OF.get(key.strip())


def verdict_of(value: str) -> str:
    words = re.findall(r"[a-z']+|[✓✅✗❌]", value.lower())
    for i, word in enumerate(words):
        if word in NEGATORS and set(words[i + 1:i + 4]) & RIGHT:
            return "wrong"
        if word in WRONG:
            return "wrong"
        if word in RIGHT:
            return "right"
    raise CritiqueError(f"the verdict must be 'right' or 'wrong', not {clean(value)!r}")


def items_of(lines: list[str]) -> list[str]:
    """One inline value split on ';', or one item per line of a list."""
    if len(lines) == 1:
        parts = [clean(p) for p in lines[0].split(";")]
    else:
        parts = [clean(line) for line in lines]
    parts = [p for p in parts if p]
    return [] if len(parts) == 1 and parts[0].lower() in NOTHING else parts


def instruction_of(lines: list[str]) -> str | None:
    text = "; ".join(p for p in (clean(line) for line in lines) if p)
    plain = text.lower().strip(" .!")
    if plain in NOTHING:
        return None
    if plain.startswith(AGAIN):
        return REGENERATE
    return text


def heading(raw: str) -> str | None:
    """The field a line without a colon names: a markdown heading or a bold key (never a verdict word)."""
    line = raw.strip()
    if not line.startswith(("#", "*", "_")) or clean(line).lower() in RIGHT | WRONG:
        return None
    return field_of(line)


def split_lines(text: str) -> dict[str, list[str]]:
    """field -> the lines of its value, from the line format, bullets, bold keys or headings."""
    found: dict[str, list[str]] = {}
    current, started = None, False
    for raw in text.splitlines():
        key, sep, value = MARKUP.sub("", BULLET.sub("", raw)).partition(":")
        name = field_of(key) if sep else heading(raw)
        if name is not None and name == current:  # "- Issue: ..." in a list of issues: an item
            found[current].append(value if sep else raw)
            started = True
            continue
        if name is not None:
            lines = [value] if sep and clean(value) else []
            if found.get(name):  # the field again: the same value, or a heading naming it
                if lines and [clean(x) for x in found[name]] != [clean(x) for x in lines]:
                    raise CritiqueError(f"the field {LINE_NAME[name]!r} appears twice")
                current = None
                continue
            found[name] = lines
            current, started = (None, False) if lines else (name, False)
            continue
        if current is None:
            continue  # a model may think aloud between the fields
        if not raw.strip():
            if started:
                current = None  # a blank line closes a list that has begun
            continue
        found[current].append(raw)
        started = True
    return found


def json_object(text: str) -> dict | None:
    """The first JSON object in the text (a ```json fence first), or None."""
    fences = re.findall(r"```(?:json)?\s*(\{.*?\})\s*```", text, flags=re.DOTALL | re.IGNORECASE)
    candidates = fences + ([text[text.index("{"): text.rindex("}") + 1]] if "{" in text and "}" in text else [])
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(value, dict):
            if not any(field_of(k) for k in value):  # {"critique": {...}}: one level down
                inner = [v for v in value.values() if isinstance(v, dict)]
                value = inner[0] if len(inner) == 1 else value
            if any(field_of(k) for k in value):
                return value
    return None


def from_json(obj: dict) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for key, value in obj.items():
        name = field_of(str(key))
        if name is None:
            continue
        if name in found:
            raise CritiqueError(f"the field {LINE_NAME[name]!r} appears twice")
        if isinstance(value, bool):
            value = "right" if value else "wrong"
        if value is None:
            found[name] = []
        elif isinstance(value, list):
            found[name] = [str(v) for v in value if v is not None]
        else:
            found[name] = [str(value)]
    return found


def read_fields(text: str) -> Fields:
    if not isinstance(text, str):
        raise CritiqueError(f"a reflection is text, not {type(text).__name__}")
    obj = json_object(text)
    found = from_json(obj) if obj is not None else split_lines(text)
    if not found.get("verdict"):
        raise CritiqueError("no 'verdict:' line")
    return Fields(verdict=verdict_of(" ".join(found["verdict"])), observations=items_of(found.get("observations", [])),
                  defects=items_of(found.get("defects", [])), instruction=instruction_of(found.get("instruction", [])))
