"""Load balancers and the live state that survives reloads."""
