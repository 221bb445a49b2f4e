"""bench/overhead: the sidecar's added latency and throughput over calling a zero-delay backend directly."""
