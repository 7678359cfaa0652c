"""The engine: outbound entry, stacks, in-flight accounting and its import boundaries."""
