"""open_private: result files 0600, never written through a symlink or into a FIFO (the
kernel's own answers, and the planted file's bytes and mode, are the oracle)."""
import os
import stat

import pytest

from netprobe.fileio import open_private


def test_creates_0600_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        with open_private(tmp_path / "r.csv") as fh:
            fh.write("x\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "r.csv").st_mode) == 0o600
    assert (tmp_path / "r.csv").read_text() == "x\n"


def test_truncates_and_tightens_an_old_file_of_ours(tmp_path):
    p = tmp_path / "r.npz"
    p.write_bytes(b"old contents, longer")
    p.chmod(0o644)
    with open_private(p, "wb") as fh:
        fh.write(b"new")
    assert p.read_bytes() == b"new" and stat.S_IMODE(p.stat().st_mode) == 0o600


def test_never_writes_through_a_symlink(tmp_path):
    target = tmp_path / "outside"
    target.write_text("keep")
    target.chmod(0o644)
    (tmp_path / "loco.csv").symlink_to(target)
    with pytest.raises(OSError):
        open_private(tmp_path / "loco.csv")
    assert target.read_text() == "keep" and stat.S_IMODE(target.stat().st_mode) == 0o644


def test_refuses_a_fifo_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "f")
    with pytest.raises(OSError):
        open_private(tmp_path / "f")


def test_refuses_a_hard_link(tmp_path):
    target = tmp_path / "outside"
    target.write_text("keep")
    os.link(target, tmp_path / "linked")
    with pytest.raises(OSError):
        open_private(tmp_path / "linked")
    assert target.read_text() == "keep"
