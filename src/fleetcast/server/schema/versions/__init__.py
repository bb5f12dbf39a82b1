"""The schema's Alembic revisions, oldest first (``v0001_...``); Alembic reads them as files."""
