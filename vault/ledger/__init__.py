"""The access ledger: canonical entries, RFC 6962 Merkle tree, signed checkpoints, proofs."""
