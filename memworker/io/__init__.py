"""memworker's one I/O layer: operations written once as IO-free plans, run by a
sync and an async driver over each client library."""
