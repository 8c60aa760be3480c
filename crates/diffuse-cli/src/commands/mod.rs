//! One module per subcommand: parse arguments, call the library, print.

pub mod info;
pub mod serve;
