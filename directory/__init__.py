"""Where accounts and counters live, and the operator's ``congvu`` command line."""
