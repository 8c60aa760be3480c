//! The CLIP tokenizer with transformers 5 `CLIPTokenizer` semantics, id for id.
//!
//! The backend is the `tokenizers` library, assembled as `CLIPTokenizer.__init__` assembles it:
//! normalizer NFC, every `\s+` run to one space, lower case; pre-tokenizer: CLIP's split regex (keeping
//! the matches), then byte-level; BPE with the `</w>` end-of-word suffix; `<|startoftext|>` … `<|endoftext|>`
//! around every prompt. Prompts are truncated and padded to `model_max_length` the way diffusers calls
//! the tokenizer: `tokenizer(prompt, padding="max_length", max_length=model_max_length, truncation=True)`.

mod backend;
pub(crate) mod files;
pub(crate) mod options;
mod special;

use std::path::{Path, PathBuf};

use tokenizers::processors::roberta::RobertaProcessing;
use tokenizers::utils::padding::{PaddingDirection, PaddingParams, PaddingStrategy};
use tokenizers::utils::truncation::{TruncationDirection, TruncationParams, TruncationStrategy};
use tokenizers::Tokenizer;

use crate::{Error, Result};
use backend::{backend, END_OF_WORD};
use files::json_error;
use options::Options;

/// A CLIP tokenizer loaded from a diffusers `tokenizer/` folder.
#[derive(Clone)]
pub struct ClipTokenizer {
    /// Truncates and pads to `max_length`.
    padded: Tokenizer,
    /// Neither truncates nor pads: what diffusers compares with to report truncation.
    untruncated: Tokenizer,
    max_length: usize,
    pad_id: u32,
    bos_id: u32,
    eos_id: u32,
}

/// One tokenized prompt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tokens {
    /// `max_length` ids: BOS, the prompt's tokens (truncated), EOS, then the pad id.
    pub ids: Vec<u32>,
    /// The text that truncation cut off, decoded as diffusers logs it (`batch_decode` of the untruncated
    /// ids from position `max_length - 1` up to the final EOS), or `None` when nothing was cut.
    pub truncated: Option<String>,
}

impl Tokens {
    /// The first position of the largest id, as `torch.argmax(input_ids)`: where transformers'
    /// `CLIPTextTransformer` reads the pooled output when the text encoder's config has the legacy
    /// `eos_token_id == 2`, which is the case for the SD 1.x, SD 2.x and SDXL text encoders. With CLIP's
    /// vocabulary EOS is the largest id, so this is the first EOS. 0 when `ids` is empty.
    pub fn argmax_position(&self) -> usize {
        let mut best: Option<(usize, u32)> = None;
        for (i, &id) in self.ids.iter().enumerate() {
            if best.is_none_or(|(_, max)| id > max) {
                best = Some((i, id));
            }
        }
        best.map_or(0, |(i, _)| i)
    }

    /// The first position of `eos_id`: where `CLIPTextTransformer` reads the pooled output when the
    /// text encoder's config has any `eos_token_id` other than 2 (pass that id). `None` if absent.
    pub fn first_position_of(&self, eos_id: u32) -> Option<usize> {
        self.ids.iter().position(|&id| id == eos_id)
    }
}

impl ClipTokenizer {
    /// Loads the tokenizer in `folder`, in either layout: `tokenizer.json` + `tokenizer_config.json`
    /// (what transformers 5 saves), or `vocab.json` + `merges.txt` + `tokenizer_config.json` (+
    /// `special_tokens_map.json`), as in the Hub's SD repositories. When both are present,
    /// `tokenizer.json` wins, as in transformers.
    pub fn from_folder(folder: impl AsRef<Path>) -> Result<Self> {
        let folder = folder.as_ref();
        if !folder.is_dir() {
            return Err(Error::Io {
                path: folder.to_path_buf(),
                cause: std::io::Error::new(std::io::ErrorKind::NotFound, "not a folder"),
            });
        }
        Self::from_files(folder, &|name: &str| {
            let path = folder.join(name);
            if path.is_file() {
                files::read_text(&path).map(Some)
            } else {
                Ok(None)
            }
        })
    }

