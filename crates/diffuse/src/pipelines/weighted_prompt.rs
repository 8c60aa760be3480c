//! Prompts in AUTOMATIC1111's syntax through the text encoders, as A1111 documents it: the weighted tokens in
//! chunks of 75 (a chunk ends at `BREAK`, and a full chunk moves the words after its last comma, if that comma
//! is among its last 20 tokens, to the next), each chunk encoded on its own as `[BOS, tokens, EOS, padding]`,
//! each token's hidden state multiplied by its weight and the chunk's mean restored, and the chunks side by
//! side. The shorter of the prompt and the negative prompt is padded with the empty prompt's chunk; SDXL takes
//! the pooled embedding from the first chunk. The negative prompt is encoded without `clip_skip`, as diffusers
//! encodes it.

use candle_core::{DType, Tensor};

use super::embeddings::AddedTokens;
use super::prompt::{penultimate, repeat_rows, single_embedding, Conditioning, Rows, TextEncoders};
use super::prompt_syntax::{ParsedPrompt, Piece};
use super::request::RequestField;
use crate::models::clip::text_model::{ClipTextModel, ClipTextOutput};
use crate::models::clip::tokenizer::ClipTokenizer;
use crate::{Error, Result};

/// How far back from a full chunk's end a comma may be for the words after it to move to the next chunk
/// (A1111's default "comma padding backtrack").
const COMMA_BACKTRACK: usize = 20;

/// One chunk as the text encoder sees it: `max_length` ids and each position's weight.
struct Chunk {
    ids: Vec<u32>,
    weights: Vec<f32>,
}

/// The pieces' tokens in chunks for `tokenizer`.
fn chunks(tokenizer: &ClipTokenizer, pieces: &[Piece], added: &AddedTokens) -> Result<Vec<Chunk>> {
    let size = tokenizer.max_length() - 2;
    let comma = tokenizer.tokens_of(",")?.first().copied();
    let close = |tokens: &mut Vec<(u32, f32)>, out: &mut Vec<Chunk>| {
        let mut ids = vec![tokenizer.bos_id()];
        let mut weights = vec![1.0];
        for &(id, w) in tokens.iter() {
            ids.push(id);
            weights.push(w);
        }
        ids.push(tokenizer.eos_id());
        weights.push(1.0);
        ids.resize(size + 2, tokenizer.pad_id());
        weights.resize(size + 2, 1.0);
        out.push(Chunk { ids, weights });
        tokens.clear();
    };
    let mut out = Vec::new();
    let mut current: Vec<(u32, f32)> = Vec::new();
    let mut last_comma: Option<usize> = None;
    for piece in pieces {
        let (text, weight) = match piece {
            Piece::Break => {
                close(&mut current, &mut out);
                last_comma = None;
                continue;
            }
            Piece::Text(text, weight) => (text, *weight as f32),
        };
        for id in added.replace(tokenizer.tokens_of(text)?) {
            if Some(id) == comma {
                last_comma = Some(current.len());
            } else if let Some(at) = last_comma
                .filter(|&at| current.len() == size && current.len() - at <= COMMA_BACKTRACK)
            {
                let moved = current.split_off(at + 1);
                close(&mut current, &mut out);
                last_comma = None;
                current = moved;
            }
            if current.len() == size {
                close(&mut current, &mut out);
                last_comma = None;
            }
            current.push((id, weight));
        }
    }
    if !current.is_empty() || out.is_empty() {
        close(&mut current, &mut out);
    }
    Ok(out)
}

/// Runs `encoder` over chunks as one batch.
fn run(
    encoder: &ClipTextModel,
    chunks: &[&Chunk],
    length: usize,
    added: &AddedTokens,
) -> Result<ClipTextOutput> {
    let ids: Vec<u32> = chunks.iter().flat_map(|c| c.ids.iter().copied()).collect();
    encoder.forward_with_extra(
        &Tensor::from_vec(ids, (chunks.len(), length), encoder.device())?,
        added.rows(),
    )
}

