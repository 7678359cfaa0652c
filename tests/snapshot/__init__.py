"""Route table and matchers: what a compiled snapshot decides before any I/O."""
