"""One run's writes into ``DEST/raw/<folder>/`` (what to skip on resume, what to undo on bad input), and the
local spool folders runs use."""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import re
import shutil
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from cifarflow.data import content_index
from cifarflow.data.ingest.marker import DONE, LandedMember
from cifarflow.storage import TMP_INFIX, Store, basename, join

log = logging.getLogger(__name__)

# Members uploading to a bucket at once, and the bytes they may hold (one member more when it alone is larger).
UPLOADS = 4
UPLOAD_BYTES = 256 << 20
_UPLOADER = ThreadPoolExecutor(max_workers=UPLOADS, thread_name_prefix="cifarflow-upload")
SPOOL_PREFIX = "cifarflow-ingest-"  # + "<pid>-": a spool left by a killed run is removed by the next run


@dataclass
class Landing:
    """One run's writes into ``DEST/raw/<folder>/``: what to skip (resume) and what to undo (bad input)."""

    store: Store
    folder_url: str
    done: dict[str, LandedMember] = field(default_factory=dict)
    written: list[str] = field(default_factory=list)
    landed: int = 0
    _uploads: collections.deque[tuple[int, Future[None]]] = field(default_factory=collections.deque)
    _held: int = 0  # bytes of the members queued or uploading

    def load_done(self) -> None:
        for url in self.store.list(join(self.folder_url, DONE)):
            with contextlib.suppress(Exception):  # a half-written record just means "not done"
                rec = LandedMember.model_validate_json(self.store.read_bytes(url))
                self.done[rec.path] = rec

    def already(self, member: LandedMember, index: bytes | None) -> bool:
        rec = self.done.get(member.path)
        if rec is None or (rec.sha256, rec.bytes, rec.hashes) != (member.sha256, member.bytes, member.hashes):
            return False
        try:
            if index is not None and self.store.size(self._index_url(member)) != len(index):
                return False
            return self.store.size(join(self.folder_url, member.path)) == member.bytes
        except FileNotFoundError:
            return False

    def _index_url(self, member: LandedMember) -> str:
        return join(self.folder_url, content_index.path(member.path))

    def land(
        self,
        member: LandedMember,
        data: bytes | bytearray | None = None,
        local_path: str | None = None,
        index: bytes | None = None,
    ) -> None:
        """Write a validated member and its content index, then its completion record (a crash between them
        costs a redo).

        Into a bucket the write runs on a thread of its own, so that the next member is read and validated
        while this one uploads; :meth:`settle` waits for them all. A local disk is written in order, here.
        """
        if self.already(member, index):
            log.debug("%s already landed", member.path)
            if local_path is not None:
                os.remove(local_path)
            return
        url = join(self.folder_url, member.path)
        record = join(self.folder_url, DONE, member.path + ".json")
        self.written += [url, record] if index is None else [url, self._index_url(member), record]
        self.landed += 1
        if self.folder_url.startswith("file://"):
            self._write(member, url, record, data=data, local_path=local_path, index=index)
            return
        # Bounded: a queued member is held in memory (or in the local spool) until its upload ends.
        while self._uploads and (len(self._uploads) >= UPLOADS or self._held + member.bytes > UPLOAD_BYTES):
            self._wait_oldest()
        future = _UPLOADER.submit(
            self._write, member, url, record, data=data, local_path=local_path, index=index
        )
        self._uploads.append((member.bytes, future))
        self._held += member.bytes

    def _write(
        self,
        member: LandedMember,
        url: str,
        record: str,
        *,
        data: bytes | bytearray | None,
        local_path: str | None,
        index: bytes | None,
    ) -> None:
        if index is not None:
            self.store.write_bytes(self._index_url(member), index)
        if local_path is not None:
            self.store.move_file(local_path, url)  # the spool holds the members in flight, not the archive
        else:
            self.store.write_bytes(url, data or b"")
        self.store.write_text(record, member.model_dump_json())

    def _wait_oldest(self) -> None:
        size, future = self._uploads.popleft()
        self._held -= size
        future.result()

    def settle(self) -> None:
        """Wait for every upload in flight; the first failure is raised (after the others have ended)."""
        failure: BaseException | None = None
        while self._uploads:
            try:
                self._wait_oldest()
            except BaseException as exc:  # re-raised below, once nothing runs any more
                failure = failure or exc
        if failure is not None:
            raise failure

    def remove_stale_tmp(self) -> None:
        """Local atomic writes cut short by SIGKILL leave ``<member>.tmp-<uuid>``; the commit removes them."""
        if not self.folder_url.startswith("file://"):
            return
        for folder in (
            self.folder_url,
            join(self.folder_url, DONE),
            join(self.folder_url, content_index.FOLDER),
        ):
            for url in self.store.list(folder):
                if TMP_INFIX in basename(url):
                    self.store.remove(url)

    def undo(self) -> None:
        with contextlib.suppress(BaseException):
            self.settle()  # nothing may still be writing what is removed
        for url in reversed(self.written):
            with contextlib.suppress(Exception):
                self.store.remove(url)
        # Drop the folder too when this run created everything in it.
        with contextlib.suppress(Exception):
            if not self.done:
                self.store.remove(self.folder_url, recursive=True)


def spool_folder() -> tempfile.TemporaryDirectory[str]:
    """This run's local scratch folder (named by its pid, so that a later run can tell it was killed)."""
    return tempfile.TemporaryDirectory(prefix=f"{SPOOL_PREFIX}{os.getpid()}-")


def remove_stale_spools() -> None:
    """Remove the spool folders of runs that were killed (SIGKILL, a lost pod): their pid is gone."""
    root = tempfile.gettempdir()
    for name in os.listdir(root):
        found = re.fullmatch(re.escape(SPOOL_PREFIX) + r"(\d+)-\w+", name)
        if found and not _alive(int(found.group(1))):
            log.debug("removing %s, left by a killed run", name)
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True
