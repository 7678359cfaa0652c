"""One file per route policy, each run through the whole engine with respx under it."""
