"""meshlib's test suite."""
