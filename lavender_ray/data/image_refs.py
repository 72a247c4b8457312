"""How a row's image reference becomes checked, encoded bytes: `ImageLoader`.

A converter of `lavender_ray.data.formats` gets its row's image through an `ImageLoader`. A
relative path reference resolves against the source's `image_root` when one is set, else
against the folder of the data file the row came from (as LLaMA-Factory and LLaVA do); absolute
paths and storage URIs (`s3://`, `gs://`, `file://`, ...) are read as they are. Web URLs
(`http(s)://`, `ftp://`) are rejected as `remote_image`: nothing is downloaded. Each image is
checked at read time (`lavender_ray.images.check_image`, injected as `ImageLoader.check`), so a
reject names the file.

Files are read through `ImageLoader.read_bytes` (`storage.read_file`: pyarrow filesystems); a
reference the pipeline cannot use raises `RecordError` with the reject reasons listed in
`lavender_ray.data.formats`.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lavender_ray.schema import RecordError
from lavender_ray.storage import is_uri, read_file

WEB_SCHEMES = ("http", "https", "ftp", "ftps")  # `remote_image`: the project never downloads

ReadBytes = Callable[[str], bytes]
CheckImage = Callable[[bytes], object]  # raises RecordError (lavender_ray.images.check_image)


def folder_of(path: str) -> str:
    """The folder holding a file given by local path or URI ("." for a bare file name)."""
    folder, slash, _ = path.rpartition("/")
    return (folder or "/") if slash else "."


def max_image_bytes(max_pixels: int) -> int:
    """The largest image file read: any encoding of `max_pixels` pixels fits (8 bytes per pixel,
    16-bit RGBA, uncompressed) with 1 MiB of metadata; bigger is not an image worth reading (or
    is `/dev/zero`)."""
    return 8 * max_pixels + (1 << 20)


@dataclass(frozen=True)
class ImageLoader:
    """How a converter gets its row's encoded image (module docstring, "Images").

    `root`: the folder relative references resolve against (the source's `image_root`, else the
    data file's folder; None: as given). `check`: raises RecordError for bytes no stage can use
    (None: not checked). Files over `max_bytes` are not read."""

    root: str | None = None
    read_bytes: ReadBytes = read_file
    check: CheckImage | None = None
    max_bytes: int = max_image_bytes(8192 * 8192)  # data.max_image_pixels' default

    def __call__(self, image: Any, field: str) -> bytes:
        """An image reference (a path, bytes, or `{"bytes", "path"}`) from the row's `field` ->
        encoded bytes that passed `check`; RecordError naming the field or the path."""
        data, where = self._bytes(image, field)
        if self.check is not None:
            try:
                self.check(data)
            except RecordError as err:
                raise RecordError(err.reason, f"{where}: {err.detail}") from None
        return data

    def path_of(self, reference: str) -> str:
        """A path reference -> the path or URI read (relative ones joined onto `root`)."""
        if is_uri(reference) or os.path.isabs(reference) or not self.root:
            return reference
        if is_uri(self.root):
            return f"{self.root.rstrip('/')}/{reference}"
        return os.path.normpath(os.path.join(self.root, reference))

    def _bytes(self, image: Any, field: str) -> tuple[bytes, str]:
        """(bytes, where they came from: the path, or the field for embedded bytes)."""
        if isinstance(image, dict):
            embedded, path = image.get("bytes"), image.get("path")
            if isinstance(embedded, (bytes, bytearray)) and embedded:
                return bytes(embedded), f"{field}.bytes"
            if isinstance(path, str) and path:
                image = path
            elif set(image) <= {"bytes", "path"} and not embedded and not path:
                raise RecordError("missing_image", f"{field} has neither bytes nor a path")
            else:
                raise RecordError(
                    "bad_image_field",
                    f"{field} is an object without image bytes or a path (keys: {sorted(image)})",
                )
        if isinstance(image, (bytes, bytearray)) and image:
            return bytes(image), f"{field} (embedded bytes)"
        if image is None or image in ("", b""):
            raise RecordError("missing_image", f"{field} is empty")
        if not isinstance(image, str):
            raise RecordError(
                "bad_image_field",
                f"{field} is a {type(image).__name__} ({image!r:.60}), not a path, bytes or "
                "{bytes, path}",
            )
        path = self._readable_path(image, field)
        return self._read(path), path

    def _readable_path(self, reference: str, field: str) -> str:
        scheme = reference.split("://", 1)[0].lower() if "://" in reference else None
        if scheme in WEB_SCHEMES:
            raise RecordError(
                "remote_image",
                f"{field} is a URL: {reference!r:.200}; images are read from paths and storage "
                "URIs (s3://, gs://, file://), never downloaded",
            )
        if reference.startswith("data:"):
            raise RecordError(
                "bad_image_field", f"{field} is a data: URI ({reference:.40}...), not a path"
            )
        return self.path_of(reference)

    def _read(self, path: str) -> bytes:
        """The file's bytes; a missing, special, empty, oversized or unreadable file is a
        RecordError naming the path (local files are looked at before they are read)."""
        if not is_uri(path) or path.startswith("file://"):
            self._check_local_file(path.removeprefix("file://"))
        try:
            data = self.read_bytes(path)
        except FileNotFoundError:
            raise RecordError("missing_image", f"{path}: no such file") from None
        except Exception as err:  # any I/O failure of one row's file is that row's problem
            raise RecordError("unreadable_image", f"{path}: {type(err).__name__}: {err}") from None
        if not data:
            raise RecordError("empty_image", f"{path}: empty file (0 bytes)")
        if len(data) > self.max_bytes:
            raise RecordError("image_too_large", f"{path}: {len(data)} bytes > {self.max_bytes}")
        return data

    def _check_local_file(self, path: str) -> None:
        try:
            info = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            raise RecordError("missing_image", f"{path}: no such file") from None
        except (OSError, ValueError) as err:  # permissions, a name with a NUL or a surrogate
            raise RecordError("unreadable_image", f"{path}: {type(err).__name__}: {err}") from None
        if stat.S_ISDIR(info.st_mode):
            raise RecordError("unreadable_image", f"{path} is a folder, not an image file")
        if not stat.S_ISREG(info.st_mode):
            raise RecordError("unreadable_image", f"{path} is not a regular file")
        if info.st_size == 0:
            raise RecordError("empty_image", f"{path}: empty file (0 bytes)")
        if info.st_size > self.max_bytes:
            raise RecordError(
                "image_too_large", f"{path}: {info.st_size} bytes > {self.max_bytes}"
            )
