"""Prompt/response text pairs from JSON or JSONL files, in the formats the shared data uses.

Recognised rows (one object per JSONL line, or a JSON list of objects):
- ShareGPT pairs: `{id, prompt, response}`, with an optional `output_tokens` (the response's length as the
  model that wrote it counted it; `s3exec.lab.own_lengths` writes such rows)
- ShareGPT conversations: `{id, conversations: [{from: human, value}, {from: gpt, value}, ...]}` (first turn)
- Alpaca: `{instruction, input, output}` (the prompt is the instruction, plus a newline and the input)
- AlpacaEval: `{instruction, output, generator}` (one file per answering model)
Every reader error names the file, the row and the fields that would be valid.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from s3sim.core.errors import ConfigError
from s3sim.inputs import note

EXPECTED = ("'prompt' and 'response' (ShareGPT pairs), 'conversations' (ShareGPT), "
            "or 'instruction' and 'output' (Alpaca, AlpacaEval)")


@dataclass(frozen=True, slots=True)
class TextPair:
    key: str
    prompt: str
    response: str
    output_tokens: int | None = None  # the response's length in tokens where the file says it (generated rows)


def prompt_hash(prompt: str) -> int:
    """A stable 64-bit hash of the prompt text: splits are by prompt, so duplicates stay on one side."""
    return int.from_bytes(hashlib.blake2b(prompt.strip().encode("utf-8"), digest_size=8).digest(), "little")


def _read_text(path: Path) -> str:
    """A data file's text: one line naming the file if it is missing or not UTF-8."""
    if not path.is_file():
        raise ConfigError(f"data file not found: {path}")
    note(path)
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: byte at offset {e.start} is not UTF-8 text") from None


def _where(path: Path, where) -> str:
    """How an error names a row: an item of a JSON list, or a line of a JSONL file."""
    return f"{path} {_row_name(path, where)}"


def _row_name(path: Path, where) -> str:
    return f"{'item' if isinstance(where, int) and path.suffix == '.json' else 'line'} {where}"


def _text(row: dict, field: str, where: str, optional: bool = False, name: str | None = None) -> str:
    """A row's text field, as it is: a JSON string (`optional`: null or absent reads as ""). Anything else is
    one error naming the row and the field: str() of it would be scored as the text "None" or "['a']"."""
    value = row.get(field)
    if value is None and optional:
        return ""
    if not isinstance(value, str):
        shown = json.dumps(value)
        raise ConfigError(f"{where}: {name or field} must be text (a JSON string), got "
                          f"{shown if len(shown) <= 40 else shown[:37] + '...'}")
    return value


def _instruction_prompt(row: dict, where: str = "row") -> str:
    """An Alpaca-style prompt: the instruction, plus a newline and the input when there is one."""
    inp = _text(row, "input", where, optional=True)
    return _text(row, "instruction", where) + ("\n" + inp if inp else "")


def _rows(path: Path) -> list:
    text = _read_text(path)
    if not text.strip():
        raise ConfigError(f"{path} is empty: expected JSON or JSONL rows with {EXPECTED}")
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} line {e.lineno}: not valid JSON ({e.msg})") from None
        return [(i, r) for i, r in enumerate(rows)]
    return list(json_lines(text, str(path), objects=False))


def json_lines(text: str, where: str, objects: bool = True):
    """(line number, value) of every non-blank line of JSONL `text`; a line that is not JSON (or, with
    `objects`, not a JSON object) is one error naming `where` and the line."""
    for n, line in enumerate(text.split("\n"), 1):  # not splitlines: JSON strings may hold U+2028
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{where} line {n}: not valid JSON ({e.msg})") from None
        if objects and not isinstance(value, dict):
            raise ConfigError(f"{where} line {n}: expected a JSON object, got {type(value).__name__}")
        yield n, value


