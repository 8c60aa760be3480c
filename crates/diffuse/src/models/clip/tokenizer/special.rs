//! The special and added tokens a tokenizer folder declares, resolved as transformers 5 resolves them.
//!
//! The steps follow `PreTrainedTokenizerBase._from_pretrained` and `TokenizersBackend.__init__`:
//! 1. The named special tokens (`bos_token` … `mask_token`) come from `tokenizer_config.json`, as plain
//!    strings or `{"__type": "AddedToken", …}` objects. An object without `__type` stays a dict, which
//!    the tokenizer refuses unless step 2 replaces it.
//! 2. If the config lists `added_tokens_decoder`, those tokens are the added tokens and
//!    `special_tokens_map.json` is ignored. Otherwise `special_tokens_map.json` overrides the config's
//!    named tokens (its objects become special tokens) and `tokenizer.json`'s `added_tokens` are the
//!    added tokens.
//! 3. A named token whose text is one of the added tokens takes that token's flags.
//! 4. `CLIPTokenizer`'s defaults fill in absent bos/eos/unk/pad tokens.
//! 5. The tokens to add are the added tokens by id, then each named token whose text is not among them
//!    (unless an equal value is already queued). Plain strings become special, non-normalized tokens.
//!    The backend adds them in that order; a later token with the same text replaces an earlier one's
//!    flags, which decides, e.g., whether `<|endoftext|>` is matched before or after normalization.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use tokenizers::AddedToken;

use super::files::json_error;
use crate::{Error, Result};

/// transformers' named special-token attributes, in its order.
const NAMED: [&str; 7] = [
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
];

/// Keys that list extra special tokens; only empty lists are supported.
const EXTRA_LISTS: [&str; 2] = ["additional_special_tokens", "extra_special_tokens"];

/// A token value as transformers holds it: a plain string or an `AddedToken` with its flags.
/// Equality follows Python's: a string never equals an `AddedToken`.
#[derive(Clone, Debug, PartialEq)]
enum TokenValue {
    Plain(String),
    Token(AddedToken),
}

impl TokenValue {
    fn content(&self) -> &str {
        match self {
            TokenValue::Plain(s) => s,
            TokenValue::Token(t) => &t.content,
        }
    }
}

/// A named token's entry: absent, explicitly null (in the named file), a value, or a plain object in
/// `tokenizer_config.json` (no `__type`), which transformers keeps as a dict and refuses unless
/// `special_tokens_map.json` replaces it.
#[derive(Clone, Debug)]
enum Slot {
    Absent,
    Null(PathBuf),
    Value(TokenValue),
    PlainObject(PathBuf, Value),
}

/// The files that declare special tokens, already parsed.
pub(super) struct Sources<'a> {
    /// `tokenizer_config.json` and its path.
    pub config: (&'a Path, &'a Map<String, Value>),
    /// `special_tokens_map.json` and its path, when present.
    pub special_tokens_map: Option<(&'a Path, &'a Map<String, Value>)>,
    /// `tokenizer.json` and its path, when present.
    pub tokenizer_json: Option<(&'a Path, &'a Map<String, Value>)>,
}

/// The resolved special tokens.
pub(super) struct Specials {
    /// Text of the beginning-of-sequence token.
    pub bos: String,
    /// Text of the end-of-sequence token.
    pub eos: String,
    /// Text of the unknown token.
    pub unk: String,
    /// Text of the padding token.
    pub pad: String,
    /// The tokens to add to the backend, in order.
    pub added: Vec<AddedToken>,
}

