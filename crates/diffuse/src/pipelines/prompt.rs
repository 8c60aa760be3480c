//! Text conditioning as diffusers' `encode_prompt` builds it: tokenize (truncating at the model's limit with a
//! warning), run the text encoder(s), pick the hidden state `clip_skip` asks for, repeat per image, and stack
//! `[negative; positive]` for classifier-free guidance. SD 1.x/2.x use one CLIP; SDXL concatenates two (a
//! refiner has only the second) and adds the second one's pooled projection.

use candle_core::Tensor;

use super::embeddings::{AddedTokens, Encoder};
use super::prompt_syntax::{ParsedPrompt, Piece};
use super::request::PromptSyntax;
use super::request::RequestField;
use crate::loaders::embeddings::Embedding;
use crate::loaders::weights::TensorRecord;
use crate::loaders::{LoadOptions, PipelineFolder};
use crate::models::clip::text_model::{ClipTextModel, ClipTextOutput};
use crate::models::clip::tokenizer::ClipTokenizer;
use crate::{Error, Result};

/// The text side of a pipeline: SD 1.x/2.x's one CLIP, SDXL's two, or an SDXL refiner's second one alone.
pub struct TextEncoders {
    /// SD's CLIP, or SDXL's first (CLIP ViT-L); SDXL refiners have none.
    pub first: Option<TextEncoder>,
    /// SDXL's second tokenizer and encoder.
    pub second: Option<Box<SecondEncoder>>,
}

/// A tokenizer and its CLIPTextModel.
pub struct TextEncoder {
    /// The tokenizer.
    pub tokenizer: ClipTokenizer,
    /// The text encoder.
    pub encoder: ClipTextModel,
}

/// SDXL's OpenCLIP ViT-bigG text encoder (with projection), whose hidden states are concatenated to the first
/// encoder's and whose pooled projection conditions the UNet.
pub struct SecondEncoder {
    /// The second tokenizer.
    pub tokenizer: ClipTokenizer,
    /// The second text encoder, a CLIPTextModelWithProjection.
    pub encoder: ClipTextModel,
    /// With no negative prompt, the unconditional embeddings are zeros (SDXL base's pipeline option).
    pub force_zeros_for_empty_prompt: bool,
}

/// The rows of a conditioning: images per prompt, whether the negative prompt is encoded for guidance, and
/// diffusers' `clip_skip`.
#[derive(Clone, Copy, Debug)]
pub struct Rows {
    /// Images per prompt.
    pub images: usize,
    /// Classifier-free guidance: `[negative; positive]`.
    pub guidance: bool,
    /// Layers to skip from the end of the text encoder.
    pub clip_skip: Option<usize>,
}

/// What the UNet is conditioned on, batched as `[negative; positive]` when guidance is on.
pub struct Conditioning {
    /// The text embeddings: `[rows, tokens, dim]`.
    pub context: Tensor,
    /// SDXL's pooled text embeddings: `[rows, projection_dim]`.
    pub text_embeds: Option<Tensor>,
}

impl TextEncoders {
    /// Loads the tokenizer(s) and text encoder(s) the folder's `model_index.json` lists.
    pub fn load(folder: &PipelineFolder, opts: &LoadOptions) -> Result<Self> {
        let unused = TensorRecord::default();
        Self::load_recorded(folder, opts, [&unused, &unused])
    }

    /// Loads them as [`TextEncoders::load`] does, recording each encoder's tensors in `records`.
    pub(crate) fn load_recorded(
        folder: &PipelineFolder,
        opts: &LoadOptions,
        records: [&TensorRecord; 2],
    ) -> Result<Self> {
        let index = folder.index();
        let second = match index.class_of("text_encoder_2") {
            None => None,
            Some(_) => Some(Box::new(SecondEncoder {
                tokenizer: folder.load_tokenizer("tokenizer_2")?,
                encoder: folder.load_text_encoder_recorded("text_encoder_2", opts, records[1])?,
                force_zeros_for_empty_prompt: index.flag("force_zeros_for_empty_prompt", true),
            })),
        };
        // diffusers' SDXL pipelines take `text_encoder: [null, null]` as "the second encoder alone" (refiners).
        let first = match (index.class_of("text_encoder"), &second) {
            (None, Some(_)) => None,
            _ => Some(TextEncoder {
                tokenizer: folder.load_tokenizer("tokenizer")?,
                encoder: folder.load_text_encoder_recorded("text_encoder", opts, records[0])?,
            }),
        };
        Ok(Self { first, second })
    }

