//! The server's integration tests in one binary (one module per API or concern), so CI links it once.

mod common;

mod a1111;
mod audio;
mod fuzz;
mod jobs;
mod loras;
mod openai;
mod security;
mod shutdown;
