"""Writing feed files safely: atomically, only when their bytes changed, never outside the output folder.

A reader polling during a rebuild must never get half a file, so every file is written to a
temporary file next to it and renamed over the old one. A file whose bytes are unchanged is not
touched, so its mtime (and the Last-Modified a web server derives from it) stays put.

The manifest remembers, for each feed of the last build, a signature of everything it shows and
the files it wrote; the next build renders only feeds whose signature changed and removes the
files of feeds that no longer exist (and only those: the output folder may hold other files).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from .errors import BuildError

MANIFEST = ".finews-manifest.json"
LOCK = ".finews-build.lock"
MANIFEST_VERSION = 1
#: Mode of written files: readable by the web server, like files a static site generator writes.
FILE_MODE = 0o644


class OutputDir:
    """The output folder; every path given to it is relative and checked to stay inside it."""

    def __init__(self, root: Path | str) -> None:
        path = Path(root)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BuildError(f"cannot create the output folder {path}: {exc.strerror}",
                             hint="pass --out DIR or set feeds.output to a writable folder") from None
        if not path.is_dir():
            raise BuildError(f"output {path} is not a folder", hint="pass --out DIR")
        self.root = path.resolve()
        self._checked: set[Path] = {self.root}
        #: relative folder -> its checked absolute path (a cold build writes thousands of files)
        self._folders: dict[str, Path] = {}

    def target(self, rel: str) -> Path:
        """The absolute path of ``rel``; a :class:`BuildError` if it could lead outside the folder."""
        parts = rel.split("/")
        if (PurePosixPath(rel).is_absolute() or "\\" in rel or "\x00" in rel
                or any(part in ("", ".", "..") for part in parts)):
            raise BuildError(f"refusing to write {rel!r}: not a plain path inside the output folder")
        known = self._folders.get(rel.rpartition("/")[0])
        if known is not None and known in self._checked:
            return known / parts[-1]
        folder = self.root
        for part in parts[:-1]:
            folder = folder / part
            if folder in self._checked:
                continue
            # A symbolic link inside the output folder must not lead the write elsewhere:
            # each folder is checked before anything is created through it.
            if folder.is_symlink():
                real = folder.resolve()
                if real != self.root and self.root not in real.parents:
                    raise BuildError(f"refusing to write {rel!r}: {folder} leads outside the output folder")
            try:
                folder.mkdir(exist_ok=True)
            except OSError as exc:
                raise BuildError(f"cannot create {folder}: {exc.strerror}") from None
            self._checked.add(folder)
        self._folders[rel.rpartition("/")[0]] = folder
        return folder / parts[-1]

    def write(self, rel: str, data: bytes) -> bool:
        """Write ``data`` to ``rel`` atomically unless the file already holds exactly these bytes.
        Returns whether the file was written."""
        path = self.target(rel)
        try:
            if path.stat().st_size == len(data) and path.read_bytes() == data:
                return False
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise BuildError(f"cannot read {path}: {exc.strerror}") from None
        try:
            fd, temp = _temporary(path)
        except OSError as exc:
            raise BuildError(f"cannot write in {path.parent}: {exc.strerror}",
                             hint="check the output folder's permissions") from None
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                os.fchmod(handle.fileno(), FILE_MODE)
            # No fsync: the rename alone is what makes readers see the old or the new file,
            # never a mix; after a power cut the next build writes the file again.
            os.replace(temp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise BuildError(f"cannot write {path}: {exc.strerror}") from None
        return True

    def remove(self, rel: str) -> bool:
        """Remove ``rel`` and the folders it leaves empty; returns whether a file was removed."""
        try:
            path = self.target(rel)
        except BuildError:
            return False
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise BuildError(f"cannot remove {path}: {exc.strerror}") from None
        parent = path.parent
        while parent != self.root:
            try:
                parent.rmdir()
            except OSError:
                break
            self._checked.discard(parent)
            parent = parent.parent
        return True

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the output folder for one build: a scheduled rebuild and one triggered by a file
        change must not interleave their writes and manifests (the second one waits)."""
        try:
            fd = os.open(self.root / LOCK, os.O_RDWR | os.O_CREAT, FILE_MODE)
        except OSError as exc:
            raise BuildError(f"cannot lock {self.root}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def exists(self, rel: str) -> bool:
        return os.path.isfile(os.path.join(self.root, rel))


def _temporary(path: Path) -> tuple[int, str]:
    """A new file next to ``path``, open for writing: named after this process (builds of one
    folder hold its lock, so no other process writes that name), else by mkstemp, which
    costs a third of writing a small feed."""
    temp = f"{path.parent}/.{path.name}.{os.getpid()}.tmp"
    try:
        return os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600), temp
    except FileExistsError:  # left by a crashed build of a process with the same id
        return tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")


@dataclass(slots=True)
class FeedRecord:
    signature: str
    files: list[str]


@dataclass(slots=True)
class Manifest:
    """What the last build wrote: its options, slugs, feeds (signature and files), listing files."""

    options: str = ""
    slugs: dict[str, dict[str, str]] = field(default_factory=dict)
    feeds: dict[str, FeedRecord] = field(default_factory=dict)
    listings: list[str] = field(default_factory=list)
    listings_signature: str = ""  #: of the index page
    outline_signature: str = ""  #: of the other listings

    def all_files(self) -> set[str]:
        files = set(self.listings)
        for record in self.feeds.values():
            files.update(record.files)
        return files

    def to_json(self) -> bytes:
        data: dict[str, Any] = {
            "version": MANIFEST_VERSION,
            "options": self.options,
            "slugs": self.slugs,
            "feeds": {key: {"signature": r.signature, "files": r.files} for key, r in sorted(self.feeds.items())},
            "listings": sorted(self.listings),
            "listings_signature": self.listings_signature,
            "outline_signature": self.outline_signature,
        }
        return json.dumps(data, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_json(cls, raw: bytes) -> Manifest:
        """The manifest in ``raw``; an unreadable or foreign one is treated as no manifest."""
        try:
            data = json.loads(raw)
            if not isinstance(data, dict) or data.get("version") != MANIFEST_VERSION:
                return cls()
            slugs = {str(kind): {str(k): str(v) for k, v in names.items()} for kind, names in data["slugs"].items()}
            feeds = {str(key): FeedRecord(str(value["signature"]), [str(f) for f in value["files"]])
                     for key, value in data["feeds"].items()}
            return cls(str(data["options"]), slugs, feeds, [str(f) for f in data["listings"]],
                       str(data.get("listings_signature", "")), str(data.get("outline_signature", "")))
        except (ValueError, KeyError, TypeError, AttributeError):
            return cls()


def load_manifest(out: OutputDir) -> Manifest:
    try:
        return Manifest.from_json((out.root / MANIFEST).read_bytes())
    except OSError:
        return Manifest()


def save_manifest(out: OutputDir, manifest: Manifest) -> None:
    out.write(MANIFEST, manifest.to_json())
