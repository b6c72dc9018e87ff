//! The FlashKV node: engine + raft + network wired together (built in a later change).
