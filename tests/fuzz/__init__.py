"""Fuzzers of every parser of outside input: bytes, and structure (Hypothesis sequences).

One count rule for all: each test file names its CI count (what `make test` runs);
NETPROBE_FUZZ=full (`make fuzz`) runs FULL examples per target instead, and
NETPROBE_FUZZ_EXAMPLES=N runs N whatever else is set.
"""
import os

FULL = 200_000


def examples(ci):
    """Examples per target: NETPROBE_FUZZ_EXAMPLES, else FULL under NETPROBE_FUZZ=full, else `ci`."""
    if os.environ.get("NETPROBE_FUZZ_EXAMPLES"):
        return int(os.environ["NETPROBE_FUZZ_EXAMPLES"])
    return FULL if os.environ.get("NETPROBE_FUZZ") == "full" else ci
