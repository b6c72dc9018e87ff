//! Replicated state machine on raft-rs `RawNode` with its own persisted raft log (built in a later change).
