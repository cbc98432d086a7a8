"""sgdd.io: hashes agree with hashlib, atomic writes leave the old file or the new one, never a
temporary file."""

from __future__ import annotations

import hashlib
import os

import pytest

from sgdd import io


def test_hashes_agree_with_hashlib_and_see_renames(tmp_path):
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(os.urandom(3 * io.BLOCK + 17))  # several read blocks and a partial one
    b.write_bytes(b"second")
    assert io.file_sha256(a) == hashlib.sha256(a.read_bytes()).hexdigest()
    assert io.bytes_sha256(b"second") == hashlib.sha256(b"second").hexdigest()
    manual = hashlib.sha256(b"a\0" + a.read_bytes() + b"b\0" + b"second").hexdigest()
    assert io.named_sha256([("a", a), ("b", b)]) == manual
    assert io.named_sha256([("a", a), ("c", b)]) != manual  # a renamed file changes the digest
    assert io.named_sha256([("b", b), ("a", a)]) != manual  # so does the order


def test_write_text_atomic_replaces_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "x.json"
    io.write_json_atomic(path, {"a": 1})
    io.write_text_atomic(path, "new\n")
    assert path.read_text() == "new\n" and os.listdir(tmp_path) == ["x.json"]


def test_a_failed_rename_keeps_the_old_file_and_removes_the_temporary(tmp_path, monkeypatch):
    path = tmp_path / "x.txt"
    path.write_text("old")

    def full_disk(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError, match="No space"):
        io.write_bytes_atomic(path, b"new")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["x.txt"]


def test_atomic_path_removes_a_half_written_temporary(tmp_path):
    path = tmp_path / "w.bin"
    with pytest.raises(RuntimeError):
        with io.atomic_path(path) as tmp:
            assert io.TMP_MARK in tmp.name and tmp.parent == tmp_path
            tmp.write_bytes(b"half")
            raise RuntimeError("writer failed")
    assert not path.exists() and os.listdir(tmp_path) == []
    with io.atomic_path(path) as tmp:
        tmp.write_bytes(b"whole")
    assert path.read_bytes() == b"whole" and os.listdir(tmp_path) == ["w.bin"]


@pytest.mark.parametrize("existing", [False, True])
def test_publish_dir_puts_the_new_tree_in_place(tmp_path, existing):
    final = tmp_path / "enc"
    if existing:
        final.mkdir()
        (final / "stale.txt").write_text("old")
    tmp = io.temp_name(final)
    (tmp / "sub").mkdir(parents=True)
    (tmp / "sub" / "f.txt").write_text("new")
    if existing:
        with pytest.raises(OSError):  # without replace, an existing directory is never removed
            io.publish_dir(tmp, final)
        assert (final / "stale.txt").is_file()
    io.publish_dir(tmp, final, replace=existing)
    assert sorted(p.relative_to(final).as_posix() for p in final.rglob("*")) == ["sub", "sub/f.txt"]
    assert not tmp.exists()
