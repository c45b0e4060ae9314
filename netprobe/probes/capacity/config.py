"""Settings of the `capacity` probe: bottleneck capacity of the path from a peer to this host."""
from dataclasses import dataclass
from typing import ClassVar

from netprobe.config.schema import CHOICE, DURATION, FLOAT, INT, RATE, SIZE, STR, setting
from netprobe.probes.base import ProbeConfig

MODES = ("quick", "full")


@dataclass(frozen=True)
class Config(ProbeConfig):
    """The [[probe]] table with kind = "capacity". The peer sends packet pairs and trains, this
    host timestamps them in the kernel and estimates the capacity of the path peer -> here."""
    periodic: ClassVar[bool] = False      # one RESULT per estimate, `every` apart, not per interval
    peer: str = setting(STR, "", "a [peer.NAME] table or HOST[:PORT] running `netprobe serve`", required=True)
    key: str = setting(STR, "", "shared key if the peer asks for one (default: the [peer.NAME] key)")
    mode: str = setting(CHOICE, "quick", "quick: stop once the estimate is stable; full: pathrate's "
                        "complete Phase I (40 sizes x 25 pairs) and 100 Phase II trains", choices=MODES)
    every: float = setting(DURATION, 0.0, "re-estimate this often (s); 0: estimate once and finish "
                           "(the one-shot `netprobe probe capacity`); a daemon probe sets it, e.g. 10m",
                           min=0.0, max=7 * 86400)
    max_load: float = setting(FLOAT, 1.0, "with `every`: the average probe load stays below this share of "
                              "the estimate (percent); the period stretches if needed", min=0.001, max=100.0)
    min_capacity: float = setting(RATE, None, "BREACH metric=capacity when the estimate falls below this "
                                  "(bit/s; default: none)", min=0.0, max=1e12)
    max_size: int = setting(SIZE, 0, "largest UDP payload in bytes; 0: the path MTU minus IP and UDP headers",
                            min=0, max=9000)
    min_size: int = setting(SIZE, 572, "smallest Phase I pair payload in bytes (pathrate: 572)", min=64, max=9000)
    train_length: int = setting(INT, 32, "packets measured per Phase II train (a primer leads each train)",
                                min=4, max=1000)
    overhead: int = setting(INT, 14, "bytes per packet below IP that the bottleneck counts: 14 for "
                            "Ethernet headers (what tbf counts), 0 for IP rates", min=0, max=100)
    max_bytes: int = setting(SIZE, 10_000_000, "traffic budget of one estimate on the measured path (bytes on "
                             "the wire, headers and overhead included: the trains and the peer's "
                             "control replies)",
                             min=100_000, max=10**10)
    max_time: float = setting(DURATION, 30.0, "time budget of one estimate (s)", min=1.0, max=3600.0)
    record: str = setting(STR, "", "write each estimate's raw timestamps to this .npz file (re-analyse "
                          "with `python -m netprobe.probes.capacity FILE`); empty: none")
    connect_timeout: float = setting(DURATION, 5.0, "TCP connect and handshake timeout (s)", min=0.1, max=120)

    def check(self, where):
        super().check(where)
        if self.max_size and self.max_size < self.min_size:
            raise where.error("max_size", f"must be at least min_size ({self.min_size})")
