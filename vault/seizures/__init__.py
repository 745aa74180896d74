"""Seizure records inside packages, and statistics over the records a caller may read."""
