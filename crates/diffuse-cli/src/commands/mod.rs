//! One module per subcommand: parse arguments, call the library, print.

pub mod bench;
pub mod info;