    /// Loads a tokenizer from the texts of its folder's files, as [`ClipTokenizer::from_folder`] reads them:
    /// `read(name)` gives the text of the file `name` (`tokenizer_config.json`, `vocab.json`, ...) or `None`
    /// when there is no such file; errors name the files as if they were in `folder`. This is how tokenizers
    /// embedded in the binary are loaded.
    pub fn from_files(
        folder: &Path,
        read: &dyn Fn(&str) -> Result<Option<String>>,
    ) -> Result<Self> {
        let optional_json = |name: &str| -> Result<(PathBuf, Option<_>)> {
            let path = folder.join(name);
            let parsed = read(name)?
                .map(|text| files::parse_json_object(&path, &text))
                .transpose()?;
            Ok((path, parsed))
        };
        let (config_path, config) = optional_json("tokenizer_config.json")?;
        let config = config.ok_or_else(|| Error::Io {
            path: config_path.clone(),
            cause: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        })?;
        let (tokenizer_json_path, tokenizer_json) = optional_json("tokenizer.json")?;
        let (map_path, special_tokens_map) = optional_json("special_tokens_map.json")?;

        let tables = match &tokenizer_json {
            Some(json) => files::tables_from_tokenizer_json(&tokenizer_json_path, json)?,
            None => {
                let Some(vocab) = read("vocab.json")? else {
                    return Err(Error::invalid(
                        folder.display().to_string(),
                        "no tokenizer files: expected tokenizer.json, or vocab.json and merges.txt",
                    ));
                };
                let merges_path = folder.join("merges.txt");
                let merges = read("merges.txt")?.ok_or_else(|| Error::Io {
                    path: merges_path.clone(),
                    cause: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
                })?;
                files::tables_from_vocab_and_merges(
                    (&folder.join("vocab.json"), &vocab),
                    (&merges_path, &merges),
                )?
            }
        };
        let specials = special::resolve(&special::Sources {
            config: (&config_path, &config),
            special_tokens_map: special_tokens_map.as_ref().map(|m| (map_path.as_path(), m)),
            tokenizer_json: tokenizer_json
                .as_ref()
                .map(|j| (tokenizer_json_path.as_path(), j)),
        })?;
        let options = Options::from_config(&config_path, &config)?;

        let mut untruncated = backend(tables, &specials.unk)?;
        untruncated
            .add_tokens(specials.added)
            .map_err(|e| Error::invalid(config_path.display().to_string(), e.to_string()))?;
        untruncated.set_encode_special_tokens(options.split_special_tokens);
        let id = |token: &str, key: &str| {
            untruncated
                .token_to_id(token)
                .ok_or_else(|| json_error(&config_path, format!("{key} {token:?} has no id")))
        };
        let bos_id = id(&specials.bos, "bos_token")?;
        let eos_id = id(&specials.eos, "eos_token")?;
        let pad_id = id(&specials.pad, "pad_token")?;
        untruncated.with_post_processor(Some(
            RobertaProcessing::new((specials.eos, eos_id), (specials.bos, bos_id))
                .trim_offsets(false)
                .add_prefix_space(false),
        ));

        let mut padded = untruncated.clone();
        padded
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length: options.max_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| Error::invalid(config_path.display().to_string(), e.to_string()))?;
        padded.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(options.max_length),
            direction: PaddingDirection::Right,
            pad_to_multiple_of: None,
            pad_id,
            pad_type_id: 0,
            pad_token: specials.pad,
        }));
        Ok(Self {
            padded,
            untruncated,
            max_length: options.max_length,
            pad_id,
            bos_id,
            eos_id,
        })
    }

    /// Tokenizes `text` as diffusers does: BOS, the tokens truncated to `max_length - 2`, EOS, padding.
    pub fn encode(&self, text: &str) -> Result<Tokens> {
        let encode_error = |e: tokenizers::Error| Error::invalid("prompt", e.to_string());
        let ids = self
            .padded
            .encode(text, true)
            .map_err(encode_error)?
            .get_ids()
            .to_vec();
        let full = self.untruncated.encode(text, true).map_err(encode_error)?;
        let full = full.get_ids();
        let truncated = if full.len() >= ids.len() && full != ids.as_slice() {
            let end = full.len().saturating_sub(1);
            let start = (self.max_length - 1).min(end);
            Some(self.decode(&full[start..end])?)
        } else {
            None
        };
        Ok(Tokens { ids, truncated })
    }

    /// The tokens of `text` alone: no BOS or EOS, no truncation, no padding.
    pub fn tokens_of(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self
            .untruncated
            .encode(text, false)
            .map_err(|e| Error::invalid("prompt", e.to_string()))?
            .get_ids()
            .to_vec())
    }

    /// Tokenizes every text of `texts` (see [`ClipTokenizer::encode`]).
    pub fn encode_batch<S: AsRef<str>>(&self, texts: &[S]) -> Result<Vec<Tokens>> {
        texts.iter().map(|t| self.encode(t.as_ref())).collect()
    }

    /// Decodes ids as `CLIPTokenizer.decode` does: byte-level decoding, `</w>` to a space, then the
    /// surrounding whitespace stripped.
    fn decode(&self, ids: &[u32]) -> Result<String> {
        let text = self
            .untruncated
            .decode(ids, false)
            .map_err(|e| Error::invalid("token ids", e.to_string()))?;
        let text = text.replace(END_OF_WORD, " ");
        Ok(text.trim_matches(is_python_space).to_string())
    }

    /// The id padding fills with (`<|endoftext|>` for SD 1.x, `!` = 0 for SD 2.x).
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// The beginning-of-sequence id (`<|startoftext|>`).
    pub fn bos_id(&self) -> u32 {
        self.bos_id
    }

    /// The end-of-sequence id (`<|endoftext|>`).
    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    /// `model_max_length` from `tokenizer_config.json`: the length of every encoding (77 for CLIP).
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// The number of ids, added tokens included (`len(tokenizer)`); ids are below it.
    pub fn vocab_size(&self) -> usize {
        self.untruncated.get_vocab_size(true)
    }
}

/// Python's `str.isspace`, which `str.strip()` uses: Unicode whitespace plus the separators U+001C–U+001F.
fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}
