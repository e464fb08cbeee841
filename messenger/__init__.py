"""messenger: the command line."""
