"""Run directories shared by the experiment modules: resolved config, an event log, atomic JSON and keyed JSONL.

A run directory is the unit of resumption, with these guarantees:
  * every JSON file is written atomically (a temporary file, fsync, rename, fsync of the folder): a kill leaves the
    old file or the new one, never a torn one;
  * JSONL files only ever get whole lines, flushed and fsynced per record; a last line cut by a kill is found when
    the file is next read, moved aside to `<file>.torn` with a warning, and the file cut back to its last whole line,
    so its record is simply redone; records are unique by key (a duplicate on write is an error, duplicates already
    on disk are dropped on read, keeping the first, with a warning);
  * one writer per directory: `RunDir` holds an advisory lock (`run.lock`, released by the OS when the process dies,
    kill -9 included) for the process's life; a second run on the same directory stops at once with a one-line error
    naming the holder's pid. Paths are compared after resolving (`./x` and `x` are the same directory). In a
    multi-host run only process 0 writes (and locks); the others take what is finished from it (`resume_stream`);
  * a directory created with another configuration is refused rather than silently mixed, unless it holds no work
    yet (a run that failed at start-up does not block the corrected command).
"""

from __future__ import annotations

import fcntl
import json
import argparse
import os
import signal
import sys
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

# Files of a run directory that are not work: a directory holding only these may take another configuration.
_BOOKKEEPING = frozenset({"config.json", "events.jsonl", "run.lock"})


class RunDirError(SystemExit):
    """A run directory that cannot be used (one line: the directory and why)."""

    def __init__(self, message: str):
        super().__init__(f"error: {message}")


_OPEN_RUN: list[RunDir | None] = [None]  # the run directory this process opened last (its events get `records`)


class RunDir:
    """config.json, an append-only events.jsonl and the stage files, with the guarantees of the module docstring.
    `resume_free` names config keys that may change between a run and its resumption (they do not change results:
    progress bars, the output folder, checkpoint cadence, work budgets). Config values that are existing paths are
    compared resolved."""

    def __init__(self, path: str, config: dict, resume_free: Iterable[str] = ("no_progress", "out"),
                 writer: bool = True):
        self.path = os.path.realpath(path)
        self.resume_free = frozenset(resume_free)
        self.writer = writer
        os.makedirs(self.path, exist_ok=True)
        _OPEN_RUN[0] = self
        self._lock = None
        if not writer:  # a non-writing process of a multi-host run: process 0 locks, checks and writes
            return
        self._lock = _acquire(os.path.join(self.path, "run.lock"))
        cfg_path = os.path.join(self.path, "config.json")
        config = {k: _canonical(v) for k, v in config.items()}
        if os.path.exists(cfg_path) and self._has_work():
            try:
                with open(cfg_path) as f:
                    old = json.load(f)
            except (OSError, json.JSONDecodeError) as e:
                raise RunDirError(f"{cfg_path} is unreadable ({e}); use another --out") from None
            for k, v in config.items():
                if k in self.resume_free:
                    continue
                if k not in old:
                    raise RunDirError(f"{path} holds a run made without {k} (asked {v!r}); use another --out")
                if _canonical(old[k]) != v:
                    raise RunDirError(f"{path} holds a run with {k}={old[k]!r} (asked {v!r}); use another --out")
        write_json(cfg_path, config)

    def _has_work(self) -> bool:
        return any(name not in _BOOKKEEPING and not name.endswith(".tmp") for name in os.listdir(self.path))

    def close(self) -> None:
        """Release the directory (the OS does it anyway when the process ends)."""
        if self._lock is not None:
            _HELD.pop(self._lock.name, None)
            self._lock.close()
            self._lock = None

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
            write_text(self.file("summary.md"), text)
        print(text)
        return text

    def event(self, kind: str, **data) -> None:
        if self.writer:
            append_jsonl(self.file("events.jsonl"), [{"time": time.time(), "event": kind, **data}])


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the project's one-line errors: a bad or missing flag prints `error: ... (see --help)` and exits
    with status 2, without the usage block (subcommand parsers inherit it)."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog.removeprefix('python -m ')}: {message} (see --help)\n")


def check_flags(ap: argparse.ArgumentParser, args: argparse.Namespace, minimum: dict[str, int] = (),
                nonnegative: tuple[str, ...] = (), int_lists: tuple[str, ...] = ()) -> None:
    """Range checks before any work: each `minimum` flag (dest name) at least its bound, each `nonnegative` one a
    finite number >= 0, each `int_lists` one a comma-separated list of positive integers. Flags a subcommand lacks are
    skipped. A violation is `ap.error` (one line, status 2) naming the flag."""
    import math
    flag = lambda name: "--" + name.replace("_", "-")  # noqa: E731
    for name, low in dict(minimum).items():
        if hasattr(args, name) and getattr(args, name) < low:
            ap.error(f"{flag(name)} must be at least {low}, got {getattr(args, name)}")
    for name in nonnegative:
        v = getattr(args, name, 0.0)
        if not math.isfinite(v) or v < 0:
            ap.error(f"{flag(name)} must be a finite number >= 0, got {v}")
    for name in int_lists:
        text = getattr(args, name, "") or ""
        parts = [x.strip() for x in text.split(",") if x.strip()]
        if not all(x.isdigit() and int(x) > 0 for x in parts):
            ap.error(f"{flag(name)} must be comma-separated positive integers, got {text!r}")


