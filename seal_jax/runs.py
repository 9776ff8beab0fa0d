"""Run directories shared by the experiment modules: resolved config, an event log, atomic JSON and keyed JSONL.

A run directory is the unit of resumption: each stage writes its output atomically (JSON) or appends finished
records (JSONL, fsynced), and on a re-run reads them back and skips what is done. A directory created with another
configuration is refused rather than silently mixed.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Iterable, Mapping, Sequence


class RunDir:
    """config.json, an append-only events.jsonl and the stage files; refuses a directory of another config.
    `resume_free` names config keys that may change between a run and its resumption (they do not change results:
    progress bars, the output folder, checkpoint cadence, work budgets)."""

    def __init__(self, path: str, config: dict, resume_free: Iterable[str] = ("no_progress", "out")):
        self.path = path
        self.resume_free = frozenset(resume_free)
        os.makedirs(path, exist_ok=True)
        cfg_path = os.path.join(path, "config.json")
        if os.path.exists(cfg_path):
            with open(cfg_path) as f:
                old = json.load(f)
            for k, v in config.items():
                if k not in self.resume_free and k in old and old[k] != v:
                    raise SystemExit(f"error: {path} holds a run with {k}={old[k]!r} (asked {v!r}); "
                                     f"use another --out")
        write_json(cfg_path, config)

    def file(self, *parts: str) -> str:
        """A path inside the run (its folder created)."""
        p = os.path.join(self.path, *parts)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        return p

    def dir(self, *parts: str) -> str:
        p = os.path.join(self.path, *parts)
        os.makedirs(p, exist_ok=True)
        return p

    def write_summary(self, text: str, write: bool = True) -> str:
        """Print the run's human-readable summary and (unless `write` is false: a non-writing process) store it as
        summary.md."""
        if write:
            with open(self.file("summary.md"), "w") as f:
                f.write(text)
        print(text)
        return text

    def event(self, kind: str, **data) -> None:
        with open(self.file("events.jsonl"), "a") as f:
            f.write(json.dumps({"time": time.time(), "event": kind, **data}) + "\n")


def write_json(path: str, obj: Any) -> None:
    """Atomic: a kill leaves either the old file or the new one."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def read_jsonl(path: str) -> list[dict]:
    """Records of a JSONL file; a last line cut by a kill is ignored."""
    if not os.path.exists(path):
        return []
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    break
    return rows


_TYPE_NAMES = {str: "string", int: "integer", float: "number", bool: "boolean", list: "list", dict: "object"}


def read_jsonl_strict(path: str | os.PathLike, required: Mapping[str, type] | None = None) -> list[dict]:
    """The objects of a user-supplied JSONL file (blank lines skipped), every line checked: a bad line raises a
    one-line ``ValueError`` naming the file and its 1-based line number (not UTF-8, not JSON, not an object, a
    `required` field missing or of another type; ``object`` accepts any value). Compare `read_jsonl`, which reads a
    run's own append-only logs and forgives a last line cut by a kill."""
    name = os.fspath(path)
    rows = []
    try:
        with open(path, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{name}: line {n} is not valid JSON ({e.msg})") from None
                if not isinstance(row, dict):
                    raise ValueError(f"{name}: line {n} is not a JSON object")
                for key, kind in (required or {}).items():
                    if key not in row:
                        raise ValueError(f"{name}: line {n} lacks the field '{key}'")
                    if not isinstance(row[key], kind):
                        raise ValueError(f"{name}: line {n}: field '{key}' is not a "
                                         f"{_TYPE_NAMES.get(kind, kind.__name__)}")
                rows.append(row)
    except UnicodeDecodeError as e:
        raise ValueError(f"{name}: not UTF-8 text ({e.reason})") from None
    return rows


def append_jsonl(path: str, rows: Sequence[dict]) -> None:
    with open(path, "a") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
        f.flush()
        os.fsync(f.fileno())


def progress(iterable, total: int, desc: str, disabled: bool = False):
    """A tqdm progress bar (on stderr)."""
    from tqdm import tqdm
    return tqdm(iterable, total=total, desc=desc, disable=disabled, leave=False)


def resume_records(path: str, items: Sequence, *, key: Callable[[Any], str], record_key: str,
                   work: Callable[[list], list[dict]], chunk: int = 1, desc: str = "", no_progress: bool = False,
                   write: bool = True, on_done: Callable[[list[dict], float], None] | None = None) -> dict[str, dict]:
    """The resumable per-item loop of every experiment stage: records already in the JSONL file `path` (matched by
    ``record[record_key] == key(item)``) are read back; the other items go through ``work`` `chunk` at a time (one
    call per chunk, returning one record per item) and each chunk's records are appended (fsynced) as soon as they
    exist, so a killed run loses at most the chunk in flight. ``on_done(records, seconds)`` runs after each append
    (events, work budgets). ``write=False`` (non-writing processes of a multi-host run) computes without appending.
    Returns every record by key."""
    def stream(todo):
        for s in range(0, len(todo), chunk):
            yield work(todo[s:s + chunk])

    return resume_stream(path, items, key=key, record_key=record_key, work=stream, desc=desc,
                         no_progress=no_progress, write=write, on_done=on_done)


def resume_stream(path: str, items: Sequence, *, key: Callable[[Any], str], record_key: str,
                  work: Callable[[list], Iterable[list[dict]]], desc: str = "", no_progress: bool = False,
                  write: bool = True, on_done: Callable[[list[dict], float], None] | None = None) -> dict[str, dict]:
    """`resume_records` for work that streams: ``work(todo)`` yields lists of finished records in any order (e.g. the
    ragged engine's jobs as they finish); each list is appended (fsynced) as soon as it arrives, so a killed run loses
    only the work in flight. ``on_done(records, seconds since the previous list)`` runs after each append."""
    done = {r[record_key]: r for r in read_jsonl(path)}
    todo = [x for x in items if key(x) not in done]
    from tqdm import tqdm
    with tqdm(total=len(todo), desc=desc, disable=no_progress, leave=False) as bar:
        t0 = time.perf_counter()
        for records in (work(todo) if todo else ()):
            if write:
                append_jsonl(path, records)
            done.update({r[record_key]: r for r in records})
            bar.update(len(records))
            if on_done is not None:
                on_done(records, time.perf_counter() - t0)
            t0 = time.perf_counter()
    return done
