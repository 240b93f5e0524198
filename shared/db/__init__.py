"""The database: engine and sessions, every ``ozzy_*`` table, every named SQL statement, migrations."""
