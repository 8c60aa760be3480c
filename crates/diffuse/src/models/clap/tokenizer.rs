//! The RoBERTa byte-level BPE tokenizer of CLAP (transformers' `RobertaTokenizer`), id for id.
//!
//! As transformers 5 does, the pipeline is rebuilt from the vocabulary and merges of either layout
//! (`tokenizer.json`, or `vocab.json` + `merges.txt`): no normalizer, a byte-level pre-tokenizer without prefix
//! space, BPE without suffixes, `<s> … </s>` around the text, the special tokens of `tokenizer_config.json`.
//! Prompts are truncated at `model_max_length`, as AudioLDM's pipeline calls the tokenizer.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::roberta::RobertaProcessing;
use tokenizers::utils::truncation::{TruncationDirection, TruncationParams, TruncationStrategy};
use tokenizers::{AddedToken, Tokenizer};

use crate::models::clip::tokenizer::files::{self, json_error, BpeTables};
use crate::models::clip::tokenizer::options::Options;
use crate::{Error, Result};

/// RoBERTa's special tokens: `tokenizer_config.json` key and default text.
const SPECIALS: [(&str, &str); 7] = [
    ("bos_token", "<s>"),
    ("pad_token", "<pad>"),
    ("eos_token", "</s>"),
    ("unk_token", "<unk>"),
    ("sep_token", "</s>"),
    ("cls_token", "<s>"),
    ("mask_token", "<mask>"),
];

/// A RoBERTa tokenizer loaded from a `tokenizer/` folder.
#[derive(Clone)]
pub struct RobertaTokenizer {
    tokenizer: Tokenizer,
    max_length: usize,
}

impl RobertaTokenizer {
    /// Loads the tokenizer in `folder`: `tokenizer_config.json` with `tokenizer.json` (transformers 5's layout)
    /// or `vocab.json` + `merges.txt` (the Hub's older layout); `tokenizer.json` wins when both exist.
    pub fn from_folder(folder: impl AsRef<Path>) -> Result<Self> {
        let folder = folder.as_ref();
        let read_json = |name: &str| -> Result<(PathBuf, Option<Map<String, Value>>)> {
            let path = folder.join(name);
            if !path.is_file() {
                return Ok((path, None));
            }
            let parsed = files::parse_json_object(&path, &files::read_text(&path)?)?;
            Ok((path, Some(parsed)))
        };
        let (config_path, config) = read_json("tokenizer_config.json")?;
        let config = config.ok_or_else(|| Error::Io {
            path: config_path.clone(),
            cause: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        })?;
        let (json_path, tokenizer_json) = read_json("tokenizer.json")?;
        let tables = match &tokenizer_json {
            Some(json) => files::tables_from_tokenizer_json(&json_path, json)?,
            None => {
                let vocab_path = folder.join("vocab.json");
                let merges_path = folder.join("merges.txt");
                if !vocab_path.is_file() {
                    return Err(Error::invalid(
                        folder.display().to_string(),
                        "no tokenizer files: expected tokenizer.json, or vocab.json and merges.txt",
                    ));
                }
                files::tables_from_vocab_and_merges(
                    (&vocab_path, &files::read_text(&vocab_path)?),
                    (&merges_path, &files::read_text(&merges_path)?),
                )?
            }
        };
        let options = Options::from_config(&config_path, &config)?;
        let add_prefix_space = match config.get("add_prefix_space") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                return Err(json_error(
                    &config_path,
                    format!("`add_prefix_space` must be true or false, found {other}"),
                ))
            }
        };
        let mut tokenizer = backend(tables, add_prefix_space)?;
        let mut specials = Vec::with_capacity(SPECIALS.len());
        for (key, default) in SPECIALS {
            specials.push(special_token(&config_path, &config, key, default)?);
        }
        let config_error =
            |e: tokenizers::Error| Error::invalid(config_path.display().to_string(), e.to_string());
        tokenizer
            .add_special_tokens(specials.clone())
            .map_err(config_error)?;
        let id = |token: &AddedToken, key: &str| {
            tokenizer.token_to_id(&token.content).ok_or_else(|| {
                json_error(
                    &config_path,
                    format!("{key} {:?} is not in the vocabulary", token.content),
                )
            })
        };
        let (bos, eos) = (&specials[0], &specials[2]);
        let processor = RobertaProcessing::new(
            (eos.content.clone(), id(eos, "eos_token")?),
            (bos.content.clone(), id(bos, "bos_token")?),
        )
        .trim_offsets(true)
        .add_prefix_space(add_prefix_space);
        tokenizer.with_post_processor(Some(processor));
        tokenizer
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length: options.max_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(config_error)?;
        Ok(Self {
            tokenizer,
            max_length: options.max_length,
        })
    }

    /// The length prompts are truncated at (`model_max_length`), `<s>` and `</s>` included.
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// `<s>`, the tokens of `text` (truncated), `</s>`: the ids of `tokenizer(text, truncation=True)`, which are
    /// those of the pipeline's padded call up to the padding.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self
            .tokenizer
            .encode(text, true)
            .map_err(|e| Error::invalid("prompt", e.to_string()))?
            .get_ids()
            .to_vec())
    }
}

/// The byte-level BPE pipeline `RobertaTokenizer.__init__` assembles (special tokens added by the caller).
fn backend(tables: BpeTables, add_prefix_space: bool) -> Result<Tokenizer> {
    let source = tables.source.display().to_string();
    let bpe = BPE::builder()
        .vocab_and_merges(tables.vocab, tables.merges)
        .continuing_subword_prefix(String::new())
        .end_of_word_suffix(String::new())
        .fuse_unk(false)
        .build()
        .map_err(|e| Error::invalid(source, e.to_string()))?;
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer
        .with_pre_tokenizer(Some(ByteLevel::new(add_prefix_space, true, true)))
        .with_decoder(Some(ByteLevelDecoder::default()));
    Ok(tokenizer)
}

/// The special token under `key` of `tokenizer_config.json`: a string (matched exactly, as transformers 5 adds
/// it), or an `AddedToken` object with its own stripping flags.
fn special_token(
    path: &Path,
    config: &Map<String, Value>,
    key: &str,
    default: &str,
) -> Result<AddedToken> {
    let token = match config.get(key) {
        None | Some(Value::Null) => AddedToken::from(default, true),
        Some(Value::String(text)) => AddedToken::from(text.clone(), true),
        Some(Value::Object(fields)) => {
            let content = fields
                .get("content")
                .and_then(Value::as_str)
                .ok_or_else(|| json_error(path, format!("`{key}` has no string `content`")))?;
            let flag = |name: &str, default: bool| {
                fields.get(name).and_then(Value::as_bool).unwrap_or(default)
            };
            AddedToken::from(content.to_string(), true)
                .lstrip(flag("lstrip", false))
                .rstrip(flag("rstrip", false))
                .single_word(flag("single_word", false))
                .normalized(flag("normalized", false))
        }
        Some(other) => {
            return Err(json_error(
                path,
                format!("`{key}` must be a string or an AddedToken object, found {other}"),
            ))
        }
    };
    Ok(token)
}