/// Resolves the special and added tokens of a folder.
pub(super) fn resolve(sources: &Sources<'_>) -> Result<Specials> {
    let (config_path, config) = sources.config;
    check_unsupported_keys(config_path, config)?;
    let mut slots: Vec<Slot> = NAMED
        .iter()
        .map(|key| slot(config_path, key, config.get(*key), false))
        .collect::<Result<_>>()?;

    let decoder = match config.get("added_tokens_decoder") {
        Some(entries) => added_tokens_decoder(config_path, entries)?,
        None => {
            if let Some((path, map)) = sources.special_tokens_map {
                check_unsupported_keys(path, map)?;
                for (slot_entry, key) in slots.iter_mut().zip(NAMED) {
                    if let Some(value) = map.get(key) {
                        *slot_entry = slot(path, key, Some(value), true)?;
                    }
                }
            }
            match sources.tokenizer_json {
                Some((path, json)) => tokenizer_json_added_tokens(path, json)?,
                None => BTreeMap::new(),
            }
        }
    };

    // Named tokens take the flags of the added token with the same text.
    let by_content: BTreeMap<&str, &AddedToken> =
        decoder.values().map(|t| (t.content.as_str(), t)).collect();
    for entry in slots.iter_mut() {
        if let Slot::Value(value) = entry {
            if let Some(token) = by_content.get(value.content()) {
                *value = TokenValue::Token((*token).clone());
            }
        }
    }

    let named: Vec<Option<TokenValue>> = slots
        .into_iter()
        .zip(NAMED)
        .map(|(entry, key)| named_value(key, entry))
        .collect::<Result<_>>()?;

    let added = tokens_to_add(decoder, &named);
    let content = |i: usize| -> Result<String> {
        named[i]
            .as_ref()
            .map(|v| v.content().to_string())
            .ok_or_else(|| missing(config_path, NAMED[i]))
    };
    Ok(Specials {
        bos: content(0)?,
        eos: content(1)?,
        unk: content(2)?,
        pad: content(4)?,
        added,
    })
}

/// The tokens `TokenizersBackend.__init__` adds, in order: the added tokens by id, then each named
/// token whose text is not among them and that is not already queued; plain strings become special,
/// non-normalized tokens, and an added token whose text is a named token's becomes special.
fn tokens_to_add(
    decoder: BTreeMap<u64, AddedToken>,
    named: &[Option<TokenValue>],
) -> Vec<AddedToken> {
    let mut queue: Vec<TokenValue> = decoder.into_values().map(TokenValue::Token).collect();
    let queued: Vec<String> = queue.iter().map(|v| v.content().to_string()).collect();
    for value in named.iter().flatten() {
        if !queued.iter().any(|c| c == value.content()) && !queue.contains(value) {
            queue.push(value.clone());
        }
    }
    let named_contents: Vec<&str> = named.iter().flatten().map(TokenValue::content).collect();
    queue
        .into_iter()
        .map(|value| match value {
            TokenValue::Plain(content) => AddedToken::from(content, true),
            TokenValue::Token(token) => {
                let special = token.special || named_contents.contains(&token.content.as_str());
                token.special(special)
            }
        })
        .collect()
}

/// `tokenizer_config.json`'s `added_tokens_decoder`: id to token.
fn added_tokens_decoder(path: &Path, entries: &Value) -> Result<BTreeMap<u64, AddedToken>> {
    let entries = entries.as_object().ok_or_else(|| {
        json_error(
            path,
            format!("`added_tokens_decoder` must be an object, found {entries}"),
        )
    })?;
    let mut decoder = BTreeMap::new();
    for (id, entry) in entries {
        let id = id.parse::<u64>().map_err(|_| {
            json_error(
                path,
                format!("`added_tokens_decoder` key {id:?} is not an id"),
            )
        })?;
        let field = format!("added_tokens_decoder.{id}");
        decoder.insert(id, added_token(path, &field, entry, None)?);
    }
    Ok(decoder)
}

/// The value of a named token after `CLIPTokenizer`'s defaults; bos/eos/unk/pad may not be null.
fn named_value(key: &str, entry: Slot) -> Result<Option<TokenValue>> {
    let default = match key {
        "bos_token" => Some("<|startoftext|>"),
        "eos_token" | "unk_token" | "pad_token" => Some("<|endoftext|>"),
        _ => None,
    };
    match entry {
        Slot::Value(value) => Ok(Some(value)),
        Slot::Absent => Ok(default.map(|d| TokenValue::Plain(d.to_string()))),
        Slot::Null(path) if default.is_some() => Err(missing(&path, key)),
        Slot::Null(_) => Ok(None),
        Slot::PlainObject(path, object) => Err(Error::unsupported(
            path.display().to_string(),
            key,
            object,
            "a string or {\"__type\": \"AddedToken\", ...}: transformers accepts an object without \
             `__type` here only when special_tokens_map.json (read when there is no added_tokens_decoder) \
             names the token",
        )),
    }
}

/// The error for a required special token that is null.
fn missing(path: &Path, key: &str) -> Error {
    Error::unsupported(
        path.display().to_string(),
        key,
        "null",
        "a token: diffusers needs bos, eos, unk and pad tokens (it pads every prompt to max_length)",
    )
}

