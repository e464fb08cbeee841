"""client: the Python client SDK (trio) and the terminal chat."""
