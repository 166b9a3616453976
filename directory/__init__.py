"""Where accounts, audit records and counters live: SQLite (embedded), LDAP (ldap3), Redis (shared counters)."""
