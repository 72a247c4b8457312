"""The authors' `<image>/lpm_attention/<stem>/attention_<word>.jpg` layout, both ways."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lavender_ray.sd.authors import (
    AUTHORS_HASH,
    export_targets,
    image_name_for,
    read_word_maps,
    target_from_word_maps,
    write_word_maps,
)
from lavender_ray.sd.target import SDTarget


def blobs(n: int, size: int = 32) -> np.ndarray:
    """`n` smooth maps in [0, 1]: a Gaussian blob each, at different places."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    centres = [(8 + 7 * i % 20, 20 - 5 * i % 16) for i in range(n)]
    maps = [np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / 40.0) for cx, cy in centres]
    return np.stack(maps).astype(np.float32)


def test_round_trip_writes_their_paths_and_reads_back_the_maps(tmp_path) -> None:
    words, maps = ["red", "circle", "ünïcode"], blobs(3)
    paths = write_word_maps(tmp_path, "image_7.jpg", words, maps)
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == [
        f"image_7.jpg/lpm_attention/image_7/attention_{w}.jpg" for w in words
    ]
    with Image.open(paths[0]) as image:
        assert image.mode == "L" and image.size == (32, 32) and image.format == "JPEG"
    read = read_word_maps(tmp_path, "image_7.jpg")
    assert sorted(read) == sorted(words)
    for word, expected in zip(words, maps):
        assert read[word].dtype == np.float32
        np.testing.assert_allclose(read[word], expected, atol=3 / 255)


def test_reader_merges_stem_folders_and_ignores_other_files(tmp_path) -> None:
    write_word_maps(tmp_path, "a.b.jpg", ["dog"], blobs(1))
    other = tmp_path / "a.b.jpg" / "lpm_attention" / "other"
    other.mkdir()
    Image.fromarray(np.full((32, 32), 255, np.uint8)).save(other / "attention_cat.jpg")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(other / "notes.jpg")
    read = read_word_maps(tmp_path, "a.b.jpg")
    assert sorted(read) == ["cat", "dog"]
    assert (tmp_path / "a.b.jpg" / "lpm_attention" / "a").is_dir()  # stem: up to the first dot
    np.testing.assert_allclose(read["cat"], 1.0)
    assert read_word_maps(tmp_path, "missing.jpg") == {}


def test_words_that_cannot_be_file_names_are_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="cannot be a file name"):
        write_word_maps(tmp_path, "x.jpg", ["two_words"], blobs(1))


def test_target_from_word_maps_orders_by_the_text() -> None:
    maps = dict(zip(["square", "red", "zebra", "a"], blobs(4)))
    target = target_from_word_maps(maps, "A red circle left of a square.")
    assert target.words == ["a", "red", "square", "zebra"]
    assert target.spans == [(0, 1), (2, 5), (23, 29), (-1, -1)]
    np.testing.assert_array_equal(target.maps[1], maps["red"])
    assert target.config_hash == AUTHORS_HASH and target.words_cut == 0
    assert target_from_word_maps(maps).words == ["a", "red", "square", "zebra"]


def test_export_rows_then_read_them_back(tmp_path) -> None:
    target = SDTarget(["blue", "square"], [(2, 6), (7, 13)], blobs(2), 0, "abc123")
    rows = [dict(target.to_row(), id="synthetic/0001"), dict(target.to_row(), id="photo.png")]
    assert export_targets(rows, tmp_path) == 2
    assert image_name_for("synthetic/0001") == "synthetic_0001.jpg"
    assert image_name_for("photo.png") == "photo.png"
    for name in ("synthetic_0001.jpg", "photo.png"):
        read = read_word_maps(tmp_path, name)
        np.testing.assert_allclose(read["square"], target.maps[1], atol=3 / 255)
