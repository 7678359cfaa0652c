"""The compiled, immutable form of a config: built once, swapped whole on reload."""
