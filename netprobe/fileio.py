"""Result files a root daemon or tool writes where others may write too (/tmp, a shared
directory): created 0600, never through a symlink or into a FIFO left at the path."""
import os
import stat


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
