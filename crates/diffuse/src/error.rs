//! The library's error type: every failure names the file, tensor, field or value at fault.

use std::path::PathBuf;

/// Everything that can go wrong in diffuse, with enough context to act on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or folder could not be read.
    #[error("{path}: {cause}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What the operating system said.
        cause: std::io::Error,
    },
    /// A JSON file is malformed or a field has the wrong type.
    #[error("{path}: {message}")]
    Json {
        /// The JSON file.
        path: PathBuf,
        /// What serde said, naming the field and line.
        message: String,
    },
    /// A configuration value that changes the math and is not supported.
    #[error("{file}: unsupported value for `{key}`: {value} ({expected})")]
    Unsupported {
        /// The configuration file (or source) holding the value.
        file: String,
        /// The key.
        key: String,
        /// The value found.
        value: String,
        /// What is supported.
        expected: String,
    },
    /// A weights file is missing a tensor, or a tensor has the wrong shape or is unreadable.
    #[error("{file}: tensor `{tensor}`: {message}")]
    Weights {
        /// The weights file or folder.
        file: String,
        /// The tensor's name.
        tensor: String,
        /// What was expected and what was found.
        message: String,
    },
    /// A user-supplied argument is out of range or malformed.
    #[error("invalid {name}: {message}")]
    InvalidArgument {
        /// The argument, flag or field.
        name: String,
        /// What was expected and what was found.
        message: String,
    },
    /// A pickled checkpoint (`.ckpt`, `.pt`, …): refused, never unpickled.
    #[error(
        "{path}: a pickled PyTorch checkpoint; diffuse never loads pickles, since loading one can run \
         arbitrary code. Convert it to safetensors first, e.g. with torch and safetensors installed: python -c \
         \"import sys, torch; from safetensors.torch import save_file; sd = torch.load(sys.argv[1], \
         weights_only=True); save_file({{k: v.clone().contiguous() for k, v in sd.get('state_dict', sd).items()}}, \
         sys.argv[1].rsplit('.', 1)[0] + '.safetensors')\" {path}"
    )]
    Pickle {
        /// The checkpoint.
        path: PathBuf,
    },
    /// A generation diverged: its latents or its decoded image hold NaN or infinity.
    #[error("the generation diverged: NaN or infinity in {stage}; likely cause: {likely_cause}")]
    NonFinite {
        /// Where it was found, e.g. "the latents after step 3 of 20".
        stage: String,
        /// The request value or setting that most likely caused it, and what to try instead.
        likely_cause: String,
    },
    /// The operation was cancelled by a callback.
    #[error("cancelled")]
    Cancelled,
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl Error {
    /// An [`Error::InvalidArgument`] for `name`.
    pub fn invalid(name: impl Into<String>, message: impl Into<String>) -> Self {
        Error::InvalidArgument {
            name: name.into(),
            message: message.into(),
        }
    }

    /// An [`Error::Unsupported`] configuration value.
    pub fn unsupported(
        file: impl Into<String>,
        key: impl Into<String>,
        value: impl std::fmt::Display,
        expected: impl Into<String>,
    ) -> Self {
        Error::Unsupported {
            file: file.into(),
            key: key.into(),
            value: value.to_string(),
            expected: expected.into(),
        }
    }
}

/// The library's result type.
pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    /// The library's messages name its own settings; the binaries translate them to flags. This reads every
    /// source file of the library and refuses a string literal that names a command-line flag (`--word`);
    /// comments and cargo's `--features` are allowed.
    #[test]
    fn no_message_names_a_command_line_flag() {
        fn files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    files(&path, out);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    out.push(path);
                }
            }
        }
        let mut all = Vec::new();
        files(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut all,
        );
        let literal = regex::Regex::new(r#"(?s)"(?:[^"\\]|\\.)*""#).unwrap();
        let flag = regex::Regex::new(r"(^|[\s`(])--[a-z]").unwrap();
        let mut found = Vec::new();
        for path in all {
            let text = std::fs::read_to_string(&path).unwrap();
            // The code without its comments (doc comments may quote flags of other programs).
            let code: Vec<&str> = text
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .collect();
            let code = code.join("\n");
            for m in literal.find_iter(&code) {
                let text = m.as_str();
                if flag.is_match(text) && !text.contains("--features") {
                    found.push(format!("{}: {text}", path.display()));
                }
            }
        }
        assert!(found.is_empty(), "{found:#?}");
    }
}
