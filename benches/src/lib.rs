//! criterion benchmarks for the ferry crates; see `benches/` and `docs/benchmarks.md`.
