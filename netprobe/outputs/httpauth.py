"""What the HTTP sinks share about credentials: settings that go in pairs, and the password file.

A password never sits in the TOML file (the file is copied into run headers): the
config names a file whose first line is the password, read when the sink starts.
"""


def check_pair(cfg, where, first, second):
    """Two settings set together or not at all (a user and its password file, a cert and its key)."""
    a, b = getattr(cfg, first), getattr(cfg, second)
    if bool(a) != bool(b):
        raise where.error(second if a else first, f"{first} and {second} go together (set both or neither)")


def read_password(path, sink):
    """The first line of `path`; OSError naming the sink (never the password)."""
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.readline().rstrip("\r\n")
    except OSError as exc:
        raise OSError(f"{sink}: cannot read basic_auth_password_file: {exc.strerror or exc}") from None
