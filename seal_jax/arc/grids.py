"""ARC grids: the immutable `Grid` type and the text formats SEAL uses.

A `Grid` is a non-empty rectangular tuple of tuples of ints in 0..9 (ARC colours). Three text formats:

``"numpy"``   the original's TTT/inference format (numpy ``str()`` of an int array; spec section 4.1): cells joined by
              single spaces, the first row opened by ``[[``, every other row by a newline and a space then ``[``, every
              row but the last closed by ``]``, the last by ``]]``; no trailing newline. A 2x3 grid is
              ``"[[0 1 2]\\n [3 4 5]]"``.
``"rows"``    the original's self-edit-prompt format (spec sections 1.2 and 4.3): each row is its cells joined by
              single spaces and ends in ``"\\n"``, no brackets: ``"0 1 2\\n3 4 5\\n"``.
``"compact"`` ours: each row is its digits with no separator, rows joined by ``"\\n"``, no trailing newline:
              ``"012\\n345"``.

`to_text` / `from_text` are exact inverses: `from_text` accepts only the canonical text `to_text` writes (anything
else raises `GridFormatError`), so ``to_text(from_text(s, f), f) == s`` for every accepted ``s``.
`parse_model_grid` is the lenient reader for model output (stops at the ``#`` footer or a special token, accepts
any of the three formats and python-list style ``[[0, 1], [2, 3]]``, rejects ragged grids) and returns None (or
raises with ``strict=True``) when there is no well-formed grid. `parse_grid_original` reproduces the original's
permissive decoder (it silently reshapes ragged answers whose cell count happens to divide evenly).

Prompt layouts built from grids (spec sections 1.2 and 4.2):
- TTT / inference chat (`ttt_messages`): system = instruction paragraph + newline + the line
  ``The input-output grids are provided as python arrays:`` + newline + per demonstration
  ``<input> -> <output>#`` + newline; user = ``<test input> -> ``; assistant (training only) = ``<answer>#``.
  The chat template (`seal_jax.tokenizer`) trims the system and user contents.
- Self-edit prompt demonstrations (`self_edit_demonstrations_text`): per pair a line ``Input:``, the input in
  ``"rows"`` format, a blank line, a line ``Output:``, the output in ``"rows"`` format, then one extra newline.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Sequence

import numpy as np

__all__ = ["FORMATS", "GRID_FORMAT_LINE", "Grid", "GridError", "GridFormatError", "IO_SEP", "OUTPUT_FOOTER",
           "TTT_INSTRUCTION", "as_grid", "grid_shape", "from_text", "pair_text", "parse_grid_original",
           "parse_model_grid", "self_edit_demonstrations_text", "to_text", "ttt_messages"]

Grid = tuple[tuple[int, ...], ...]

FORMATS = ("numpy", "rows", "compact")

IO_SEP = " -> "  # between an input grid and its output grid in the TTT/inference format
OUTPUT_FOOTER = "#"  # closes every output grid (demonstrations and the assistant answer)
GRID_FORMAT_LINE = "The input-output grids are provided as python arrays:"
# Our wording of the instruction paragraph that opens the TTT/inference system message (the original's sentence
# differs; the layout around it is the original's).
TTT_INSTRUCTION = ("Work out the rule that turns each input grid into its output grid in the examples below, then "
                   "apply the same rule to the test input. Answer in exactly the same format.")

_DIGITS = "0123456789"
_SPACED_ROW = re.compile(r"[0-9](?: [0-9])*")
_COMPACT_ROW = re.compile(r"[0-9]+")
_INNER_BRACKETS = re.compile(r"\[([^\[\]]*)\]")
_CELL_SPLIT = re.compile(r"[\s,]+")


class GridError(ValueError):
    """A value that is not a valid ARC grid (not 2-D, empty, ragged, or a cell outside 0..9)."""


class GridFormatError(GridError):
    """Grid text that does not follow the requested format."""


def _snippet(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _as_row(row: Any, r: int) -> tuple[int, ...]:
    if not isinstance(row, (list, tuple, np.ndarray)):
        raise GridError(f"row {r} is a {type(row).__name__}, not a list of cells")
    if all(type(v) is int for v in row):  # fast path: plain ints (JSON, tuples)
        cells = tuple(row)
    else:
        cells = []
        for c, v in enumerate(row):
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
                raise GridError(f"cell ({r}, {c}) is {v!r}, not an int")
            cells.append(int(v))
        cells = tuple(cells)
    if cells and (min(cells) < 0 or max(cells) > 9):
        bad = next(v for v in cells if not 0 <= v <= 9)
        raise GridError(f"row {r} has colour {bad}, outside 0..9")
    return cells


def as_grid(obj: Any) -> Grid:
    """Validate `obj` (nested lists/tuples of ints or a 2-D integer array) and return it as a `Grid`."""
    if isinstance(obj, np.ndarray):
        if obj.ndim != 2:
            raise GridError(f"expected a 2-D grid, got an array of shape {obj.shape}")
        if obj.dtype == np.bool_ or not np.issubdtype(obj.dtype, np.integer):
            raise GridError(f"expected integer cells, got dtype {obj.dtype}")
        if obj.size == 0:
            raise GridError(f"grid is empty (shape {obj.shape})")
        if obj.min() < 0 or obj.max() > 9:
            raise GridError(f"colour {int(obj.min() if obj.min() < 0 else obj.max())} outside 0..9")
        return tuple(map(tuple, obj.tolist()))
    if not isinstance(obj, (list, tuple)):
        raise GridError(f"expected a list of rows, got {type(obj).__name__}")
    if not obj:
        raise GridError("grid has no rows")
    rows = tuple(_as_row(row, r) for r, row in enumerate(obj))
    width = len(rows[0])
    if width == 0:
        raise GridError("row 0 is empty")
    for r, row in enumerate(rows):
        if len(row) != width:
            raise GridError(f"ragged grid: row {r} has {len(row)} cells, row 0 has {width}")
    return rows


def grid_shape(grid: Grid) -> tuple[int, int]:
    """(height, width) of a grid."""
    return len(grid), len(grid[0])


_CELL_VALUES = frozenset(range(10))


def _rendered_rows(grid: Any, sep: str) -> list[str]:
    """Each row's cells as text joined by `sep`, validating the grid on the way (fast path for tuples/lists of
    ints; anything doubtful goes through `as_grid`, which raises the precise error or normalises the value)."""
    if isinstance(grid, (tuple, list)) and grid and isinstance(grid[0], (tuple, list)) and grid[0]:
        width = len(grid[0])
        try:
            valid = all(isinstance(row, (tuple, list)) and len(row) == width and _CELL_VALUES.issuperset(row)
                        for row in grid)
        except TypeError:  # an unhashable cell
            valid = False
        if valid:
            rows = [sep.join(map(str, row)) for row in grid]
            # Cells equal to 0..9 but not ints (True, 1.0) render longer than one character.
            if all(len(r) == width + (width - 1) * len(sep) for r in rows):
                return rows
    return [sep.join(map(str, row)) for row in as_grid(grid)]


def to_text(grid: Grid | np.ndarray | Sequence[Sequence[int]], fmt: str = "numpy") -> str:
    """Render a grid in one of `FORMATS` (see the module docstring for the exact layouts)."""
    if fmt == "numpy":
        return "[[" + "]\n [".join(_rendered_rows(grid, " ")) + "]]"
    if fmt == "rows":
        return "".join(row + "\n" for row in _rendered_rows(grid, " "))
    if fmt == "compact":
        return "\n".join(_rendered_rows(grid, ""))
    raise GridFormatError(f"unknown grid format {fmt!r}; expected one of {', '.join(FORMATS)}")


def _rectangular(rows: list[tuple[int, ...]], text: str) -> Grid:
    width = len(rows[0])
    for r, row in enumerate(rows):
        if len(row) != width:
            raise GridFormatError(f"ragged grid text {_snippet(text)}: row {r} has {len(row)} cells, row 0 has {width}")
    return tuple(rows)


def _spaced_rows(lines: Iterable[str], text: str) -> list[tuple[int, ...]]:
    rows = []
    for r, line in enumerate(lines):
        if not _SPACED_ROW.fullmatch(line):
            raise GridFormatError(f"row {r} of {_snippet(text)} is not single digits separated by single spaces")
        rows.append(tuple(map(int, line[::2])))
    return rows


def from_text(text: str, fmt: str = "numpy") -> Grid:
    """Parse the canonical text of `to_text` back into a `Grid`; raise `GridFormatError` on anything else."""
    if not isinstance(text, str):
        raise GridFormatError(f"expected str, got {type(text).__name__}")
    if fmt == "numpy":
        if len(text) < 5 or not text.startswith("[[") or not text.endswith("]]"):
            raise GridFormatError(f"numpy grid text must look like '[[0 1]\\n [2 3]]', got {_snippet(text)}")
        rows = _spaced_rows(text[2:-2].split("]\n ["), text)
    elif fmt == "rows":
        if not text.endswith("\n") or text == "\n":
            raise GridFormatError(f"rows grid text must be non-empty and end with a newline, got {_snippet(text)}")
        rows = _spaced_rows(text[:-1].split("\n"), text)
    elif fmt == "compact":
        rows = []
        for r, line in enumerate(text.split("\n")):
            if not _COMPACT_ROW.fullmatch(line):
                raise GridFormatError(f"row {r} of {_snippet(text)} is not a run of digits")
            rows.append(tuple(map(int, line)))
    else:
        raise GridFormatError(f"unknown grid format {fmt!r}; expected one of {', '.join(FORMATS)}")
    return _rectangular(rows, text)


def _row_cells(row_text: str, allow_compact: bool, text: str, r: int) -> tuple[int, ...]:
    tokens = [t for t in _CELL_SPLIT.split(row_text.strip()) if t]
    if not tokens:
        raise GridFormatError(f"row {r} of {_snippet(text)} is empty")
    if len(tokens) == 1 and allow_compact and _COMPACT_ROW.fullmatch(tokens[0]):
        return tuple(map(int, tokens[0]))
    for t in tokens:
        if len(t) != 1 or t not in _DIGITS:
            raise GridFormatError(f"row {r} of {_snippet(text)} has cell {t!r}, not a single digit 0..9")
    return tuple(map(int, tokens))


def _parse_model_grid(text: str) -> Grid:
    if not isinstance(text, str):
        raise GridFormatError(f"expected str, got {type(text).__name__}")
    body = text
    for stop in (OUTPUT_FOOTER, "<|"):  # the answer footer, or a special token such as <|eot_id|>
        cut = body.find(stop)
        if cut >= 0:
            body = body[:cut]
    body = body.strip()
    if not body:
        raise GridFormatError(f"no grid in {_snippet(text)}")
    if "[" in body or "]" in body:
        # One list of rows ("[[..] [..]]", commas optional) or a single row "[..]"; nothing else around them.
        outer = _CELL_SPLIT.sub("", _INNER_BRACKETS.sub("", body))
        if outer not in ("", "[]"):
            raise GridFormatError(f"not a single bracketed grid: {_snippet(text)}")
        row_texts = _INNER_BRACKETS.findall(body)
        rows = [_row_cells(rt, False, text, r) for r, rt in enumerate(row_texts)]
    else:
        lines = [line for line in body.splitlines() if line.strip()]
        rows = [_row_cells(line, True, text, r) for r, line in enumerate(lines)]
    return _rectangular(rows, text)


def parse_model_grid(text: str, strict: bool = False) -> Grid | None:
    """Read a grid from a model's answer text.

    Reads up to the first ``#`` or ``<|`` (special token); accepts the numpy format, python-list style with commas,
    the rows format and the compact format, with surrounding whitespace. Returns None when the text holds no
    rectangular grid of single-digit cells, or raises `GridFormatError` with the reason when ``strict`` is true.
    """
    try:
        return _parse_model_grid(text)
    except GridFormatError:
        if strict:
            raise
        return None


def parse_grid_original(text: str) -> Grid | None:
    """The original's answer decoder (spec section 1.5), for original-compatible scoring.

    Removes ``#``, collapses double spaces, deletes every bracket, splits on whitespace, takes rows = number of
    newlines + 1 and columns = cells / rows, and reshapes; a ragged answer whose cell count divides evenly is
    silently reshaped. Returns None where the original's decode fails (no cells, a non-integer token, a count that
    does not divide) and, unlike the original, also where a value is outside 0..9 (not an ARC colour).
    """
    if not isinstance(text, str):
        return None
    body = text.replace(OUTPUT_FOOTER, "").replace("  ", " ").strip()
    tokens = body.replace("[", "").replace("]", "").split()
    n_rows = body.count("\n") + 1
    if not tokens or len(tokens) % n_rows:
        return None
    if not all(len(t) == 1 and t in _DIGITS for t in tokens):
        return None
    cells = [int(t) for t in tokens]
    width = len(cells) // n_rows
    return tuple(tuple(cells[r * width:(r + 1) * width]) for r in range(n_rows))


def _pair(example: Any) -> tuple[Any, Any]:
    """(input, output) of a pair given as a 2-sequence or as an object with .input/.output."""
    if hasattr(example, "input") and hasattr(example, "output"):
        return example.input, example.output
    inp, out = example
    return inp, out


def pair_text(inp: Grid, out: Grid) -> str:
    """One demonstration in the TTT/inference format: ``<input> -> <output>#``."""
    return to_text(inp) + IO_SEP + to_text(out) + OUTPUT_FOOTER


