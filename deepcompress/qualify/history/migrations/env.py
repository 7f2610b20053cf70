"""Alembic's entry point for the history schema. ``History`` runs the migrations itself, on a
connection it has opened (and locked) already, so this file only hands that connection over:
there is no alembic.ini and no URL here."""
from alembic import context

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=None)
with context.begin_transaction():
    context.run_migrations()
