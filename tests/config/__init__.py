"""The config contract: loading, validation errors and durations."""
