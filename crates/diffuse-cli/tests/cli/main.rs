//! The `diffuse` command's tests in one binary (one module per subcommand or concern), so CI links it once.

mod audio;
mod generate;
mod info;
mod scale_out;
mod serve;
mod single_file;
mod train;
mod wild;
