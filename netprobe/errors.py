"""Exception tree and exit codes.

A user never sees a traceback for bad input: the CLI turns every
NetprobeError into one line on stderr and the exit code below.
"""

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2       # bad command line or config
EXIT_SIGNAL = 3      # a second SIGTERM/SIGINT during shutdown


class NetprobeError(Exception):
    """Base of every error netprobe reports as one line."""
    exit_code = EXIT_RUNTIME


class ConfigError(NetprobeError):
    """Invalid configuration: names the file, the TOML path, the value, what is valid."""
    exit_code = EXIT_USAGE

    def __init__(self, message, *, file=None, path=None):
        self.file = file
        self.path = path
        where = ": ".join(str(p) for p in (file, path) if p)
        super().__init__(f"{where}: {message}" if where else message)


class UsageError(NetprobeError):
    """Bad command line."""
    exit_code = EXIT_USAGE


class ProbeError(NetprobeError):
    """A probe could not run (missing privilege, facility absent, ...)."""


class PeerError(ProbeError):
    """The remote peer refused, vanished or spoke nonsense; `unreachable` when nothing answered."""

    def __init__(self, message, unreachable=False):
        self.unreachable = unreachable
        super().__init__(message)


class ExtensionMissing(NetprobeError):
    """A compiled extension is not built; there is no pure-Python fallback."""

    def __init__(self, name):
        super().__init__(
            f"compiled extension netprobe.{name} is missing: build it with "
            f"'make build' (or 'pip install .' from the source tree)")


def load_extension(name):
    """Import netprobe.<name> or raise ExtensionMissing (never fall back)."""
    import importlib
    try:
        return importlib.import_module(f"netprobe.{name}")
    except ImportError as exc:
        raise ExtensionMissing(name) from exc
