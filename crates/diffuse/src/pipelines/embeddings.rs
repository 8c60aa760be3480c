//! Textual-inversion embeddings in one generation: each trigger word's tokens in a prompt become as many added
//! token ids as the embedding has vectors (ids past the vocabulary, as diffusers' added tokens are), and the
//! text encoder reads those ids' vectors from the embedding.

use std::path::{Path, PathBuf};

use candle_core::Tensor;

use crate::loaders::embeddings::Embedding;
use crate::loaders::named_files::NamedFiles;
use crate::models::clip::text_model::ClipTextModel;
use crate::models::clip::tokenizer::ClipTokenizer;
use crate::{Error, Result};

/// An embedding for one generation: a file, with the word that stands for it (default: the file's stem).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddingChoice {
    /// The `.safetensors` file.
    pub path: PathBuf,
    /// The trigger word; `None` takes diffusers' stored token or the file's stem.
    pub token: Option<String>,
}

/// The embeddings a generation may use: those of `choices`, and those of `dir` whose stem occurs in `texts`
/// (A1111 loads every file of its folder; reading only the ones a prompt names gives the same result).
pub(crate) fn gather(
    choices: &[EmbeddingChoice],
    dir: Option<&Path>,
    texts: &[&str],
) -> Result<Vec<Embedding>> {
    let mut out = choices
        .iter()
        .map(|c| Embedding::open(&c.path, c.token.as_deref()))
        .collect::<Result<Vec<_>>>()?;
    if let Some(dir) = dir {
        let lower: Vec<String> = texts.iter().map(|t| t.to_lowercase()).collect();
        for (name, path) in NamedFiles::scan(dir)?.entries() {
            let named = name.to_lowercase();
            if out.iter().all(|e| e.trigger != name) && lower.iter().any(|t| t.contains(&named)) {
                out.push(Embedding::open(path, Some(name))?);
            }
        }
    }
    Ok(out)
}

/// Which of SDXL's encoders (or SD's one) the vectors are for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoder {
    /// SD's, or SDXL's first (`clip_l`).
    First,
    /// SDXL's second (`clip_g`).
    Second,
}

/// The added tokens of one text encoder: each trigger's tokens and the ids that replace them, and the
/// vectors of those ids.
#[derive(Default)]
pub(crate) struct AddedTokens {
    triggers: Vec<(Vec<u32>, Vec<u32>)>,
    rows: Option<Tensor>,
}

impl AddedTokens {
    /// The added tokens of `embeddings` for `encoder` (tokenized by `tokenizer`), checking each embedding's
    /// width against the encoder's.
    pub(crate) fn new(
        embeddings: &[Embedding],
        tokenizer: &ClipTokenizer,
        model: &ClipTextModel,
        encoder: Encoder,
    ) -> Result<Self> {
        let mut triggers = Vec::new();
        let mut rows = Vec::new();
        let mut next = model.config().vocab_size as u32;
        for embedding in embeddings {
            let (vectors, which) = match encoder {
                Encoder::First => (
                    &embedding.first,
                    "SD's text encoder (or SDXL's first, clip_l)",
                ),
                Encoder::Second => (&embedding.second, "SDXL's second text encoder (clip_g)"),
            };
            let file = embedding.path.display().to_string();
            let Some(vectors) = vectors else {
                return Err(Error::Weights {
                    file,
                    tensor: "(embedding)".into(),
                    message: format!("has no vectors for {which}: an embedding for another model"),
                });
            };
            let (count, width) = vectors.dims2()?;
            let expected = model.config().hidden_size;
            if width != expected {
                return Err(Error::Weights {
                    file,
                    tensor: "(embedding)".into(),
                    message: format!(
                        "vectors of width {width}, but {which} has width {expected}: an embedding for another model"
                    ),
                });
            }
            let tokens = tokenizer.tokens_of(&embedding.trigger)?;
            if tokens.is_empty() {
                return Err(Error::invalid(
                    "embedding",
                    format!(
                        "{file}: the trigger word {:?} has no tokens",
                        embedding.trigger
                    ),
                ));
            }
            triggers.push((tokens, (next..next + count as u32).collect()));
            next += count as u32;
            rows.push(vectors.clone());
        }
        // The longest trigger first, so that one trigger inside another picks the longer.
        triggers.sort_by_key(|(tokens, _)| std::cmp::Reverse(tokens.len()));
        let rows = if rows.is_empty() {
            None
        } else {
            Some(Tensor::cat(&rows, 0)?)
        };
        Ok(Self { triggers, rows })
    }

    /// `tokens` with every trigger's tokens replaced by its embedding's ids.
    pub(crate) fn replace(&self, tokens: Vec<u32>) -> Vec<u32> {
        if self.triggers.is_empty() {
            return tokens;
        }
        let mut out = Vec::with_capacity(tokens.len());
        let mut i = 0;
        while i < tokens.len() {
            match self
                .triggers
                .iter()
                .find(|(trigger, _)| tokens[i..].starts_with(trigger))
            {
                Some((trigger, ids)) => {
                    out.extend_from_slice(ids);
                    i += trigger.len();
                }
                None => {
                    out.push(tokens[i]);
                    i += 1;
                }
            }
        }
        out
    }

    /// Whether `tokens` hold a trigger.
    pub(crate) fn occur_in(&self, tokens: &[u32]) -> bool {
        self.triggers.iter().any(|(trigger, _)| {
            tokens
                .windows(trigger.len())
                .any(|w| w == trigger.as_slice())
        })
    }

    /// The vectors of the added ids, in id order.
    pub(crate) fn rows(&self) -> Option<&Tensor> {
        self.rows.as_ref()
    }
}
