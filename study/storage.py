"""Where a study lives: one filesystem view of `--storage` (a local path, NFS, `s3://`, `gs://`), and the one
atomic writer every table, record, figure and checkpoint goes through.

`Location.of(where)` resolves a local path or a URI, query string included (for example
`s3://bucket/runs?endpoint_override=127.0.0.1:9000&scheme=http`), with `pyarrow.fs.FileSystem.from_uri`, the
resolver Ray Train and Tune use for their own `storage_path`, so the study's files and Tune's trials land in
the same place. `loc.uri` is the form Ray's `storage_path` and `Tuner.restore` accept (query kept).

Atomic writes, both kinds:
- local: the bytes go to a temporary name in the target's folder, are flushed and fsynced, renamed over the
  final name (atomic on POSIX filesystems) and the folder is fsynced so the rename survives a power cut;
- object store: the bytes are produced into a local spool first and sent as one upload only when they are
  complete; an object appears at close (one PUT, or a multipart upload completed in one step), so a reader
  never sees a partial object, and nothing is uploaded when producing the bytes raises.
A process killed at any point leaves the previous file, or none, never a truncated one a later stage trusts.

Ray's own files get the same guarantee: `ray_storage(where)` is what Ray Tune's and Train's `RunConfig`,
`Tuner.restore` and `Tuner.can_restore` take. For a local folder it pairs the path with
`atomic_local_filesystem()`, a pyarrow filesystem that writes every file under a hidden temporary name and
renames it over the final name on close (Tune copies its snapshots into the study folder with
`pyarrow.fs.copy_files`, which otherwise writes the final file in place: a driver killed during that copy
left a truncated pickle, and a study that did not resume). An object store gets its URI and Ray's own
filesystem: an object appears whole at close already.

No Ray, no torch: every stage imports this cheaply.
"""

from __future__ import annotations

import builtins
import contextlib
import fnmatch
import json
import os
import re
import shutil
import tempfile
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO, Union

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs

TEMPORARY_SUFFIX = ".tmp"  # readers ignore names that start with "." and end with this
_SPOOL_BYTES = 64 * 2**20  # an object-store write is held in memory up to this size, then in a local temp file
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_uri(where: str | os.PathLike) -> bool:
    """True for `scheme://...` (s3, gs, file, ...); False for a plain local path."""
    return isinstance(where, str) and bool(_URI.match(where))


