"""The ``blovault`` command: thin over the API (officers) and the service (admins, auditors)."""
