"""pytest-benchmark suites mirroring the Go service's published figures (see PUBLISHED.md)."""
