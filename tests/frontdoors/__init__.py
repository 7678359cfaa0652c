"""The in-process front door: mesh clients, transports and wrap()."""