/// Parses a named token's entry. `from_map` marks `special_tokens_map.json`, whose objects are special.
fn slot(path: &Path, key: &str, value: Option<&Value>, from_map: bool) -> Result<Slot> {
    match value {
        None => Ok(Slot::Absent),
        Some(Value::Null) => Ok(Slot::Null(path.to_path_buf())),
        Some(Value::String(s)) => Ok(Slot::Value(TokenValue::Plain(s.clone()))),
        Some(object @ Value::Object(map)) => {
            if !from_map && map.get("__type").and_then(Value::as_str) != Some("AddedToken") {
                return Ok(Slot::PlainObject(path.to_path_buf(), object.clone()));
            }
            let special = if from_map { Some(true) } else { None };
            Ok(Slot::Value(TokenValue::Token(added_token(
                path, key, object, special,
            )?)))
        }
        Some(other) => Err(json_error(
            path,
            format!("`{key}` must be a string or an AddedToken, found {other}"),
        )),
    }
}

/// Builds an `AddedToken` from its JSON object, as `AddedToken(**fields)` does: the flags default to
/// false, except `normalized`, which defaults to `not special`. `special`, when given, overrides the
/// object's own flag.
fn added_token(
    path: &Path,
    field: &str,
    value: &Value,
    special: Option<bool>,
) -> Result<AddedToken> {
    let map = value.as_object().ok_or_else(|| {
        json_error(
            path,
            format!("`{field}` must be an AddedToken object, found {value}"),
        )
    })?;
    let flag = |name: &str| -> Result<Option<bool>> {
        match map.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(json_error(
                path,
                format!("`{field}.{name}` must be true or false, found {other}"),
            )),
        }
    };
    let content = match map.get("content") {
        Some(Value::String(s)) => s.clone(),
        _ => {
            return Err(json_error(
                path,
                format!("`{field}.content` must be a string"),
            ))
        }
    };
    let special = match special {
        Some(s) => s,
        None => flag("special")?.unwrap_or(false),
    };
    Ok(AddedToken::from(content, special)
        .single_word(flag("single_word")?.unwrap_or(false))
        .lstrip(flag("lstrip")?.unwrap_or(false))
        .rstrip(flag("rstrip")?.unwrap_or(false))
        .normalized(flag("normalized")?.unwrap_or(!special)))
}

/// `tokenizer.json`'s `added_tokens`: id and token.
fn tokenizer_json_added_tokens(
    path: &Path,
    json: &Map<String, Value>,
) -> Result<BTreeMap<u64, AddedToken>> {
    let entries = match json.get("added_tokens") {
        None | Some(Value::Null) => return Ok(BTreeMap::new()),
        Some(Value::Array(entries)) => entries,
        Some(other) => {
            return Err(json_error(
                path,
                format!("`added_tokens` must be a list, found {other}"),
            ))
        }
    };
    entries
        .iter()
        .enumerate()
        .map(|(i, entry)| {
            let field = format!("added_tokens[{i}]");
            let id = entry
                .get("id")
                .and_then(Value::as_u64)
                .ok_or_else(|| json_error(path, format!("`{field}.id` must be an id")))?;
            Ok((id, added_token(path, &field, entry, None)?))
        })
        .collect()
}

/// Rejects declarations whose transformers semantics are not reproduced: non-empty lists of extra
/// special tokens, other `*_token` keys holding a token, and left padding or truncation.
fn check_unsupported_keys(path: &Path, map: &Map<String, Value>) -> Result<()> {
    for (key, value) in map {
        let file = || path.display().to_string();
        let is_token = matches!(value, Value::String(_))
            || value.get("__type").and_then(Value::as_str) == Some("AddedToken");
        let non_empty = match value {
            Value::Array(items) => !items.is_empty(),
            Value::Object(items) => !items.is_empty(),
            Value::Null => false,
            _ => true,
        };
        if EXTRA_LISTS.contains(&key.as_str()) && non_empty {
            return Err(Error::unsupported(
                file(),
                key,
                value,
                "no extra special tokens",
            ));
        }
        if key.ends_with("_token") && !NAMED.contains(&key.as_str()) && is_token {
            return Err(Error::unsupported(
                file(),
                key,
                value,
                format!("only the named special tokens {}", NAMED.join(", ")),
            ));
        }
    }
    Ok(())
}