    /// The largest `clip_skip` the encoders can honor: SD's hidden states go back to the embeddings' output;
    /// SDXL already starts at the penultimate layer, one further back.
    pub(crate) fn max_clip_skip(&self) -> usize {
        let layers = |encoder: &ClipTextModel| encoder.config().num_hidden_layers;
        match (&self.first, &self.second) {
            (Some(first), None) => layers(&first.encoder),
            (first, second) => first
                .iter()
                .map(|f| layers(&f.encoder))
                .chain(second.iter().map(|s| layers(&s.encoder)))
                .min()
                .unwrap_or(0)
                .saturating_sub(1),
        }
    }

    /// Encodes the prompts as `syntax` reads them (see [`PromptSyntax`]): a prompt and a negative prompt
    /// without A1111 syntax that fit in one chunk take diffusers' own path.
    pub fn encode_with_syntax(
        &self,
        prompt: &str,
        negative_prompt: &str,
        syntax: PromptSyntax,
        rows: Rows,
        embeddings: &[Embedding],
    ) -> Result<Conditioning> {
        let Rows {
            images,
            guidance,
            clip_skip,
        } = rows;
        let added = self.added_tokens(embeddings)?;
        let (parsed, negative) = match syntax {
            PromptSyntax::Plain => (
                ParsedPrompt::plain(prompt),
                ParsedPrompt::plain(negative_prompt),
            ),
            PromptSyntax::A1111 => (
                parse_prompt(prompt)?,
                parse_negative_prompt(negative_prompt)?,
            ),
        };
        let plain = |parsed: &ParsedPrompt, text: &str| -> Result<bool> {
            Ok(
                syntax == PromptSyntax::Plain && !self.has_triggers(text, &added)?
                    || self.is_plain(parsed, text, &added)?,
            )
        };
        if plain(&parsed, prompt)? && plain(&negative, negative_prompt)? {
            return self.encode(prompt, negative_prompt, images, guidance, clip_skip);
        }
        if syntax == PromptSyntax::Plain {
            self.check_one_chunk(&[prompt, negative_prompt], &added)?;
        }
        self.encode_weighted(&parsed, &negative, negative_prompt.is_empty(), rows, &added)
    }

    /// Whether `embedding` has vectors of the right width for every encoder.
    pub(crate) fn check_embedding(&self, embedding: &Embedding) -> Result<()> {
        self.added_tokens(std::slice::from_ref(embedding))
            .map(|_| ())
    }

    /// Each encoder's added tokens for `embeddings` (SD's one, or SDXL's two).
    fn added_tokens(&self, embeddings: &[Embedding]) -> Result<[AddedTokens; 2]> {
        if embeddings.is_empty() {
            return Ok(Default::default());
        }
        if self.second.is_none() {
            // An SDXL embedding on SD 1.x/2.x: A1111 skips it (its two widths add up to neither).
            if let Some(xl) = embeddings.iter().find(|e| e.second.is_some()) {
                return Err(Error::Weights {
                    file: xl.path.display().to_string(),
                    tensor: "clip_g".into(),
                    message:
                        "an SDXL embedding (clip_l + clip_g), but this model has one text encoder"
                            .into(),
                });
            }
        }
        let first = match &self.first {
            Some(f) => AddedTokens::new(embeddings, &f.tokenizer, &f.encoder, Encoder::First)?,
            None => AddedTokens::default(),
        };
        let second = match &self.second {
            Some(s) => AddedTokens::new(embeddings, &s.tokenizer, &s.encoder, Encoder::Second)?,
            None => AddedTokens::default(),
        };
        Ok([first, second])
    }