@dataclass(frozen=True, eq=False)
class Location:
    """A file or folder on a local disk or an object store: its `filesystem` (pyarrow) and `path` on it.

    `scheme` is "" for local paths, else the URI's scheme ("s3", "gs"); `query` is the URI's query string
    (endpoint, scheme, region...), kept so that `uri` still resolves to the same filesystem.

    Example::

        >>> from study.storage import Location
        >>> runs = Location.of("s3://bucket/runs?endpoint_override=127.0.0.1:9000&scheme=http")
        >>> (runs / "quick-digits").uri
        's3://bucket/runs/quick-digits?endpoint_override=127.0.0.1:9000&scheme=http'
        >>> Location.of("./runs").is_local
        True
    """

    filesystem: pafs.FileSystem
    path: str
    scheme: str = ""
    query: str = ""

    @classmethod
    def of(cls, where: str | os.PathLike[str] | Location) -> Location:
        """A Location from a local path (made absolute), a `file://` URI, or an object-store URI with its query.

        Raises ValueError naming `where` when pyarrow cannot resolve it (an unknown scheme, a bad query)."""
        if isinstance(where, Location):
            return where
        if not is_uri(where):
            return cls(pafs.LocalFileSystem(), str(Path(os.fspath(where)).expanduser().resolve()))
        text = str(where)
        parsed = urllib.parse.urlparse(text)
        if parsed.scheme == "file":
            return cls(pafs.LocalFileSystem(), str(Path(urllib.parse.unquote(parsed.path)).resolve()))
        try:
            filesystem, path = pafs.FileSystem.from_uri(text)
        except (ValueError, OSError, TypeError) as error:  # pyarrow raises ArrowInvalid (a ValueError) or OSError
            raise ValueError(f"{text!r} is not a storage location pyarrow can open ({error})") from None
        return cls(filesystem, path.rstrip("/"), parsed.scheme, parsed.query)

    # ------------------------------------------------------------------------------------ naming
    @property
    def is_local(self) -> bool:
        return not self.scheme

    @property
    def uri(self) -> str:
        """What Ray's `storage_path` (and `Tuner.restore`) accepts: an absolute local path, or the URI with
        its query string."""
        if self.is_local:
            return self.path
        return f"{self.scheme}://{self.path}" + (f"?{self.query}" if self.query else "")

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rpartition("/")[2]

    @property
    def parent(self) -> Location:
        parent = self.path.rstrip("/").rpartition("/")[0]
        return Location(self.filesystem, parent or "/", self.scheme, self.query)

    @property
    def bucket(self) -> str:
        """The bucket of an object-store location ("" for a local one)."""
        return "" if self.is_local else self.path.split("/", 1)[0]

    @property
    def local_path(self) -> Path:
        """The local `Path`; ValueError for an object-store location (download it first)."""
        if not self.is_local:
            raise ValueError(f"{self.uri} is on object storage, not a local path")
        return Path(self.path)

    def __truediv__(self, name: str) -> Location:
        return Location(self.filesystem, f"{self.path.rstrip('/')}/{name}", self.scheme, self.query)

    def __str__(self) -> str:
        return self.uri

    def __fspath__(self) -> str:
        """A local Location is a path-like (so `pd.read_parquet(loc / "results.parquet")` and `Path(loc)` work);
        an object-store one is not a local path and says so."""
        return str(self.local_path)

    def __repr__(self) -> str:
        return f"Location({self.uri!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Location) and other.uri == self.uri

    def __hash__(self) -> int:
        return hash(self.uri)

    # ------------------------------------------------------------------------------------ reading
    def _type(self) -> pafs.FileType:
        return self.filesystem.get_file_info(self.path).type

    def exists(self) -> bool:
        return self._type() != pafs.FileType.NotFound

    def is_file(self) -> bool:
        return self._type() == pafs.FileType.File

    def is_dir(self) -> bool:
        return self._type() == pafs.FileType.Directory

    def read_bytes(self) -> bytes:
        with self.filesystem.open_input_stream(self.path) as stream:
            return bytes(stream.read())

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def list(self, pattern: str = "*") -> list[Location]:
        """The entries directly in this folder whose names match the glob `pattern`, sorted by name; [] for a
        folder that does not exist."""
        selector = pafs.FileSelector(self.path, allow_not_found=True, recursive=False)
        entries = self.filesystem.get_file_info(selector)
        return sorted((Location(self.filesystem, entry.path, self.scheme, self.query) for entry in entries
                       if fnmatch.fnmatchcase(entry.base_name, pattern)), key=lambda loc: loc.name)

    def glob(self, pattern: str) -> builtins.list[Location]:
        """Same as `list(pattern)`: one level, like `Path.glob` without `**`."""
        return self.list(pattern)

    # ------------------------------------------------------------------------------------ changing
    def mkdir(self) -> None:
        """Create the folder (and its parents) on a local disk; object stores have no folders to create."""
        if self.is_local:
            Path(self.path).mkdir(parents=True, exist_ok=True)

    def delete(self) -> None:
        """Remove the file (missing is fine)."""
        if self.is_file():
            self.filesystem.delete_file(self.path)

    def download(self, local: str | os.PathLike) -> Path:
        """Copy this file, or this folder's tree, to `local`; returns `local`."""
        target = Path(local)
        if self.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            pafs.copy_files(self.path, str(target), source_filesystem=self.filesystem,
                            destination_filesystem=pafs.LocalFileSystem())
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            with self.filesystem.open_input_stream(self.path) as stream, open(target, "wb") as file:
                shutil.copyfileobj(stream, file)
        return target

    def upload(self, local: str | os.PathLike) -> Location:
        """Write the local file `local` here, atomically; returns self."""
        with open(local, "rb") as source:
            return atomic_write(self, lambda file: shutil.copyfileobj(source, file))


Where = Union[str, "os.PathLike[str]", Location]  # what the writers and readers take


@contextlib.contextmanager
def local_copy(source: Where) -> Iterator[Path]:
    """A local path of `source`: itself when local, else a download into a temporary folder removed on exit
    (e.g. a checkpoint on S3, which torch loads from a file)."""
    location = Location.of(source)
    if location.is_local:
        yield Path(location.path)
        return
    with tempfile.TemporaryDirectory(prefix="supcon-download-") as folder:
        yield location.download(Path(folder) / (location.name or "download"))


