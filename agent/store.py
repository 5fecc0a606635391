"""The trajectory store: one run directory on disk, written so that a crash never corrupts it.

    RUN/manifest.json          RunManifest, written last when the run is created
    RUN/images/ab/abcd....png  content-addressed images (sha256 of the pixels)
    RUN/sessions/<id>.json     one SessionRecord per session, replaced whole on every update
    RUN/sessions.jsonl         every session, one line each, refreshed as sessions end (at most
                               every JSONL_EVERY seconds, and once more when the run ends)

Every file is written to a temp file in the same folder and renamed over the old one, so a
reader sees the previous version or the next, never half of one. Leftover temp files (after a
kill -9) start with a dot and end in `.tmp`; readers skip them. A directory without
manifest.json is not a run. Linux/POSIX only (fcntl, rename over an empty directory).

One writer at a time: `RunStore.create` and `RunStore.open(path, writer=True)` take the run's
writer lock (agent/lock.py; a second writer gets RunBusy naming the holder's pid) and only then
sweep the temp files a killed writer left. `RunStore.open(path)` is a reader: it never changes
the run, and its write methods refuse.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from agent.files import StoreError, atomic_write, first_problem
from agent.images import RecentImages, check_image_array, image_path, load_png, put_png
from agent.lock import RunBusy, WriterLock
from agent.trajectory import RoundRecord, RunManifest, SessionRecord, is_safe_id

MANIFEST = "manifest.json"
JSONL = "sessions.jsonl"
JSONL_EVERY = 2.0  # seconds between refreshes of sessions.jsonl as sessions end: each reads every session

__all__ = ["RunBusy", "RunStore", "StoreError", "atomic_write"]


class RunStore:
    """A run directory. Build with `RunStore.create(path, manifest)` (a writer),
    `RunStore.open(path, writer=True)` or `RunStore.open(path)` (a reader). A writer holds the
    run's lock until `close()` (or a `with` block, or the process) ends.

    One session is written by one graph execution at a time (the runner's contract); different
    sessions may be written concurrently by the writer's tasks and threads."""

    def __init__(self, root: Path, manifest: RunManifest, lock: WriterLock | None = None):
        self.root = root
        self.manifest = manifest
        self._lock_held = lock
        self._jsonl_at = float("-inf")  # monotonic time of this store's last sessions.jsonl
        self._recent = RecentImages()  # what this writer put, read back without the PNG

    @property
    def writer(self) -> bool:
        return self._lock_held is not None and self._lock_held.held

    def close(self) -> None:
        """Release the writer lock (a reader has nothing to release). Idempotent."""
        if self._lock_held is not None:
            self._lock_held.release()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the run directory ---------------------------------------------------------------------

    @classmethod
    def create(cls, path: str | Path, manifest: RunManifest) -> RunStore:
        """Make a new run at `path` (absent or an empty directory). The tree is built in a temp
        directory beside it and renamed into place, so `path` is a complete run or nothing."""
        root = Path(path).absolute()
        tmp = lock = None
        try:
            if (root / MANIFEST).exists():
                raise StoreError(f"{root} is already a refloop run; finish it with `refloop run --resume {root}` "
                                 "or choose another --out")
            if root.exists() and (not root.is_dir() or any(root.iterdir())):
                raise StoreError(f"{root} exists and is not a refloop run; choose a new or empty directory")
            root.parent.mkdir(parents=True, exist_ok=True)
            name = root.parent / f".{root.name}.{secrets.token_hex(6)}.tmp"
            name.mkdir()  # not mkdtemp: its mode 0o700 would make the run unreadable to others
            tmp = name
            (tmp / "images").mkdir()
            (tmp / "sessions").mkdir()
            lock = WriterLock(tmp)  # held from before the run exists: no one else can write it first
            atomic_write(tmp / MANIFEST, manifest.model_dump_json(indent=2).encode())
            os.replace(tmp, root)  # POSIX: replaces an empty directory, fails on a non-empty one
            lock.root = root
        except OSError as e:
            if lock is not None:
                lock.release()
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            raise StoreError(f"cannot create a run at {root}: {(e.strerror or str(e)).lower()}") from e
        return cls(root, manifest, lock)

    @classmethod
    def open(cls, path: str | Path, writer: bool = False) -> RunStore:
        """A reader of the run at `path`, or with `writer=True` its one writer (RunBusy when
        another process writes it). Only a writer sweeps the temp files a killed writer left."""
        root = Path(path).absolute()
        if not root.exists():
            raise StoreError(f"no run at {root}: it does not exist")
        if not root.is_dir():
            raise StoreError(f"no run at {root}: not a directory")
        if not (root / MANIFEST).is_file():
            raise StoreError(f"{root} is not a refloop run (no {MANIFEST})")
        lock = WriterLock(root) if writer else None
        try:
            try:
                manifest = RunManifest.model_validate_json((root / MANIFEST).read_bytes())
            except OSError as e:
                raise StoreError(f"cannot read {root / MANIFEST}: {(e.strerror or str(e)).lower()}") from None
            except ValidationError as e:
                raise StoreError(f"{root / MANIFEST} is not a valid run manifest ({first_problem(e)})") from None
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        store = cls(root, manifest, lock)
        if writer:
            store._sweep_temp_files()
        return store

    def _sweep_temp_files(self) -> None:
        """Remove half-written temp files that a killed writer left behind; only the writer,
        under the run's lock, calls this, so no temp file in flight is touched."""
        self._writable()
        for sub in ("sessions", "images", "."):
            folder = self.root / sub
            if folder.is_dir():
                for tmp in folder.rglob(".*.tmp"):
                    tmp.unlink(missing_ok=True)

    # -- images (agent/images.py) ------------------------------------------------------------------

    def put_image(self, image: np.ndarray) -> str:
        """Store an (H, W, 3) uint8 image; return its run-relative path (the same pixels, the same path)."""
        check_image_array(image)
        self._writable()
        self._recent.put(rel := put_png(self.root, image), image)
        return rel

    def image_path(self, rel: str) -> Path:
        return image_path(self.root, rel)

    def load_image(self, rel: str) -> np.ndarray:
        recent = self._recent.get(rel)
        return recent if recent is not None else load_png(self.root, rel)

    # -- sessions --------------------------------------------------------------------------------

    def start_session(self, record: SessionRecord) -> SessionRecord:
        """Record a new session. Idempotent: if it exists, the stored record is returned unchanged."""
        self._writable()
        path = self._session_path(record.id)
        if path.exists():
            return self.get(record.id)
        if record.started_at is None:
            record = record.model_copy(update={"started_at": time.time()})
        self._write(record)
        return record

    def upsert_round(self, session_id: str, rnd: RoundRecord) -> SessionRecord:
        """Replace the round with the same index, or append it if it is the next one.

        A node that re-runs after a crash thus overwrites its own round. A gap (index beyond the
        next) is an error, and so is writing to a done session. Writing to a failed session
        (a retry) makes it running again."""
        record = self.get(session_id)
        if record.status == "done":
            raise StoreError(f"session {session_id} is done; its rounds are final")
        record = record.model_copy(update={"rounds": _with_round(record, rnd), "status": "running", "error": None})
        self._write(record)
        return record

    def finish_session(self, session_id: str, stop_reason: str, final_image: str | None = None,
                       last_round: RoundRecord | None = None) -> SessionRecord:
        """Mark a session done, with `last_round` (the round in flight when it stopped) in the same
        write; `final_image` defaults to the last round's image. Re-running it overwrites the
        previous ending. Refreshes sessions.jsonl (see refresh_jsonl)."""
        record = self.get(session_id)
        rounds = _with_round(record, last_round)
        if final_image is None and rounds:
            final_image = rounds[-1].image
        if final_image is not None and not self.image_path(final_image).is_file():
            raise StoreError(f"final image {final_image!r} of session {session_id} is not in the run")
        self._write(record.model_copy(update={
            "rounds": rounds, "status": "done", "stop_reason": stop_reason, "final_image": final_image,
            "error": None, "finished_at": time.time()}))
        self.refresh_jsonl()
        return self.get(session_id)

    def fail_session(self, session_id: str, error: str, last_round: RoundRecord | None = None) -> SessionRecord:
        """Mark a session failed with its error (stop_reason "error"), with `last_round` (the round in
        flight, as far as it got) in the same write. Refreshes sessions.jsonl."""
        record = self.get(session_id)
        self._write(record.model_copy(update={"rounds": _with_round(record, last_round), "status": "failed",
                                              "error": error, "stop_reason": "error", "finished_at": time.time()}))
        self.refresh_jsonl()
        return self.get(session_id)

    def get(self, session_id: str) -> SessionRecord:
        path = self._session_path(session_id)
        try:
            return SessionRecord.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            raise StoreError(f"no session {session_id!r} in run {self.root}") from None
        except OSError as e:
            raise StoreError(f"cannot read session record {path}: {e}") from e
        except ValidationError as e:
            raise StoreError(f"session record {path} is not valid ({first_problem(e)})") from None

    def session_ids(self) -> list[str]:
        """Ids of every session, sorted."""
        return sorted(p.name[: -len(".json")] for p in (self.root / "sessions").glob("*.json")
                      if not p.name.startswith("."))

    def sessions(self) -> Iterator[SessionRecord]:
        """Every session, in id order."""
        for session_id in self.session_ids():
            yield self.get(session_id)

    def unfinished(self) -> list[str]:
        """Ids of the sessions still running (to resume after a crash), sorted."""
        return [s.id for s in self.sessions() if s.status == "running"]

    def refresh_jsonl(self) -> None:
        """write_jsonl, unless this store wrote it less than JSONL_EVERY seconds ago: a run that
        rewrote it on every ending would read n sessions n times. The sessions' own files are
        the record; whoever ends a run calls write_jsonl once more."""
        if time.monotonic() - self._jsonl_at >= JSONL_EVERY:
            self.write_jsonl()

    def write_jsonl(self) -> Path:
        """(Re)write sessions.jsonl, one line per session in id order, atomically.

        It reads and writes every session (O(run size)). A file lock serialises writers, so the
        last one to write has read every session written before it."""
        self._writable()
        self._jsonl_at = time.monotonic()
        with self._lock():
            lines = [s.model_dump_json() + "\n" for s in self.sessions()]
            path = self.root / JSONL
            atomic_write(path, "".join(lines).encode())
        return path

    # -- internals -------------------------------------------------------------------------------

    def _session_path(self, session_id: str) -> Path:
        if not is_safe_id(session_id):
            raise StoreError(f"unsafe session id {session_id!r}: use letters, digits, '-', '_', '.', "
                             "no leading dot, at most 200 characters")
        return self.root / "sessions" / f"{session_id}.json"

    def _writable(self) -> None:
        if not self.writer:
            raise StoreError(f"run {self.root} was opened for reading; only its writer (refloop run, "
                             "run --resume, replay) changes it")

    def _write(self, record: SessionRecord) -> None:
        self._writable()
        atomic_write(self._session_path(record.id), record.model_dump_json(indent=1).encode())

    @contextmanager
    def _lock(self):
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock


def _with_round(record: SessionRecord, rnd: RoundRecord | None) -> list[RoundRecord]:
    """The session's rounds with `rnd` in place of the round of its index, or appended as the next
    (StoreError for a gap); as they are when `rnd` is None."""
    rounds = list(record.rounds)
    if rnd is None:
        return rounds
    if rnd.index < len(rounds):
        rounds[rnd.index] = rnd
    elif rnd.index == len(rounds):
        rounds.append(rnd)
    else:
        raise StoreError(f"session {record.id} has rounds 0..{len(rounds) - 1}; "
                         f"round {rnd.index} would leave a gap")
    return rounds