    fn tokenizers_with<'a>(
        &'a self,
        added: &'a [AddedTokens; 2],
    ) -> impl Iterator<Item = (&'a ClipTokenizer, &'a AddedTokens)> {
        self.first
            .iter()
            .map(|f| (&f.tokenizer, &added[0]))
            .chain(self.second.iter().map(|s| (&s.tokenizer, &added[1])))
    }

    /// Whether `text` holds an embedding's trigger word.
    fn has_triggers(&self, text: &str, added: &[AddedTokens; 2]) -> Result<bool> {
        for (tokenizer, added) in self.tokenizers_with(added) {
            if added.occur_in(&tokenizer.tokens_of(text)?) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Read as plain text, prompts with embeddings must fit in one chunk: diffusers would truncate them, and
    /// A1111's chunks are another reading.
    fn check_one_chunk(&self, texts: &[&str], added: &[AddedTokens; 2]) -> Result<()> {
        for (tokenizer, added) in self.tokenizers_with(added) {
            for text in texts {
                let count = added.replace(tokenizer.tokens_of(text)?).len();
                if count > tokenizer.max_length() - 2 {
                    return Err(Error::invalid(
                        RequestField::Prompt.name(),
                        format!(
                            "{count} tokens with its embeddings, more than the {} a plain prompt with \
                             embeddings may have; read it with A1111's syntax, which encodes it in chunks",
                            tokenizer.max_length() - 2
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Whether `parsed` is `text` unchanged, of weight 1, and fits in one chunk of every tokenizer.
    fn is_plain(
        &self,
        parsed: &ParsedPrompt,
        text: &str,
        added: &[AddedTokens; 2],
    ) -> Result<bool> {
        if parsed.pieces != [Piece::Text(text.to_string(), 1.0)]
            || self.has_triggers(text, added)?
        {
            return Ok(false);
        }
        let tokenizers = self
            .first
            .iter()
            .map(|f| &f.tokenizer)
            .chain(self.second.iter().map(|s| &s.tokenizer));
        for tokenizer in tokenizers {
            if tokenizer.tokens_of(text)?.len() > tokenizer.max_length() - 2 {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Encodes `prompt` (and `negative_prompt` when `guidance`) for `images` images.
    ///
    /// An empty negative prompt means "none": SD uses the empty string, SDXL with
    /// `force_zeros_for_empty_prompt` uses zeros, as diffusers does when no negative prompt is passed.
    pub fn encode(
        &self,
        prompt: &str,
        negative_prompt: &str,
        images: usize,
        guidance: bool,
        clip_skip: Option<usize>,
    ) -> Result<Conditioning> {
        match (&self.first, &self.second) {
            (None, None) => Err(Error::invalid(
                "text_encoder",
                "the pipeline has no text encoder",
            )),
            (Some(TextEncoder { tokenizer, encoder }), None) => {
                let context = if guidance {
                    // One pass over both rows (the causal mask keeps them independent); diffusers encodes
                    // the negative prompt without clip_skip.
                    let out = run(tokenizer, encoder, &[negative_prompt, prompt])?;
                    let negative = single_embedding(encoder, &out, None)?.narrow(0, 0, 1)?;
                    let positive = single_embedding(encoder, &out, clip_skip)?.narrow(0, 1, 1)?;
                    Tensor::cat(&[negative, positive], 0)?
                } else {
                    single_embedding(encoder, &run(tokenizer, encoder, &[prompt])?, clip_skip)?
                };
                Ok(Conditioning {
                    context: repeat_rows(&context, images)?,
                    text_embeds: None,
                })
            }
            (first, Some(xl)) => {
                let zero_negative = negative_prompt.is_empty() && xl.force_zeros_for_empty_prompt;
                // The negative prompt (when encoded) and the prompt as one batch per encoder.
                let texts = if guidance && !zero_negative {
                    vec![negative_prompt, prompt]
                } else {
                    vec![prompt]
                };
                let mut outputs = Vec::with_capacity(2);
                if let Some(first) = first {
                    outputs.push(run(&first.tokenizer, &first.encoder, &texts)?);
                }
                outputs.push(run(&xl.tokenizer, &xl.encoder, &texts)?);
                let pooled = outputs
                    .last()
                    .and_then(|second| second.text_embeds.clone())
                    .ok_or_else(|| Error::invalid("text_encoder_2", "has no text_projection"))?;
                // The encoders' penultimate states side by side (the second's alone in a refiner).
                let row = |r: usize, skip: Option<usize>| -> Result<Tensor> {
                    let parts = outputs
                        .iter()
                        .map(|out| penultimate(out, skip)?.narrow(0, r, 1).map_err(Error::from))
                        .collect::<Result<Vec<_>>>()?;
                    Ok(Tensor::cat(&parts, 2)?)
                };
                let last = texts.len() - 1;
                let positive = row(last, clip_skip)?;
                let (context, text_embeds) = if !guidance {
                    (positive, pooled)
                } else if zero_negative {
                    (
                        Tensor::cat(&[positive.zeros_like()?, positive], 0)?,
                        Tensor::cat(&[pooled.zeros_like()?, pooled], 0)?,
                    )
                } else {
                    // diffusers encodes the negative prompt without clip_skip.
                    (Tensor::cat(&[row(0, None)?, positive], 0)?, pooled)
                };
                Ok(Conditioning {
                    context: repeat_rows(&context, images)?,
                    text_embeds: Some(repeat_rows(&text_embeds, images)?),
                })
            }
        }
    }
}

/// Parses the prompt with A1111's syntax; its `<lora:…>` tags are taken out (the pipeline applies them).
pub(crate) fn parse_prompt(text: &str) -> Result<ParsedPrompt> {
    ParsedPrompt::parse(text)
}

/// Parses the negative prompt with A1111's syntax, refusing `<lora:…>` tags there: LoRAs change the whole
/// generation, so they belong in the prompt.
pub(crate) fn parse_negative_prompt(text: &str) -> Result<ParsedPrompt> {
    let parsed = ParsedPrompt::parse(text)?;
    if let Some(tag) = parsed.loras.first() {
        return Err(Error::invalid(
            RequestField::NegativePrompt.name(),
            format!(
                "<lora:{}:…>: LoRA tags apply to the whole generation; put them in the prompt",
                tag.name
            ),
        ));
    }
    Ok(parsed)
}

/// Repeats each row `images` times in place: `[a; b]` → `[a, a, …; b, b, …]`, as diffusers' `repeat` + `view`.
pub(super) fn repeat_rows(x: &Tensor, images: usize) -> Result<Tensor> {
    if images == 1 {
        return Ok(x.clone());
    }
    let rows = x.dim(0)?;
    let parts = (0..rows)
        .map(|r| {
            let row = x.narrow(0, r, 1)?;
            let mut shape = vec![images];
            shape.extend(std::iter::repeat_n(1, x.rank() - 1));
            row.repeat(shape)
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok(Tensor::cat(&parts, 0)?)
}

/// Encodes `texts` as the rows of one batch (each padded to the tokenizer's length).
fn run(
    tokenizer: &ClipTokenizer,
    encoder: &ClipTextModel,
    texts: &[&str],
) -> Result<ClipTextOutput> {
    let mut ids = Vec::new();
    for text in texts {
        let tokens = tokenizer.encode(text)?;
        if let Some(removed) = &tokens.truncated {
            tracing::warn!(
                "The following part of your input was truncated because CLIP can only handle sequences up to {} \
                 tokens: {removed}",
                tokenizer.max_length()
            );
        }
        ids.extend(tokens.ids);
    }
    let shape = (texts.len(), tokenizer.max_length());
    encoder.forward(&Tensor::from_vec(ids, shape, encoder.device())?)
}

fn hidden_state(out: &ClipTextOutput, from_end: usize) -> Result<&Tensor> {
    let layers = out.hidden_states.len();
    layers
        .checked_sub(from_end)
        .and_then(|i| out.hidden_states.get(i))
        .ok_or_else(|| {
            Error::invalid(
                RequestField::ClipSkip.name(),
                format!(
                    "skips more layers than the text encoder's {}",
                    layers.saturating_sub(1)
                ),
            )
        })
}

/// SDXL's choice: the hidden state `clip_skip + 2` from the end (the penultimate layer by default), no final norm.
pub(super) fn penultimate(out: &ClipTextOutput, clip_skip: Option<usize>) -> Result<Tensor> {
    Ok(hidden_state(out, clip_skip.unwrap_or(0) + 2)?.clone())
}

/// SD's choice from `out`: the final output, or with `clip_skip = k` the hidden state `k + 1` from the end
/// passed through the final layer norm (A1111's "Clip skip: 2" is `k = 1`).
pub(super) fn single_embedding(
    encoder: &ClipTextModel,
    out: &ClipTextOutput,
    clip_skip: Option<usize>,
) -> Result<Tensor> {
    match clip_skip {
        None => Ok(out.last_hidden_state.clone()),
        Some(k) => encoder.final_layer_norm(hidden_state(out, k + 1)?),
    }
}