# ---------------------------------------------------------------------------------------- writing
def atomic_write(target: Where, write: Callable[[BinaryIO], Any]) -> Location:
    """Call `write(file)` on a binary file, then make it appear at `target` in one step: a local rename, or
    one upload at close on an object store. Nothing appears when `write` raises. Returns the Location."""
    location = Location.of(target)
    if location.is_local:
        _atomic_write_local(Path(location.path), write)
    else:
        _atomic_write_remote(location, write)
    return location


def _atomic_write_local(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    file, temporary = _open_temporary(path)
    try:
        write(file)
        _publish(file, temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):  # flushing what a failed write left buffered fails again
            file.close()
        temporary.unlink(missing_ok=True)
        raise


def _open_temporary(path: Path) -> tuple[BinaryIO, Path]:
    """A new hidden `.<name>.<random>.tmp` beside `path`, open for writing. Created with mode 0o666 (umask
    applied), the mode a plain write gives, not mkstemp's 0600: other users of a shared study folder can read it."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}{TEMPORARY_SUFFIX}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    return os.fdopen(descriptor, "wb"), temporary


def _publish(file: BinaryIO, temporary: Path, path: Path) -> None:
    """Flush, fsync and close `file` (written at `temporary`), rename it over `path`, fsync the folder."""
    file.flush()
    os.fsync(file.fileno())
    file.close()
    os.replace(temporary, path)
    fsync_folder(path.parent)


def _atomic_write_remote(location: Location, write: Callable[[BinaryIO], Any]) -> None:
    # pyarrow's S3/GCS output streams upload what they hold when closed, even when closed by an exception
    # (they have no abort), so the bytes are produced into a local spool first and streamed only once complete.
    with tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES) as spool:
        write(spool)  # type: ignore[arg-type]  # a SpooledTemporaryFile is a binary file
        spool.seek(0)
        with location.filesystem.open_output_stream(location.path) as stream:
            shutil.copyfileobj(spool, stream)


def fsync_folder(folder: str | os.PathLike) -> None:
    """Persist a folder's entries (a rename); a no-op where the filesystem cannot fsync folders."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def write_json(target: Where, value: Any) -> Location:
    """Pretty, key-sorted JSON, written atomically."""
    text = json.dumps(value, indent=2, sort_keys=True, default=str)
    return atomic_write(target, lambda file: file.write(text.encode()))


def write_table(table: pd.DataFrame, target: Where, *, csv: bool = True) -> Location:
    """A Parquet table (and its CSV twin beside it, same stem), each written atomically."""
    location = Location.of(target)
    atomic_write(location, lambda file: table.to_parquet(file, index=False))
    if csv:
        stem = location.name.rpartition(".")[0] or location.name
        atomic_write(location.parent / f"{stem}.csv", lambda file: file.write(table.to_csv(index=False).encode()))
    return location


def read_table(source: Where, columns: list[str] | None = None) -> pd.DataFrame:
    """A Parquet table from a local path or an object store."""
    location = Location.of(source)
    with location.filesystem.open_input_file(location.path) as file:
        return pd.read_parquet(file, columns=columns)


def read_json(source: Where) -> Any:
    return json.loads(Location.of(source).read_text())


def open_input(source: Where) -> IO[bytes]:
    """A readable binary file on `source` (close it, or use it in a `with`)."""
    location = Location.of(source)
    return location.filesystem.open_input_file(location.path)


# ---------------------------------------------------------------------------------------- Ray's writes
def ray_storage(where: Where) -> tuple[str, pafs.FileSystem | None]:
    """`(storage_path, storage_filesystem)` to give Ray for `where` (`RunConfig`, `Tuner.restore`,
    `Tuner.can_restore`): a local folder's absolute path with `atomic_local_filesystem()`, so that every file
    Ray writes there lands atomically; an object store's URI (query kept) with None, for Ray to resolve as it
    always has (an object appears whole at close)."""
    location = Location.of(where)
    return (location.path, atomic_local_filesystem()) if location.is_local else (location.uri, None)


def atomic_local_filesystem() -> pafs.PyFileSystem:
    """The local disk as a pyarrow filesystem whose written files appear only once complete (see
    `AtomicLocalHandler`). It pickles (Ray sends it to every trial and worker), and it is a `PyFileSystem`, not
    a `LocalFileSystem`: Ray's `Checkpoint.as_directory` copies such a checkpoint instead of reading it in place
    (this project reads local checkpoints by path: `study.launch.RayContext.latest_checkpoint`)."""
    return pafs.PyFileSystem(AtomicLocalHandler())


class AtomicLocalHandler(pafs.FileSystemHandler):
    """`pyarrow.fs.LocalFileSystem`, except that a file opened for writing (`open_output_stream`, and
    `copy_file`) is written to `.<name>.<random>.tmp` beside its final name, then flushed, fsynced and renamed
    over it on close, as `atomic_write` does. A process killed before the close, a write that fails, or a copy
    that pyarrow abandons half-way (it drops the stream without closing it) leaves the previous file, or none:
    at most a hidden temporary file, which no reader here or in Ray takes for a result.

    pyarrow closes a stream when a `with` block around it exits, exception or not, and tells the handler
    nothing: a caller whose code raises between two writes publishes what it wrote, as LocalFileSystem does.
    Ray writes each file in one `write` or with `copy_files`, so this does not arise there.
    """

    def __init__(self) -> None:
        self._local = pafs.LocalFileSystem()

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self)

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash(type(self))

    def get_type_name(self) -> str:
        return "atomic-local"

    def normalize_path(self, path: str) -> str:
        return self._local.normalize_path(path)

    def get_file_info(self, paths: list[str]) -> list[pafs.FileInfo]:
        return self._local.get_file_info(paths)

    def get_file_info_selector(self, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
        return self._local.get_file_info(selector)

    def create_dir(self, path: str, recursive: bool) -> None:
        self._local.create_dir(path, recursive=recursive)

    def delete_dir(self, path: str) -> None:
        self._local.delete_dir(path)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self._local.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self) -> None:
        raise OSError("refusing to delete the contents of the local filesystem's root")

    def delete_file(self, path: str) -> None:
        self._local.delete_file(path)

    def move(self, src: str, dest: str) -> None:
        self._local.move(src, dest)  # a rename: atomic already

    def copy_file(self, src: str, dest: str) -> None:
        # pyarrow's copy_files calls this, not a stream, when both sides are this filesystem.
        with self._local.open_input_stream(src) as source:
            _atomic_write_local(Path(dest), lambda file: shutil.copyfileobj(source, file, _COPY_CHUNK_BYTES))

    def open_input_stream(self, path: str) -> pa.NativeFile:
        return self._local.open_input_stream(path)

    def open_input_file(self, path: str) -> pa.NativeFile:
        return self._local.open_input_file(path)

    def open_output_stream(self, path: str, metadata: dict[str, str] | None) -> pa.NativeFile:
        return pa.PythonFile(_AtomicOutput(path), mode="w")

    def open_append_stream(self, path: str, metadata: dict[str, str] | None) -> pa.NativeFile:
        # Appending keeps what the file held; Ray does not append to its storage.
        return self._local.open_append_stream(path)


