"""Result files a root daemon or tool writes where others may write too (/tmp, a shared
directory): created 0600, never through a symlink or into a FIFO left at the path."""
import os
import stat
import tempfile


def open_private(path, mode="w"):
    """open(path, mode) for writing ("w" or "wb"): truncated or created 0600, O_NOFOLLOW; an
    existing file that is not a regular one of ours is refused with OSError."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_nlink != 1:
            raise OSError(f"{path}: not a regular file of this user's with one link; not written")
        os.ftruncate(fd, 0)
        os.fchmod(fd, 0o600)
        os.set_blocking(fd, True)
        return os.fdopen(fd, mode)
    except BaseException:
        os.close(fd)
        raise


def replace_private(path, data):
    """Write bytes `data` as `path` whole: a 0600 temporary file beside it, renamed over it (a
    reader sees the old content or the new, never part), its directory made if missing. OSError
    when it cannot be; no temporary file is left then."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}-")     # 0600 from the start
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
