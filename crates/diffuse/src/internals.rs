//! What the sibling crates, benchmarks and kernel tests reach into, outside the API an embedder uses
//! (`pipelines`, `loaders`, `schedulers`, `models`, `rng`, `metadata`): the CPU kernels. No stability promise.

#[path = "kernels/mod.rs"]
pub mod kernels;
