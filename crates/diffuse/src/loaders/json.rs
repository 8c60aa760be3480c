//! Reading JSON configuration files with errors that name the file, the field and the line.

use std::path::Path;

use serde::de::DeserializeOwned;

use crate::{Error, Result};

/// Reads and parses `path` as `T`; unknown keys are ignored by the config structs themselves.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        cause: source,
    })?;
    parse_json(&text, path)
}

/// Parses `text`, attributing errors to `path`.
pub fn parse_json<T: DeserializeOwned>(text: &str, path: &Path) -> Result<T> {
    let mut de = serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        Error::Json {
            path: path.to_path_buf(),
            message: if key == "." {
                inner.to_string()
            } else {
                format!("key `{key}`: {inner}")
            },
        }
    })
}