def ttt_messages(demonstrations: Sequence[Any], test_input: Grid, test_output: Grid | None = None,
                 instruction: str = TTT_INSTRUCTION) -> list[dict[str, str]]:
    """Chat messages of one TTT sequence (with `test_output`) or inference query (without), spec section 4.2.

    `demonstrations` are (input, output) pairs or objects with .input/.output. Render with the Llama-3.2 chat
    template (`seal_jax.tokenizer`), which trims the system and user contents as the original's template does.
    """
    system = instruction + "\n" + GRID_FORMAT_LINE + "\n"
    system += "".join(pair_text(*_pair(d)) + "\n" for d in demonstrations)
    messages = [{"role": "system", "content": system}, {"role": "user", "content": to_text(test_input) + IO_SEP}]
    if test_output is not None:
        messages.append({"role": "assistant", "content": to_text(test_output) + OUTPUT_FOOTER})
    return messages


def self_edit_demonstrations_text(demonstrations: Sequence[Any]) -> str:
    """The demonstrations block of the self-edit prompt: per pair ``Input:``, rows, blank line, ``Output:``, rows,
    blank line (spec section 1.2)."""
    parts = []
    for d in demonstrations:
        inp, out = _pair(d)
        parts.append("Input:\n" + to_text(inp, "rows") + "\nOutput:\n" + to_text(out, "rows") + "\n")
    return "".join(parts)
