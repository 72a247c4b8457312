"""Local paths and storage URIs (`s3://`, `gs://`, `file://`, ...) behind one small API.

A run's files are written and read by processes other than the driver: Ray Train workers and
Tune trial drivers run in their own working folders, Ray Data tasks and actors run on other
nodes. So every path the library hands to them is absolute (`absolute`), every file they write
goes through a pyarrow filesystem (`filesystem_and_path`, `write_text`), never `open()`, and a
multi-node run refuses local paths that are not on a shared mount
(`lavender_ray.train.launch.check_storage`).
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any

import pyarrow.fs as pafs


def is_uri(path: str) -> bool:
    """`scheme://...` (`file://` included)."""
    return "://" in path


def is_remote(path: str) -> bool:
    """Storage every node reaches by itself: a URI other than `file://`."""
    return is_uri(path) and not path.startswith("file://")


def absolute(path: str) -> str:
    """A URI as it is; a local path made absolute against the current folder."""
    return path if is_uri(path) else os.path.abspath(path)


def local_path(path: str) -> str | None:
    """The path on this machine's filesystem of a local path or `file://` URI (absolute); None
    for other URIs (object storage)."""
    if not is_uri(path):
        return os.path.abspath(path)
    if path.startswith("file://"):
        return pafs.FileSystem.from_uri(path)[1]
    return None


def filesystem_and_path(uri: str) -> tuple[pafs.FileSystem, str]:
    """A local path or URI -> (pyarrow filesystem, path inside it)."""
    if is_uri(uri):
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), uri


@functools.lru_cache(maxsize=256)
def _folder_filesystem(folder_uri: str) -> tuple[pafs.FileSystem, str]:
    return pafs.FileSystem.from_uri(folder_uri)


def read_file(path: str) -> bytes:
    """A whole file from a local path or URI. URI filesystems are made once per folder and
    process: building an S3 filesystem looks up the bucket's region, a request per image
    otherwise."""
    if is_uri(path):
        folder, name = path.rsplit("/", 1)
        fs, inner_folder = _folder_filesystem(folder)
        fs_path = f"{inner_folder.rstrip('/')}/{name}"
    else:
        fs, fs_path = pafs.LocalFileSystem(), path
    with fs.open_input_stream(fs_path) as stream:
        return stream.read()


def exists(path: str) -> bool:
    fs, inner = filesystem_and_path(path)
    return fs.get_file_info(inner).type != pafs.FileType.NotFound


def write_bytes(path: str, data: bytes) -> None:
    """Write `data` to a local path or URI, creating its folder."""
    fs, inner = filesystem_and_path(path)
    fs.create_dir(inner.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(inner) as out:
        out.write(data)


def write_text(path: str, text: str) -> None:
    """Write `text` to a local path or URI, creating its folder."""
    write_bytes(path, text.encode())


def append_text(path: str, text: str) -> None:
    """Append `text` to the file at a local path or URI (created with its folder if missing).
    Local files are appended to, so a reader never sees the earlier lines vanish; object stores
    have no append, so there the file is read and written whole (fine for small files)."""
    fs, inner = filesystem_and_path(path)
    if not isinstance(fs, pafs.LocalFileSystem):
        write_text(path, (read_text(path) or "") + text)
        return
    fs.create_dir(inner.rsplit("/", 1)[0], recursive=True)
    with fs.open_append_stream(inner) as out:
        out.write(text.encode())


def read_text(path: str) -> str | None:
    """The text at a local path or URI, None when it does not exist."""
    fs, inner = filesystem_and_path(path)
    if fs.get_file_info(inner).type == pafs.FileType.NotFound:
        return None
    with fs.open_input_stream(inner) as f:
        return f.read().decode()


def copy_folder(source: str, destination: str) -> None:
    """Copy the folder `source` to `destination` (local paths or URIs), replacing what is there."""
    src_fs, src = filesystem_and_path(source)
    dst_fs, dst = filesystem_and_path(destination)
    if dst_fs.get_file_info(dst).type != pafs.FileType.NotFound:
        dst_fs.delete_dir(dst)
    dst_fs.create_dir(dst, recursive=True)
    pafs.copy_files(src, dst, source_filesystem=src_fs, destination_filesystem=dst_fs)


class JsonlTail:
    """The complete lines appended to a JSON-lines file (local path or URI) since the last
    `read_new`, parsed; a last line without its newline yet waits for the next call. A file
    that does not exist yet reads as empty; one that became shorter is read from the start."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.offset = 0

    def read_new(self) -> list[dict[str, Any]]:
        fs, inner = filesystem_and_path(self.path)
        info = fs.get_file_info(inner)
        if info.type != pafs.FileType.File:
            return []
        if info.size < self.offset:  # rewritten shorter (a resumed run): read it again
            self.offset = 0
        if info.size == self.offset:
            return []
        with fs.open_input_file(inner) as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n") + 1  # complete lines only
        self.offset += end
        return self.parse(data[:end])

    @staticmethod
    def parse(data: bytes) -> list[dict[str, Any]]:
        """The JSON objects of complete lines; a corrupt line is skipped."""
        records = []
        for line in data.splitlines():
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                records.append(value)
        return records
