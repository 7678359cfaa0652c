"""The sidecar process: listeners, the upstream client, admin, reload and drain."""
