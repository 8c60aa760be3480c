//! Reads a tokenizer folder's files: JSON with errors that name the file, and the BPE vocabulary and
//! merges from either layout.
//!
//! transformers 5 prefers `tokenizer.json` when it exists (`TokenizersBackend.convert_to_native_format`)
//! and only falls back to `vocab.json` + `merges.txt` without it. `CLIPTokenizer` keeps only the
//! vocabulary and the merges of `tokenizer.json`; its normalizer, pre-tokenizer and model options are
//! rebuilt from code, so they are not read here either.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use tokenizers::models::bpe::{Merges, Vocab};

use crate::{Error, Result};

/// The BPE tables and the file they came from.
pub(crate) struct BpeTables {
    /// Token to id.
    pub vocab: Vocab,
    /// Merge rules, highest priority first.
    pub merges: Merges,
    /// The file to name when the tables are inconsistent.
    pub source: PathBuf,
}

/// Reads `path` as text.
pub(crate) fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        cause: source,
    })
}

/// A JSON error naming `path`.
pub(crate) fn json_error(path: &Path, message: impl Into<String>) -> Error {
    Error::Json {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Parses `text`, the contents of `path`, as a JSON object.
pub(crate) fn parse_json_object(path: &Path, text: &str) -> Result<Map<String, Value>> {
    match crate::loaders::json::parse_json(text, path) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(json_error(path, "expected a JSON object at the top level")),
        Err(e) => Err(e),
    }
}

/// The vocabulary and merges of `tokenizer.json` (already parsed) at `path`.
pub(crate) fn tables_from_tokenizer_json(
    path: &Path,
    json: &Map<String, Value>,
) -> Result<BpeTables> {
    let model = match json.get("model") {
        Some(Value::Object(model)) => model,
        _ => return Err(json_error(path, "missing the `model` object")),
    };
    let vocab = match model.get("vocab") {
        Some(Value::Object(entries)) => {
            let mut vocab = Vocab::default();
            for (token, id) in entries {
                vocab.insert(token.clone(), token_id(path, token, id)?);
            }
            vocab
        }
        Some(Value::Array(entries)) => vocab_from_list(path, entries)?,
        _ => {
            return Err(json_error(
                path,
                "`model.vocab` must be an object or a list",
            ))
        }
    };
    let merges = match model.get("merges") {
        Some(Value::Array(entries)) => entries
            .iter()
            .enumerate()
            .map(|(i, entry)| merge_from_json(path, i, entry))
            .collect::<Result<Merges>>()?,
        _ => {
            return Err(Error::unsupported(
                path.display().to_string(),
                "model.merges",
                "missing",
                "a BPE tokenizer.json with its merges",
            ))
        }
    };
    Ok(BpeTables {
        vocab,
        merges,
        source: path.to_path_buf(),
    })
}

/// The vocabulary and merges from the texts of `vocab.json` and `merges.txt` (each with its path).
pub(crate) fn tables_from_vocab_and_merges(
    (vocab_path, vocab_text): (&Path, &str),
    (merges_path, text): (&Path, &str),
) -> Result<BpeTables> {
    let mut vocab = Vocab::default();
    for (token, id) in parse_json_object(vocab_path, vocab_text)? {
        let id = token_id(vocab_path, &token, &id)?;
        vocab.insert(token, id);
    }
    let mut merges = Merges::new();
    // As the tokenizers library reads the file: lines starting with "#version" are skipped and every
    // other line must be exactly two symbols separated by one space.
    for (number, line) in text.lines().enumerate() {
        if line.starts_with("#version") {
            continue;
        }
        match line.split(' ').collect::<Vec<_>>().as_slice() {
            [a, b] => merges.push((a.to_string(), b.to_string())),
            _ => {
                return Err(Error::invalid(
                    merges_path.display().to_string(),
                    format!(
                        "line {}: expected two symbols separated by one space, found {line:?}",
                        number + 1
                    ),
                ))
            }
        }
    }
    Ok(BpeTables {
        vocab,
        merges,
        source: merges_path.to_path_buf(),
    })
}

/// A vocabulary given as a list: the position is the id; an entry is a token or `[token, score]`.
fn vocab_from_list(path: &Path, entries: &[Value]) -> Result<Vocab> {
    let mut vocab = Vocab::default();
    for (id, entry) in entries.iter().enumerate() {
        let token = match entry {
            Value::String(token) => token,
            Value::Array(pair) => match pair.first() {
                Some(Value::String(token)) => token,
                _ => {
                    return Err(json_error(
                        path,
                        format!("`model.vocab[{id}]` has no token"),
                    ))
                }
            },
            _ => {
                return Err(json_error(
                    path,
                    format!("`model.vocab[{id}]` is not a token"),
                ))
            }
        };
        let id = u32::try_from(id)
            .map_err(|_| json_error(path, "`model.vocab` has more than 2^32 entries"))?;
        vocab.insert(token.clone(), id);
    }
    Ok(vocab)
}

/// A vocabulary id: a non-negative integer below 2^32.
fn token_id(path: &Path, token: &str, id: &Value) -> Result<u32> {
    id.as_u64()
        .and_then(|id| u32::try_from(id).ok())
        .ok_or_else(|| {
            json_error(
                path,
                format!("the id of token {token:?} is {id}, not an integer id"),
            )
        })
}

/// One merge of `tokenizer.json`: "a b" or ["a", "b"].
fn merge_from_json(path: &Path, index: usize, entry: &Value) -> Result<(String, String)> {
    let pair = match entry {
        Value::String(merge) => match merge.split(' ').collect::<Vec<_>>().as_slice() {
            [a, b] => Some((a.to_string(), b.to_string())),
            _ => None,
        },
        Value::Array(items) => match items.as_slice() {
            [Value::String(a), Value::String(b)] => Some((a.clone(), b.clone())),
            _ => None,
        },
        _ => None,
    };
    pair.ok_or_else(|| {
        json_error(
            path,
            format!("`model.merges[{index}]` is {entry}, not a pair of symbols"),
        )
    })
}
