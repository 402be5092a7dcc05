"""Writing feed files safely: atomically, only when their bytes changed, never outside the output folder.

A reader polling during a rebuild must never get half a file, so every file is written to a
temporary file next to it and renamed over the old one. A file whose bytes are unchanged is not
touched, so its mtime (and the Last-Modified a web server derives from it) stays put.

The manifest remembers, for each feed of the last build, a signature of everything it shows and
the files it wrote; the next build renders only feeds whose signature changed and removes the
files of feeds that no longer exist (and only those: the output folder may hold other files).

A build that is killed (SIGKILL, power loss, a full disk) must not leave a manifest that vouches
for files it did not describe: a feed rewritten by the killed build would count as unchanged for
ever. So, before it changes any file, a build durably records its intent (:func:`record_intent`,
``.finews-intent.json``: every file it may write); only after its files are on disk does it write
the manifest and drop the intent. A build that finds an intent knows the last one did not finish:
it trusts no signature (renders every feed, as ``--full`` does), counts every file of the intent
as one a build wrote (so what the new build does not write is removed), and sweeps the temporary
files the killed build left.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import BuildError
from ..files import TEMP_SUFFIX, atomic_write

MANIFEST = ".finews-manifest.json"
INTENT = ".finews-intent.json"
LOCK = ".finews-build.lock"
#: Version 2: with a checksum (a flipped bit in a slug would move a feed); 3: with the cache's generation.
MANIFEST_VERSION = 3
#: Mode of written files: readable by the web server, like files a static site generator writes.
FILE_MODE = 0o644

log = logging.getLogger(__name__)


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

    def write(self, rel: str, data: bytes, durable: bool = False) -> bool:
        """Write ``data`` to ``rel`` atomically unless the file already holds exactly these bytes.
        Returns whether the file was written. ``durable``: on disk (file and folder synced)
        when this returns, for the files later builds rely on. Feeds are not synced one by one
        (a cold build writes thousands): the build flushes once before its manifest says they
        are there (see the module doc)."""
        path = self.target(rel)
        try:
            return atomic_write(path, data, mode=FILE_MODE, durable=durable)
        except OSError as exc:
            raise BuildError(f"cannot write {path}: {exc.strerror}", hint="check the output folder's permissions and free space") from None

    def remove(self, rel: str) -> bool:
        """Remove ``rel`` and the folders it leaves empty; returns whether a file was removed."""
        try:
            path = self.target(rel)
        except BuildError:
            return False
        removed = True
        try:
            path.unlink()
        except FileNotFoundError:
            # Perhaps never written: an interrupted build creates a folder before its file.
            removed = False
        except OSError as exc:
            raise BuildError(f"cannot remove {path}: {exc.strerror}") from None
        parent = path.parent
        while parent != self.root:
            try:
                parent.rmdir()
            except OSError:
                break
            self._checked.discard(parent)
            self._folders.pop(parent.relative_to(self.root).as_posix(), None)
            parent = parent.parent
        return removed

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
            # Whoever holds the lock is the only writer: temporary files here are a dead build's
            # (its manifest or state; those in feed folders are swept after its intent is read).
            self.sweep_temporaries(())
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def exists(self, rel: str) -> bool:
        return os.path.isfile(os.path.join(self.root, rel))

    def folders(self, rel: str) -> list[str]:
        """The names of the folders in the folder ``rel`` (not symlinks), sorted."""
        try:
            return sorted(e.name for e in os.scandir(self.root / rel) if e.is_dir(follow_symlinks=False))
        except OSError:
            return []

    def sweep_temporaries(self, files: Iterable[str]) -> int:
        """Remove the temporary files an interrupted build left in the folders of ``files``
        (and the output folder itself); returns how many."""
        folders = {self.root} | {self.root / rel.rpartition("/")[0] for rel in files if "/" in rel}
        removed = 0
        for folder in folders:
            try:
                names = [e.name for e in os.scandir(folder) if e.name.startswith(".") and e.name.endswith(TEMP_SUFFIX)]
            except OSError:
                continue
            for name in names:
                with contextlib.suppress(OSError):
                    os.unlink(folder / name)
                    removed += 1
        return removed


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
    plan_key: str = ""  #: what besides the posts decided the feeds (settings, code version)
    cache_id: str = ""  #: the post cache this build read
    generation: int = 0  #: the cache's generation it built at
    due: float | None = None  #: POSIX time the first post it left out as future comes due
    #: True when the last build did not finish, or its manifest could not be read: no
    #: signature is kept (see the module doc).
    interrupted: bool = False
    #: True when a manifest file was there but could not be read: what it listed is unknown.
    unreadable: bool = False

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
            "plan_key": self.plan_key,
            "cache_id": self.cache_id,
            "generation": self.generation,
            "due": self.due,
        }
        data["checksum"] = _checksum(data)
        return json.dumps(data, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_json(cls, raw: bytes) -> Manifest | None:
        """The manifest in ``raw``; None when it is unreadable or foreign."""
        try:
            data = json.loads(raw)
            if (not isinstance(data, dict) or data.get("version") != MANIFEST_VERSION
                    or data.pop("checksum", None) != _checksum(data)):
                return None
            slugs = {str(kind): {str(k): str(v) for k, v in names.items()} for kind, names in data["slugs"].items()}
            feeds = {str(key): FeedRecord(str(value["signature"]), [str(f) for f in value["files"]])
                     for key, value in data["feeds"].items()}
            due = data["due"]
            return cls(str(data["options"]), slugs, feeds, [str(f) for f in data["listings"]],
                       str(data["listings_signature"]), str(data["outline_signature"]), str(data["plan_key"]),
                       str(data["cache_id"]), int(data["generation"]), float(due) if due is not None else None)
        except (ValueError, KeyError, TypeError, AttributeError):
            return None


def _checksum(data: dict[str, Any]) -> str:
    text = json.dumps(data, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def load_manifest(out: OutputDir) -> Manifest:
    """The manifest of the last build: empty when there is none; ``interrupted`` (no signature,
    the intent's files added) when that build did not finish; also ``unreadable`` when the file
    is there but damaged or foreign."""
    try:
        raw = (out.root / MANIFEST).read_bytes()
    except FileNotFoundError:
        manifest: Manifest | None = Manifest()
    except OSError as exc:
        log.warning("%s: cannot read the manifest (%s); rendering every feed again", out.root / MANIFEST, exc.strerror)
        manifest = None
    else:
        manifest = Manifest.from_json(raw)
        if manifest is None:
            log.warning("%s: unreadable manifest; rendering every feed again", out.root / MANIFEST)
    if manifest is None:
        manifest = Manifest(interrupted=True, unreadable=True)
    try:
        intent = json.loads((out.root / INTENT).read_bytes())
        files = [str(rel) for rel in intent["files"]]
    except FileNotFoundError:
        return manifest
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("%s: unreadable (%s); rendering every feed again", out.root / INTENT, exc.__class__.__name__)
        return dataclasses.replace(manifest, interrupted=True, unreadable=True)
    log.warning("%s: the last build did not finish; rendering every feed again", out.root)
    feeds = {key: FeedRecord("", record.files) for key, record in manifest.feeds.items()}
    feeds["intent:"] = FeedRecord("", files)
    return Manifest(manifest.options, manifest.slugs, feeds, manifest.listings, interrupted=True,
                    unreadable=manifest.unreadable)


def record_intent(out: OutputDir, files: Iterable[str]) -> None:
    """Record, durably, that a build is about to write ``files`` (see the module doc)."""
    out.write(INTENT, json.dumps({"files": sorted(set(files))}, ensure_ascii=False).encode("utf-8"), durable=True)


def save_manifest(out: OutputDir, manifest: Manifest, written: bool = True) -> None:
    """Save ``manifest`` once the files it describes are written, and drop the intent.
    ``written``: whether any file was written or removed since the intent."""
    if written:
        # One flush of everything written, so the manifest never reaches the disk before the
        # files it describes (after a power cut); an fsync per feed would cost a cold build
        # thousands of them.
        os.sync()
    out.write(MANIFEST, manifest.to_json(), durable=True)
    # Not durable: an intent that comes back after a power cut costs one full render.
    with contextlib.suppress(FileNotFoundError):
        os.unlink(out.root / INTENT)
