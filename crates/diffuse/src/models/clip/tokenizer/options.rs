//! The options of `tokenizer_config.json` that change the ids.

use std::path::Path;

use serde_json::{Map, Value};

use super::files::json_error;
use crate::{Error, Result};

/// The options of `tokenizer_config.json` that change the ids.
pub(crate) struct Options {
    /// `model_max_length`: the length every prompt is truncated and padded to.
    pub max_length: usize,
    /// `split_special_tokens`: special tokens' text in a prompt is tokenized as ordinary text.
    pub split_special_tokens: bool,
}

impl Options {
    /// Reads the options from `tokenizer_config.json` (already parsed) at `path`.
    pub(crate) fn from_config(path: &Path, config: &Map<String, Value>) -> Result<Self> {
        let file = path.display().to_string();
        let max_length = match config.get("model_max_length") {
            Some(value) => value
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .filter(|n| (2..=1 << 20).contains(n))
                .ok_or_else(|| {
                    Error::unsupported(
                        &file,
                        "model_max_length",
                        value,
                        "an integer from 2 to 2^20",
                    )
                })?,
            None => {
                return Err(Error::unsupported(
                    &file,
                    "model_max_length",
                    "missing",
                    "the text encoder's number of positions (77 for CLIP)",
                ))
            }
        };
        for key in ["padding_side", "truncation_side"] {
            match config.get(key) {
                None | Some(Value::Null) => {}
                Some(Value::String(side)) if side == "right" => {}
                Some(other) => return Err(Error::unsupported(&file, key, other, "\"right\"")),
            }
        }
        let split_special_tokens = match config.get("split_special_tokens") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                return Err(json_error(
                    path,
                    format!("`split_special_tokens` must be true or false, found {other}"),
                ))
            }
        };
        Ok(Self {
            max_length,
            split_special_tokens,
        })
    }
}