_COPY_CHUNK_BYTES = 8 * 2**20


class _AtomicOutput:
    """A file being written under a hidden temporary name; `close()` publishes it under `path`."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        file, self.temporary = _open_temporary(self.path)
        self._file: BinaryIO | None = file
        self._failed = False

    @property
    def closed(self) -> bool:
        return self._file is None

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    def write(self, data: Any) -> int:
        assert self._file is not None, "write to a closed file"
        try:
            return self._file.write(data)
        except BaseException:
            self._failed = True  # never publish a file a write failed in (disk full, file too large)
            raise

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def tell(self) -> int:
        assert self._file is not None, "tell on a closed file"
        return self._file.tell()

    def close(self) -> None:
        """Publish the file under its final name, unless a write failed (then it is discarded)."""
        if self._file is None:
            return
        if self._failed:
            self.discard()
            return
        try:
            _publish(self._file, self.temporary, self.path)
        except BaseException:
            self.discard()
            raise
        self._file = None

    def discard(self) -> None:
        """Drop what was written: the final name keeps its previous file, or stays absent."""
        file, self._file = self._file, None
        if file is not None:
            with contextlib.suppress(OSError):  # flushing what a failed write left buffered fails again
                file.close()
        self.temporary.unlink(missing_ok=True)

    def __del__(self) -> None:
        # pyarrow drops a stream it abandons (copy_files after a failed read) without closing it.
        if getattr(self, "_file", None) is not None:
            with contextlib.suppress(Exception):
                self.discard()
