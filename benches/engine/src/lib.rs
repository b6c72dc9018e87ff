//! Benchmarks of kv-engine (see benches/).