/// `z * weights` with `z`'s mean restored (A1111's "original" emphasis); `z` when every weight is 1.
fn emphasize(z: &Tensor, weights: &[f32]) -> Result<Tensor> {
    if weights.iter().all(|&w| w == 1.0) {
        return Ok(z.clone());
    }
    let dtype = z.dtype();
    let z = z.to_dtype(DType::F32)?;
    let w = Tensor::from_slice(weights, (1, weights.len(), 1), z.device())?;
    let weighted = z.broadcast_mul(&w)?;
    let mean = |t: &Tensor| -> Result<f32> { Ok(t.mean_all()?.to_scalar::<f32>()?) };
    let ratio = mean(&z)? / mean(&weighted)?;
    Ok((weighted * f64::from(ratio))?.to_dtype(dtype)?)
}

/// One text's chunks through one encoder: the emphasized hidden states of each chunk, `[1, 77, D]` each, and
/// the pooled projection of its first chunk.
struct Encoded {
    states: Vec<Tensor>,
    pooled: Option<Tensor>,
}

/// Which hidden states a pipeline conditions on.
#[derive(Clone, Copy)]
enum States {
    /// SD: the final states, or with clip_skip a layer through the final norm.
    Single(Option<usize>),
    /// SDXL: the penultimate states (further back with clip_skip), no final norm.
    Penultimate(Option<usize>),
}

/// Encodes each text's pieces with `tokenizer` and `encoder` in one batch.
fn encode_texts(
    tokenizer: &ClipTokenizer,
    encoder: &ClipTextModel,
    texts: &[(&[Piece], States)],
    added: &AddedTokens,
) -> Result<Vec<Encoded>> {
    let per_text = texts
        .iter()
        .map(|(pieces, _)| chunks(tokenizer, pieces, added))
        .collect::<Result<Vec<_>>>()?;
    let all: Vec<&Chunk> = per_text.iter().flatten().collect();
    let out = run(encoder, &all, tokenizer.max_length(), added)?;
    let mut row = 0;
    let mut encoded = Vec::with_capacity(texts.len());
    for ((_, states), chunks) in texts.iter().zip(&per_text) {
        let all_states = match states {
            States::Single(skip) => single_embedding(encoder, &out, *skip)?,
            States::Penultimate(skip) => penultimate(&out, *skip)?,
        };
        let mut chunk_states = Vec::with_capacity(chunks.len());
        for (k, chunk) in chunks.iter().enumerate() {
            chunk_states.push(emphasize(
                &all_states.narrow(0, row + k, 1)?,
                &chunk.weights,
            )?);
        }
        let pooled = out
            .text_embeds
            .as_ref()
            .map(|p| p.narrow(0, row, 1))
            .transpose()?;
        row += chunks.len();
        encoded.push(Encoded {
            states: chunk_states,
            pooled,
        });
    }
    Ok(encoded)
}

/// `chunks` extended to `count` chunks with `empty`.
fn padded(mut chunks: Vec<Tensor>, count: usize, empty: &Tensor) -> Result<Tensor> {
    while chunks.len() < count {
        chunks.push(empty.clone());
    }
    Ok(Tensor::cat(&chunks, 1)?)
}

