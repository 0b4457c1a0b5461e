"""One run's writes into ``DEST/raw/<folder>/`` (what to skip on resume, what to undo on bad input), and the
local spool folders runs use."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field

from cifarflow.data.ingest.marker import DONE, LandedMember
from cifarflow.storage import TMP_INFIX, Store, basename, join

log = logging.getLogger(__name__)

SPOOL_PREFIX = "cifarflow-ingest-"  # + "<pid>-": a spool left by a killed run is removed by the next run


@dataclass
class Landing:
    """One run's writes into ``DEST/raw/<folder>/``: what to skip (resume) and what to undo (bad input)."""

    store: Store
    folder_url: str
    done: dict[str, LandedMember] = field(default_factory=dict)
    written: list[str] = field(default_factory=list)
    landed: int = 0

    def load_done(self) -> None:
        for url in self.store.list(join(self.folder_url, DONE)):
            with contextlib.suppress(Exception):  # a half-written record just means "not done"
                rec = LandedMember.model_validate_json(self.store.read_bytes(url))
                self.done[rec.path] = rec

    def already(self, member: LandedMember) -> bool:
        rec = self.done.get(member.path)
        if rec is None or rec.sha256 != member.sha256 or rec.bytes != member.bytes:
            return False
        try:
            return self.store.size(join(self.folder_url, member.path)) == member.bytes
        except FileNotFoundError:
            return False

    def land(self, member: LandedMember, data: bytes | None = None, local_path: str | None = None) -> None:
        """Write a validated member, then its completion record (a crash between the two costs a redo)."""
        if self.already(member):
            log.debug("%s already landed", member.path)
            return
        url = join(self.folder_url, member.path)
        self.written.append(url)
        if local_path is not None:
            self.store.put_file(local_path, url)
        else:
            self.store.write_bytes(url, data or b"")
        record = join(self.folder_url, DONE, member.path + ".json")
        self.written.append(record)
        self.store.write_text(record, member.model_dump_json())
        self.landed += 1

    def remove_stale_tmp(self) -> None:
        """Local atomic writes cut short by SIGKILL leave ``<member>.tmp-<uuid>``; the commit removes them."""
        if not self.folder_url.startswith("file://"):
            return
        for folder in (self.folder_url, join(self.folder_url, DONE)):
            for url in self.store.list(folder):
                if TMP_INFIX in basename(url):
                    self.store.remove(url)

    def undo(self) -> None:
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
