"""The state directory ($BINFMTD_STATE_DIR, default /var/lib/binfmtd), owned by this package alone:
- files: every file's name, the one safe reader and atomic writer, the small JSON records
  (native targets, verify results, boot id, daemon heartbeat), the root-only check of the
  directory and the lock that serializes runs;
- ledger: the state file proper, what binfmtd owns and the write-ahead intents, and `reconcile`.
Import from those modules; this one only says who owns what."""
