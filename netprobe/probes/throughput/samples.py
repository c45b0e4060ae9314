"""Layout of a throughput sample: one row of int64 per TCP_INFO reading.

The Cython loops (netprobe._pacer: TcpPacedSender, TcpDrain) write rows in
exactly this column order into a caller-owned int64 array of shape
(rows, NCOLS); the analysis reads them by name. The extension exports the
same tuple as `SAMPLE_COLUMNS`, and the runner refuses to start if they differ.
"""
SAMPLE_COLUMNS = (
    "t_ns",               # CLOCK_MONOTONIC time of the reading, ns
    "epoch",              # connection number of this direction: +1 on every reconnect
    "app_bytes",          # payload bytes this end wrote (sender) or read (receiver) on this connection
    "bytes_acked",        # tcpi_bytes_acked
    "bytes_received",     # tcpi_bytes_received
    "delivery_rate",      # tcpi_delivery_rate, bytes/s
    "rtt_us",             # tcpi_rtt, smoothed RTT
    "rttvar_us",          # tcpi_rttvar
    "min_rtt_us",         # tcpi_min_rtt
    "snd_cwnd",           # tcpi_snd_cwnd, segments
    "total_retrans",      # tcpi_total_retrans, segments
    "bytes_retrans",      # tcpi_bytes_retrans
    "dsack_dups",         # tcpi_dsack_dups
    "busy_time_us",       # tcpi_busy_time
    "rwnd_limited_us",    # tcpi_rwnd_limited
    "sndbuf_limited_us",  # tcpi_sndbuf_limited
    "pacing_rate",        # tcpi_pacing_rate, bytes/s
    "snd_mss",            # tcpi_snd_mss, bytes
)
NCOLS = len(SAMPLE_COLUMNS)
COL = {name: i for i, name in enumerate(SAMPLE_COLUMNS)}
