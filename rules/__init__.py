"""The regulations as pure code and data: no network or disk I/O, clock injected."""
