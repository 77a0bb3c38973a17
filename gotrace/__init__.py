"""gotrace: eBPF tracing for Go binaries (latency histograms, call arguments)."""

__version__ = "0.1.0"