def cli(main: Callable[..., int | None]) -> Callable[..., int]:
    """Wrap an experiment's `main(argv)`: a user-input error (a bad file, flag, config, checkpoint, plan) ends with
    one line on stderr, `error: ...`, and exit status 2, not a traceback; Ctrl-C ends with one line and status 130
    (what finished is on disk: re-running the command resumes). `--debug` anywhere in argv (or SEAL_DEBUG=1)
    re-raises for the traceback. The project's error types, file errors and ValueError (how the library reports bad
    input) are caught; anything else is a bug and keeps its traceback."""
    import functools

    @functools.wraps(main)
    def wrapped(argv=None) -> int:
        argv = list(sys.argv[1:] if argv is None else argv)
        debug = "--debug" in argv or os.environ.get("SEAL_DEBUG") == "1"
        if "--debug" in argv:
            argv.remove("--debug")
        from seal_jax.checkpoints.hf import CheckpointError
        from seal_jax.models.config import ConfigError
        try:
            return main(argv) or 0
        except KeyboardInterrupt:
            if debug:
                raise
            print("error: interrupted (Ctrl-C); re-run the same command to resume", file=sys.stderr)
            return 130
        except SystemExit as e:  # raise SystemExit("error: ...") (RunDirError and the experiments' own checks)
            if debug or not isinstance(e.code, str):
                raise
            line = e.code.strip().splitlines()[0] if e.code.strip() else "stopped"
            print(line if line.startswith("error:") else f"error: {line}", file=sys.stderr)
            return 2
        except (CheckpointError, ConfigError, OSError, ValueError, KeyError) as e:
            if debug:
                raise
            msg = e.args[0] if isinstance(e, KeyError) and e.args else e
            if isinstance(e, OSError) and e.filename and str(e.filename) not in str(e):
                msg = f"{e.filename}: {e.strerror or e}"
            print(f"error: {str(msg).strip().splitlines()[0] if str(msg).strip() else type(e).__name__}",
                  file=sys.stderr)
            return 2

    return wrapped


def _canonical(value):
    """Existing paths resolved, in lists too (repeatable path flags), so that two spellings of one file or directory
    compare equal."""
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, str) and value and os.path.exists(value):
        return os.path.realpath(value)
    return value


_HELD: dict[str, Any] = {}  # locks this process holds, by path (a process may open its own run directory again)


