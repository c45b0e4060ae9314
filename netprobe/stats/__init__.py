"""Statistics over measurement arrays (numpy): quantiles and interval summaries."""
from netprobe.stats.summary import quantiles, summarize

__all__ = ["quantiles", "summarize"]
