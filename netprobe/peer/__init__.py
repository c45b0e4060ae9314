"""The peer side of netprobe: the control protocol (sans-IO), the server and the client."""
