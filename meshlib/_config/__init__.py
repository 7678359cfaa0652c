"""What the user writes: the config models, duration parsing and file loading."""