impl TextEncoders {
    /// Encodes a prompt and a negative prompt parsed with A1111's syntax (see the module documentation).
    pub(crate) fn encode_weighted(
        &self,
        prompt: &ParsedPrompt,
        negative: &ParsedPrompt,
        negative_is_empty: bool,
        rows: Rows,
        added: &[AddedTokens; 2],
    ) -> Result<Conditioning> {
        let Rows {
            images,
            guidance,
            clip_skip,
        } = rows;
        let empty = ParsedPrompt::plain("");
        match (&self.first, &self.second) {
            (None, None) => Err(Error::invalid(
                "text_encoder",
                "the pipeline has no text encoder",
            )),
            (Some(first), None) => {
                let mut texts = vec![(prompt.pieces.as_slice(), States::Single(clip_skip))];
                if guidance {
                    texts.push((negative.pieces.as_slice(), States::Single(None)));
                    texts.push((empty.pieces.as_slice(), States::Single(None)));
                }
                let encoded = encode_texts(&first.tokenizer, &first.encoder, &texts, &added[0])?;
                let context = if guidance {
                    let count = encoded[0].states.len().max(encoded[1].states.len());
                    let blank = &encoded[2].states[0];
                    let negative = padded(encoded[1].states.clone(), count, blank)?;
                    let positive = padded(encoded[0].states.clone(), count, blank)?;
                    Tensor::cat(&[negative, positive], 0)?
                } else {
                    Tensor::cat(&encoded[0].states, 1)?
                };
                Ok(Conditioning {
                    context: repeat_rows(&context, images)?,
                    text_embeds: None,
                })
            }
            (first, Some(xl)) => {
                let zero_negative = negative_is_empty && xl.force_zeros_for_empty_prompt;
                let encode_negative = guidance && !zero_negative;
                let mut texts = vec![(prompt.pieces.as_slice(), States::Penultimate(clip_skip))];
                if encode_negative {
                    texts.push((negative.pieces.as_slice(), States::Penultimate(None)));
                    texts.push((empty.pieces.as_slice(), States::Penultimate(None)));
                }
                let mut per_encoder = Vec::with_capacity(2);
                if let Some(first) = first {
                    per_encoder.push(encode_texts(
                        &first.tokenizer,
                        &first.encoder,
                        &texts,
                        &added[0],
                    )?);
                }
                let second = encode_texts(&xl.tokenizer, &xl.encoder, &texts, &added[1])?;
                let pooled_of = |text: usize| {
                    second[text]
                        .pooled
                        .clone()
                        .ok_or_else(|| Error::invalid("text_encoder_2", "has no text_projection"))
                };
                let pooled = pooled_of(0)?;
                let negative_pooled = if encode_negative {
                    Some(pooled_of(1)?)
                } else {
                    None
                };
                per_encoder.push(second);
                // Each chunk's states from the encoders side by side.
                let side_by_side = |text: usize| -> Result<Vec<Tensor>> {
                    (0..per_encoder[0][text].states.len())
                        .map(|k| {
                            let parts: Vec<&Tensor> =
                                per_encoder.iter().map(|e| &e[text].states[k]).collect();
                            Ok(Tensor::cat(&parts, 2)?)
                        })
                        .collect()
                };
                let positive_chunks = side_by_side(0)?;
                let (context, text_embeds) = if !guidance {
                    (Tensor::cat(&positive_chunks, 1)?, pooled)
                } else if zero_negative {
                    let positive = Tensor::cat(&positive_chunks, 1)?;
                    (
                        Tensor::cat(&[positive.zeros_like()?, positive], 0)?,
                        Tensor::cat(&[pooled.zeros_like()?, pooled], 0)?,
                    )
                } else {
                    let negative_chunks = side_by_side(1)?;
                    let blank = side_by_side(2)?.remove(0);
                    let count = positive_chunks.len().max(negative_chunks.len());
                    let negative = padded(negative_chunks, count, &blank)?;
                    let positive = padded(positive_chunks, count, &blank)?;
                    let negative_pooled = negative_pooled.ok_or_else(|| {
                        Error::invalid(
                            RequestField::NegativePrompt.name(),
                            "the negative prompt was not encoded",
                        )
                    })?;
                    (
                        Tensor::cat(&[negative, positive], 0)?,
                        Tensor::cat(&[negative_pooled, pooled], 0)?,
                    )
                };
                Ok(Conditioning {
                    context: repeat_rows(&context, images)?,
                    text_embeds: Some(repeat_rows(&text_embeds, images)?),
                })
            }
        }
    }
}