def _pair(row, where: str, index: int) -> TextPair | None:
    if not isinstance(row, dict):
        raise ConfigError(f"{where}: expected an object with {EXPECTED}, got {type(row).__name__}")
    key = str(row.get("id", index))
    if "prompt" in row and "response" in row:
        n = row.get("output_tokens")
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ConfigError(f"{where}: output_tokens must be a positive integer (the response's length in "
                              f"tokens) or absent, got {n!r}")
        return TextPair(key, _text(row, "prompt", where), _text(row, "response", where), n)
    if "conversations" in row:
        turns = row["conversations"] or []
        if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
            bad = turns if not isinstance(turns, list) else next(t for t in turns if not isinstance(t, dict))
            raise ConfigError(f"{where}: conversations must be a list of {{\"from\": ..., \"value\": ...}} objects, "
                              f"got a {type(bad).__name__}")
        human = next((t for t in turns if t.get("from") in ("human", "user")), None)
        gpt = next((t for t in turns if t.get("from") in ("gpt", "assistant", "chatgpt")), None)
        if human is None or gpt is None or human.get("value") is None or gpt.get("value") is None:
            return None  # a conversation without both turns' text is skipped, as it always was
        return TextPair(key, _text(human, "value", where, name="the first human turn's value"),
                        _text(gpt, "value", where, name="the first reply's value"))
    if "instruction" in row and "output" in row:
        return TextPair(key, _instruction_prompt(row, where), _text(row, "output", where))
    raise ConfigError(f"{where}: no prompt/response fields; found {sorted(row)[:6]}, expected {EXPECTED}")


def read_pairs(path, skipped: list | None = None) -> list[TextPair]:
    """Every pair in the file, in file order. Conversations without both turns' text are skipped (their rows
    appended to `skipped` where given: `pair_notes` says so)."""
    path = Path(path)
    pairs = []
    for i, (where, row) in enumerate(_rows(path)):
        p = _pair(row, _where(path, where), i)
        if p is not None:
            pairs.append(p)
        elif skipped is not None:
            skipped.append(where)
    if not pairs:
        raise ConfigError(f"{path} holds no prompt/response pairs: expected rows with {EXPECTED}")
    return pairs


def pair_notes(path, pairs: list[TextPair], skipped: list) -> list[str]:
    """What a reader of the pairs should know: conversations skipped, and prompts that are empty (kept: the
    predictor is trained and scored on them as they are, as a server would be asked them)."""
    notes = []
    if skipped:
        notes.append(f"note: {path}: {len(skipped):,} conversation(s) without a human turn and a reply left out "
                     f"({_row_name(Path(path), skipped[0])} the first)")
    empty = sum(not p.prompt.strip() for p in pairs)
    if empty:
        notes.append(f"note: {path}: {empty:,} of {len(pairs):,} prompts are empty (or blank), kept as they are")
    return notes


PROMPT_FIELDS = "'prompt', 'instruction' (with an optional 'input'), 'conversations' or 'text'"


def _prompt(row, where: str) -> str:
    if not isinstance(row, dict):
        raise ConfigError(f"{where}: expected an object with {PROMPT_FIELDS}, got {type(row).__name__}")
    if "prompt" in row or "text" in row:
        text = row.get("prompt", row.get("text"))
    elif "instruction" in row:
        text = _instruction_prompt(row, where)
    elif "conversations" in row and isinstance(row["conversations"], list):
        text = next((t.get("value") for t in row["conversations"]
                     if isinstance(t, dict) and t.get("from") in ("human", "user")), None)
    else:
        raise ConfigError(f"{where}: no prompt text; found {sorted(row)[:6]}, expected {PROMPT_FIELDS}")
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"{where}: the prompt is empty or not text ({text!r:.40}); every row needs prompt text")
    return text


def read_prompts(path) -> list[tuple[str, str]]:
    """(key, prompt) of every row of a prompt file: JSON/JSONL rows in any format above (no response needed,
    or a bare `{"prompt": ...}` / `{"text": ...}`), or a .txt file with one prompt per non-blank line."""
    path = Path(path)
    if path.suffix == ".txt":
        out = [(str(n), line) for n, line in enumerate(_read_text(path).split("\n"), 1) if line.strip()]
    else:
        out, first = [], {}
        for i, (where, row) in enumerate(_rows(path)):
            key = str(row.get("id", i)) if isinstance(row, dict) else str(i)
            out.append((key, _prompt(row, _where(path, where))))
            if key in first:  # the output is keyed by id: two rows of one key could not be told apart
                raise ConfigError(f"{_where(path, where)}: id {key!r} repeats that of {_where(path, first[key])}; "
                                  f"every prompt needs its own id (or none: its position)")
            first[key] = where
    if not out:
        raise ConfigError(f"{path} holds no prompts: expected rows with {PROMPT_FIELDS}, or lines of text (.txt)")
    return out
