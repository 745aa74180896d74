"""A tlog witness (c2sp.org/tlog-witness): cosignatures, the witness's state and its checks.

Run by a counterpart country on its own machine, with its own key and state; nothing here
imports the vault's service, database or HTTP layers.
"""
