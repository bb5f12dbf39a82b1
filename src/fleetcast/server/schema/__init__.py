"""Alembic's script directory for the server's database: ``env.py`` and the revisions in
``versions/`` (server/migrations.py runs them at start; no alembic.ini is needed)."""
