"""netprobe: one daemon for network path quality and SLA breaches."""
__version__ = "0.1.0"
