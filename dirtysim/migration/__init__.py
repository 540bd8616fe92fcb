"""The migration thread: precopy RAM migration as in migration/migration.c and migration/ram.c."""
