"""Config sources and reload: reading a config file safely, watching it, and counting what reloads did."""
