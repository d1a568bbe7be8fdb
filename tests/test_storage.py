"""The local filesystem Ray is given for a local study (`study.storage.atomic_local_filesystem`): a file written
through it appears whole or not at all; everything else behaves as pyarrow's LocalFileSystem."""

from __future__ import annotations

import gc
import pickle
import resource
import signal
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pytest

from study.storage import TEMPORARY_SUFFIX, Location, atomic_local_filesystem, ray_storage, write_json


def names(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


class FailingSource(pafs.FileSystemHandler):
    """A source that yields `good` bytes of a file, then fails as a lost disk or network would."""

    def __init__(self, good: int) -> None:
        self.good = good

    def __eq__(self, other: object) -> bool:
        return other is self

    def __ne__(self, other: object) -> bool:
        return other is not self

    def get_type_name(self) -> str:
        return "failing"

    def normalize_path(self, path: str) -> str:
        return path

    def get_file_info(self, paths: list[str]) -> list[pafs.FileInfo]:
        return [pafs.FileInfo(path, pafs.FileType.File, size=10 * self.good) for path in paths]

    def open_input_stream(self, path: str) -> pa.NativeFile:
        handler = self

        class Stream:
            closed, sent = False, 0

            def read(self, size: int = -1) -> bytes:
                if self.sent >= handler.good:
                    raise OSError("the source went away")
                chunk = b"n" * min(size if size > 0 else handler.good, handler.good - self.sent)
                self.sent += len(chunk)
                return chunk

            def close(self) -> None:
                self.closed = True

        return pa.PythonFile(Stream(), mode="r")

    def get_file_info_selector(self, selector): raise NotImplementedError  # noqa: E704
    def create_dir(self, path, recursive): raise NotImplementedError  # noqa: E704
    def delete_dir(self, path): raise NotImplementedError  # noqa: E704
    def delete_dir_contents(self, path, missing_dir_ok=False): raise NotImplementedError  # noqa: E704
    def delete_root_dir_contents(self): raise NotImplementedError  # noqa: E704
    def delete_file(self, path): raise NotImplementedError  # noqa: E704
    def move(self, src, dest): raise NotImplementedError  # noqa: E704
    def copy_file(self, src, dest): raise NotImplementedError  # noqa: E704
    def open_input_file(self, path): raise NotImplementedError  # noqa: E704
    def open_output_stream(self, path, metadata): raise NotImplementedError  # noqa: E704
    def open_append_stream(self, path, metadata): raise NotImplementedError  # noqa: E704


def test_a_write_lands_whole_under_its_name_with_a_plain_file_s_mode(tmp_path):
    filesystem = atomic_local_filesystem()
    with filesystem.open_output_stream(str(tmp_path / "state.json")) as stream:
        stream.write(b"{")
        stream.write(b"}")
    assert (tmp_path / "state.json").read_bytes() == b"{}"
    assert names(tmp_path) == ["state.json"]
    with pafs.LocalFileSystem().open_output_stream(str(tmp_path / "plain")):
        pass
    assert (tmp_path / "state.json").stat().st_mode == (tmp_path / "plain").stat().st_mode  # not mkstemp's 0600
    write_json(tmp_path / "study.json", {})  # the study's own atomic writes get a plain file's mode too
    assert (tmp_path / "study.json").stat().st_mode == (tmp_path / "plain").stat().st_mode

    # Ray's copy (pyarrow.fs.copy_files from the local disk): the copy replaces the file whole.
    (tmp_path / "staging").mkdir()
    (tmp_path / "staging" / "state.json").write_bytes(b"x" * 3_000_000)
    pafs.copy_files(str(tmp_path / "staging"), str(tmp_path), destination_filesystem=filesystem)
    assert (tmp_path / "state.json").read_bytes() == b"x" * 3_000_000


def test_a_copy_that_fails_half_way_leaves_the_previous_file_or_none(tmp_path):
    filesystem = atomic_local_filesystem()
    (tmp_path / "search_gen_state.json").write_bytes(b"previous")
    for target in ("search_gen_state.json", "new.json"):
        with pytest.raises(OSError, match="the source went away"):
            pafs.copy_files("source", str(tmp_path / target), source_filesystem=pafs.PyFileSystem(FailingSource(1000)),
                            destination_filesystem=filesystem, chunk_size=100)
    gc.collect()  # pyarrow drops the abandoned stream without closing it; its temporary goes with it
    assert names(tmp_path) == ["search_gen_state.json"]
    assert (tmp_path / "search_gen_state.json").read_bytes() == b"previous"


def test_a_write_that_fails_publishes_nothing(tmp_path):
    """A disk that fills up mid-write (RLIMIT_FSIZE stands in for it: writes past the limit fail with EFBIG)."""
    filesystem = atomic_local_filesystem()
    (tmp_path / "tuner.pkl").write_bytes(b"previous")
    limits, handler = resource.getrlimit(resource.RLIMIT_FSIZE), signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (2**16, limits[1]))
    try:
        with pytest.raises(OSError, match="too large"):
            with filesystem.open_output_stream(str(tmp_path / "tuner.pkl")) as stream:
                stream.write(b"n" * 2**20)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)
    assert names(tmp_path) == ["tuner.pkl"]
    assert (tmp_path / "tuner.pkl").read_bytes() == b"previous"


