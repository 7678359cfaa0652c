"""One module per config key: a frozen, sans-I/O Policy and the Filter that carries it out."""
