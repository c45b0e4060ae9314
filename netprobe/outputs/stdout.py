"""stdout sink: one text or JSON line per record, flushed per batch.

A closed reader (`netprobe run | head`) gives EPIPE: the sink then points the
stream's descriptor at /dev/null, so neither later flushes nor interpreter
exit print a BrokenPipeError, and reports every further record as failed with
one stable message (the SinkRunner logs it once and counts the rest).
"""
import os
import sys
from dataclasses import dataclass

from netprobe.config.schema import CHOICE, setting
from netprobe.outputs import SinkConfig
from netprobe.outputs.base import Sink


@dataclass(frozen=True)
class StdoutConfig(SinkConfig):
    """[output.stdout]: records as lines on standard output."""
    format: str = setting(CHOICE, "text", "line format: key=value text or one JSON object per line",
                          choices=("text", "json"))


class StdoutSink(Sink):
    """Writes each record as one line to `stream` (default: sys.stdout at write time)."""

    def __init__(self, cfg, name="stdout", stream=None):
        self.cfg = cfg
        self.name = name
        self._stream = stream
        self._broken = None     # the message reported for every record once the reader is gone

    @property
    def stream(self):
        return self._stream if self._stream is not None else sys.stdout

    def write(self, record):
        if self._broken is not None:
            raise OSError(self._broken)
        line = record.to_json() if self.cfg.format == "json" else record.to_text()
        self._call(self.stream.write, line + "\n")

    def flush(self):
        if self._broken is None:
            self._call(self.stream.flush)

    def _call(self, fn, *args):
        try:
            fn(*args)
        except BrokenPipeError:
            self._silence()
            self._broken = f"{self.name}: the reader closed the pipe (EPIPE); records are dropped"
            raise OSError(self._broken) from None

    def _silence(self):
        """Point the broken stream's descriptor at /dev/null so buffered bytes drain quietly."""
        try:
            fd = self.stream.fileno()
        except (AttributeError, OSError, ValueError):
            return
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, fd)
        finally:
            os.close(devnull)
