//! Reading JSON configuration files with errors that name the file, the field and the line.
//!
//! Every config file is read in Python's JSON dialect (`loaders::python_json`), since diffusers and
//! transformers write them with Python's `json`: `NaN`, `Infinity` and `-Infinity` are numbers.

use std::path::Path;

use serde::de::DeserializeOwned;

use super::python_json;
use crate::{Error, Result};

/// Reads and parses `path` as `T`; unknown keys are ignored by the config structs themselves.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        cause: source,
    })?;
    parse_json(&text, path)
}

/// Parses `text` in Python's JSON dialect, attributing errors to `path`.
pub fn parse_json<T: DeserializeOwned>(text: &str, path: &Path) -> Result<T> {
    let value = python_json::parse(text).map_err(|e| Error::Json {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    serde_path_to_error::deserialize(&value).map_err(|e| {
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