def test_a_writer_that_never_closes_leaves_only_a_hidden_temporary(tmp_path):
    """What a process killed mid-write leaves (the kill itself: tests/faults/test_fault_snapshot_copy.py)."""
    filesystem = atomic_local_filesystem()
    (tmp_path / "a.json").write_bytes(b"previous")
    stream = filesystem.open_output_stream(str(tmp_path / "a.json"))
    stream.write(b"half")
    stream.flush()
    [temporary] = [name for name in names(tmp_path) if name != "a.json"]
    assert temporary.startswith(".a.json.") and temporary.endswith(TEMPORARY_SUFFIX)
    assert (tmp_path / "a.json").read_bytes() == b"previous"
    stream.close()
    assert names(tmp_path) == ["a.json"] and (tmp_path / "a.json").read_bytes() == b"half"


def test_everything_but_writing_is_the_local_filesystem_s(tmp_path):
    filesystem, local = atomic_local_filesystem(), pafs.LocalFileSystem()
    filesystem.create_dir(str(tmp_path / "trial" / "checkpoint_000000"), recursive=True)
    (tmp_path / "trial" / "checkpoint_000000" / "state.pt").write_bytes(b"weights")
    (tmp_path / "trial" / "result.json").write_bytes(b"{}")
    selector = pafs.FileSelector(str(tmp_path), recursive=True)
    assert ([(info.path, info.type, info.size) for info in filesystem.get_file_info(selector)]
            == [(info.path, info.type, info.size) for info in local.get_file_info(selector)])
    assert filesystem.get_file_info(str(tmp_path / "missing")).type == pafs.FileType.NotFound
    with filesystem.open_input_file(str(tmp_path / "trial" / "result.json")) as file:
        assert file.size() == 2 and file.read() == b"{}"
    with filesystem.open_input_stream(str(tmp_path / "trial" / "checkpoint_000000" / "state.pt")) as stream:
        assert stream.read() == b"weights"

    filesystem.copy_file(str(tmp_path / "trial" / "result.json"), str(tmp_path / "copy.json"))
    filesystem.move(str(tmp_path / "copy.json"), str(tmp_path / "moved.json"))
    assert (tmp_path / "moved.json").read_bytes() == b"{}" and not (tmp_path / "copy.json").exists()
    with filesystem.open_append_stream(str(tmp_path / "moved.json")) as stream:
        stream.write(b"\n")
    assert (tmp_path / "moved.json").read_bytes() == b"{}\n"
    filesystem.delete_file(str(tmp_path / "moved.json"))
    filesystem.delete_dir_contents(str(tmp_path / "trial" / "checkpoint_000000"))
    assert names(tmp_path / "trial") == ["checkpoint_000000", "result.json"]
    filesystem.delete_dir(str(tmp_path / "trial"))
    assert names(tmp_path) == []
    assert filesystem.normalize_path(str(tmp_path)) == local.normalize_path(str(tmp_path))


def test_it_pickles_as_ray_sends_it_to_trials_and_workers(tmp_path):
    filesystem = pickle.loads(pickle.dumps(atomic_local_filesystem()))
    assert filesystem == atomic_local_filesystem() and filesystem.type_name == "py::atomic-local"
    with filesystem.open_output_stream(str(tmp_path / "a")) as stream:
        stream.write(b"a")
    assert names(tmp_path) == ["a"]


def test_ray_gets_the_atomic_filesystem_for_a_local_study_and_its_own_for_an_object_store(tmp_path):
    path, filesystem = ray_storage(tmp_path / "runs")
    assert path == str(tmp_path / "runs") and filesystem == atomic_local_filesystem()
    uri = "s3://bucket/runs?endpoint_override=127.0.0.1:9000&scheme=http"
    assert ray_storage(uri) == (uri, None)

    from study.sweep import SweepOptions, _tune_run_config

    config = _tune_run_config(Location.of(tmp_path / "runs" / "s" / "tune"), SweepOptions(), total=1)
    assert (config.storage_path, config.name) == (str(tmp_path / "runs" / "s"), "tune")
    assert config.storage_filesystem == atomic_local_filesystem()
    config = _tune_run_config(Location.of("s3://bucket/runs/s/tune?endpoint_override=127.0.0.1:9000&scheme=http"),
                              SweepOptions(), total=1)
    assert (config.storage_path, config.storage_filesystem) == (uri.replace("runs", "runs/s"), None)