def _acquire(lock_path: str):
    if lock_path in _HELD and not _HELD[lock_path].closed:
        return _HELD[lock_path]
    fh = open(lock_path, "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "another process"
        fh.close()
        raise RunDirError(f"{os.path.dirname(lock_path)} is in use by pid {holder}; wait for it or use another "
                          f"--out") from None
    fh.seek(0)
    fh.truncate()
    fh.write(str(os.getpid()))
    fh.flush()
    _HELD[lock_path] = fh
    return fh


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(os.path.dirname(os.path.abspath(path)) or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text(path: str, text: str) -> None:
    """Atomic and durable: a temporary file, fsync, rename, fsync of the folder."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    _maybe_die(lambda: None)
    os.replace(tmp, path)
    _fsync_dir(path)


def write_json(path: str, obj: Any) -> None:
    """Atomic: a kill leaves either the old file or the new one."""
    write_text(path, json.dumps(obj, indent=1))


def read_jsonl(path: str, key: str | None = None) -> list[dict]:
    """Records of a run's own JSONL file. A last line cut by a kill (no newline, or not JSON) is moved aside to
    `<path>.torn` and cut from the file, with a warning, so the record it held is redone. With `key`, records are
    unique by that field: later duplicates are dropped with a warning (the first is kept)."""
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    complete, tail = lines[:-1], lines[-1]  # a file of whole lines ends with a newline: tail is empty
    rows, good_bytes = [], 0
    for i, raw in enumerate(complete):
        try:
            if raw.strip():
                rows.append(json.loads(raw))
        except (json.JSONDecodeError, UnicodeDecodeError):
            if i < len(complete) - 1:
                raise ValueError(f"{path}: line {i + 1} is not JSON (not the last line: not a torn write)") from None
            tail = raw + b"\n" + tail
            break
        good_bytes += len(raw) + 1
    if tail.strip():
        with open(path + ".torn", "ab") as f:
            f.write(tail + b"\n")
        with open(path, "r+b") as f:
            f.truncate(good_bytes)
            f.flush()
            os.fsync(f.fileno())
        print(f"warning: {path} ended in a torn record ({len(tail)} bytes, moved to {path}.torn); it will be redone",
              file=sys.stderr)
    if key is None:
        return rows
    seen, out = set(), []
    for r in rows:
        if r.get(key) in seen:
            print(f"warning: {path}: a second record with {key}={r.get(key)!r} was dropped", file=sys.stderr)
            continue
        seen.add(r.get(key))
        out.append(r)
    return out


_TYPE_NAMES = {str: "string", int: "integer", float: "number", bool: "boolean", list: "list", dict: "object"}


def read_jsonl_strict(path: str | os.PathLike, required: Mapping[str, type] | None = None) -> list[dict]:
    """The objects of a user-supplied JSONL file (blank lines skipped), every line checked: a bad line raises a
    one-line ``ValueError`` naming the file and its 1-based line number (not UTF-8, not JSON, not an object, a
    `required` field missing or of another type; ``object`` accepts any value). Compare `read_jsonl`, which reads a
    run's own append-only logs and forgives a last line cut by a kill."""
    name = os.fspath(path)
    rows = []
    with open(path, "rb") as fh:
        for n, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{name}: line {n} is not UTF-8 text ({e.reason} at byte {e.start})") from None
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
    return rows


def append_jsonl(path: str, rows: Sequence[dict]) -> None:
    """Whole lines only, one write per record, flushed and fsynced. A file whose last line was cut by a kill is
    repaired first (`read_jsonl` moves the torn tail aside), so a new record never lands on a torn line."""
    if os.path.exists(path) and os.path.getsize(path):
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            whole = f.read(1) == b"\n"
        if not whole:
            read_jsonl(path)
    with open(path, "a") as f:
        for r in rows:
            line = json.dumps(r) + "\n"
            _maybe_die(lambda: (f.write(line[:len(line) // 2]), f.flush(), os.fsync(f.fileno())))
            f.write(line)
            f.flush()
            os.fsync(f.fileno())


# Fault injection for the kill tests (tests/experiments/test_kill_resume.py): with SEAL_KILL_AT_WRITE=N in the
# environment the process SIGKILLs itself in the middle of its Nth durable write (a JSONL record cut after half its
# bytes; a JSON file's temporary written but not renamed), where kill -9 or a power cut could leave it.
_WRITES = [0]


def _maybe_die(partial: Callable[[], Any]) -> None:
    at = os.environ.get("SEAL_KILL_AT_WRITE")
    if not at:
        return
    _WRITES[0] += 1
    if _WRITES[0] == int(at):
        partial()
        os.kill(os.getpid(), signal.SIGKILL)


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


def _agreed(value):
    """Process 0's `value` on every process of a multi-host run (`distributed.from_main`); the value itself in a
    single-process run (without importing jax)."""
    if "jax" not in sys.modules:
        return value
    from seal_jax.distributed import from_main
    return from_main(value)


def _log_records(path: str, record_key: str, keys: list) -> None:
    """A `records` event in the open run's log after each durable append (file relative to the run, the key field,
    the keys), so that what a run computed, across kills and resumptions, can be counted from events.jsonl."""
    run = _OPEN_RUN[0]
    real = os.path.realpath(path)
    if run is not None and real.startswith(run.path + os.sep):
        run.event("records", file=os.path.relpath(real, run.path), key=record_key, keys=keys)


def resume_stream(path: str, items: Sequence, *, key: Callable[[Any], str], record_key: str,
                  work: Callable[[list], Iterable[list[dict]]], desc: str = "", no_progress: bool = False,
                  write: bool = True, on_done: Callable[[list[dict], float], None] | None = None) -> dict[str, dict]:
    """`resume_records` for work that streams: ``work(todo)`` yields lists of finished records in any order (e.g. the
    ragged engine's jobs as they finish); each list is appended (fsynced) as soon as it arrives, so a killed run loses
    only the work in flight. ``on_done(records, seconds since the previous list)`` runs after each append."""
    done = {r[record_key]: r for r in _agreed(read_jsonl(path, key=record_key) if write else [])}
    todo = [x for x in items if key(x) not in done]
    from tqdm import tqdm
    with tqdm(total=len(todo), desc=desc, disable=no_progress, leave=False) as bar:
        t0 = time.perf_counter()
        for records in (work(todo) if todo else ()):
            again = [r[record_key] for r in records if r[record_key] in done]
            if again:
                raise ValueError(f"{path}: records {again[:3]} were already written (a duplicate key)")
            if write:
                append_jsonl(path, records)
                _log_records(path, record_key, [r[record_key] for r in records])
            done.update({r[record_key]: r for r in records})
            bar.update(len(records))
            if on_done is not None:
                on_done(records, time.perf_counter() - t0)
            t0 = time.perf_counter()
    return done
