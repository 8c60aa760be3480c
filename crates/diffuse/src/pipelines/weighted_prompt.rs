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

/// Runs `encoder` over chunks as one batch, each distinct id sequence once; also returns each chunk's row of
/// the output.
fn run(
    encoder: &ClipTextModel,
    chunks: &[&Chunk],
    length: usize,
    added: &AddedTokens,
) -> Result<(ClipTextOutput, Vec<usize>)> {
    let mut distinct: Vec<&[u32]> = Vec::with_capacity(chunks.len());
    let rows = chunks
        .iter()
        .map(
            |chunk| match distinct.iter().position(|d| *d == chunk.ids) {
                Some(row) => row,
                None => {
                    distinct.push(&chunk.ids);
                    distinct.len() - 1
                }
            },
        )
        .collect();
    let ids: Vec<u32> = distinct.concat();
    let out = encoder.forward_with_extra(
        &Tensor::from_vec(ids, (distinct.len(), length), encoder.device())?,
        added.rows(),
    )?;
    Ok((out, rows))
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

/// Each text's encoding, and the empty prompt's chunk when the texts are to be padded to one chunk count.
struct EncodedTexts {
    texts: Vec<Encoded>,
    blank: Option<Tensor>,
}

/// Encodes each text's pieces with `tokenizer` and `encoder` in one batch. With `padding`, the empty prompt's
/// chunk (taken as `padding` says) is encoded too when the texts' chunk counts differ.
fn encode_texts(
    tokenizer: &ClipTokenizer,
    encoder: &ClipTextModel,
    texts: &[(&[Piece], States)],
    padding: Option<States>,
    added: &AddedTokens,
) -> Result<EncodedTexts> {
    let mut per_text = texts
        .iter()
        .map(|(pieces, states)| Ok((chunks(tokenizer, pieces, added)?, *states)))
        .collect::<Result<Vec<_>>>()?;
    let counts_differ = per_text.windows(2).any(|w| w[0].0.len() != w[1].0.len());
    let padding = padding.filter(|_| counts_differ);
    if let Some(states) = padding {
        per_text.push((
            chunks(tokenizer, &ParsedPrompt::plain("").pieces, added)?,
            states,
        ));
    }
    let all: Vec<&Chunk> = per_text.iter().flat_map(|(c, _)| c).collect();
    let (out, rows) = run(encoder, &all, tokenizer.max_length(), added)?;
    let mut rows = rows.into_iter();
    let mut encoded = Vec::with_capacity(per_text.len());
    for (chunks, states) in &per_text {
        let all_states = match states {
            States::Single(skip) => single_embedding(encoder, &out, *skip)?,
            States::Penultimate(skip) => penultimate(&out, *skip)?,
        };
        let mut chunk_states = Vec::with_capacity(chunks.len());
        let mut first_row = None;
        for chunk in chunks {
            let row = rows.next().ok_or_else(|| {
                Error::invalid("text_encoder", "fewer encoded rows than prompt chunks")
            })?;
            first_row.get_or_insert(row);
            chunk_states.push(emphasize(&all_states.narrow(0, row, 1)?, &chunk.weights)?);
        }
        let pooled = match (&out.text_embeds, first_row) {
            (Some(p), Some(row)) => Some(p.narrow(0, row, 1)?),
            _ => None,
        };
        encoded.push(Encoded {
            states: chunk_states,
            pooled,
        });
    }
    let blank = match padding {
        Some(_) => encoded.pop().and_then(|e| e.states.into_iter().next()),
        None => None,
    };
    Ok(EncodedTexts {
        texts: encoded,
        blank,
    })
}

/// `chunks` extended to `count` chunks with `blank` (present whenever the chunk counts differ).
fn padded(mut chunks: Vec<Tensor>, count: usize, blank: Option<&Tensor>) -> Result<Tensor> {
    while chunks.len() < count {
        let blank = blank.ok_or_else(|| {
            Error::invalid(
                "text_encoder",
                "the empty prompt's chunk was not encoded for padding",
            )
        })?;
        chunks.push(blank.clone());
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
        match (&self.first, &self.second) {
            (None, None) => Err(Error::invalid(
                "text_encoder",
                "the pipeline has no text encoder",
            )),
            (Some(first), None) => {
                let mut texts = vec![(prompt.pieces.as_slice(), States::Single(clip_skip))];
                if guidance {
                    texts.push((negative.pieces.as_slice(), States::Single(None)));
                }
                let padding = guidance.then_some(States::Single(None));
                let EncodedTexts { texts, blank } =
                    encode_texts(&first.tokenizer, &first.encoder, &texts, padding, &added[0])?;
                let context = if guidance {
                    let count = texts[0].states.len().max(texts[1].states.len());
                    let negative = padded(texts[1].states.clone(), count, blank.as_ref())?;
                    let positive = padded(texts[0].states.clone(), count, blank.as_ref())?;
                    Tensor::cat(&[negative, positive], 0)?
                } else {
                    Tensor::cat(&texts[0].states, 1)?
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
                }
                let padding = encode_negative.then_some(States::Penultimate(None));
                let mut per_encoder = Vec::with_capacity(2);
                if let Some(first) = first {
                    per_encoder.push(encode_texts(
                        &first.tokenizer,
                        &first.encoder,
                        &texts,
                        padding,
                        &added[0],
                    )?);
                }
                let second = encode_texts(&xl.tokenizer, &xl.encoder, &texts, padding, &added[1])?;
                let pooled_of = |text: usize| {
                    second.texts[text]
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
                    (0..per_encoder[0].texts[text].states.len())
                        .map(|k| {
                            let parts: Vec<&Tensor> = per_encoder
                                .iter()
                                .map(|e| &e.texts[text].states[k])
                                .collect();
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
                    // The empty prompt's chunk from the encoders side by side, where they encoded it.
                    let blanks: Option<Vec<&Tensor>> =
                        per_encoder.iter().map(|e| e.blank.as_ref()).collect();
                    let blank = blanks.map(|parts| Tensor::cat(&parts, 2)).transpose()?;
                    let count = positive_chunks.len().max(negative_chunks.len());
                    let negative = padded(negative_chunks, count, blank.as_ref())?;
                    let positive = padded(positive_chunks, count, blank.as_ref())?;
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
