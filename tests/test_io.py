"""rwwce._io: whole files or none, the umask honoured, errors naming the user's path."""

import os

import pytest

from rwwce import _io


def test_new_files_follow_the_umask_and_replaced_files_keep_their_mode(tmp_path):
    old = os.umask(0o022)
    try:
        path = tmp_path / "report.md"
        _io.atomic_write(path, "one")
        assert (path.stat().st_mode & 0o777) == 0o644
        os.chmod(path, 0o600)
        _io.atomic_write(path, b"two")
        assert path.read_bytes() == b"two" and (path.stat().st_mode & 0o777) == 0o600
    finally:
        os.umask(old)


def test_an_interrupted_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "results.csv"
    path.write_text("kept")
    with pytest.raises(KeyboardInterrupt), _io.atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write("half")
        raise KeyboardInterrupt
    assert path.read_text() == "kept"
    assert os.listdir(tmp_path) == ["results.csv"]


def test_errors_name_the_users_path(tmp_path):
    missing = tmp_path / "no-such-folder" / "costs.csv"
    with pytest.raises(OSError, match=f"cannot write {missing}") as caught:
        _io.atomic_write(missing, "x")
    assert ".tmp" not in str(caught.value)
    target = tmp_path / "a-folder"
    target.mkdir()
    (target / "inside").write_text("x")  # replacing a non-empty folder fails at os.replace
    with pytest.raises(OSError, match=f"cannot write {target}") as caught:
        _io.atomic_write(target, "x")
    assert ".tmp" not in str(caught.value)
    assert sorted(os.listdir(tmp_path)) == ["a-folder"]
