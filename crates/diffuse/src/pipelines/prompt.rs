//! Prompt encoding as diffusers' `encode_prompt` does it: tokenize (truncating at the model's limit with a
//! warning), run the text encoder, pick the hidden state `clip_skip` asks for, repeat per image.

use candle_core::{Device, Tensor};

use crate::models::clip::text_model::ClipTextModel;
use crate::models::clip::tokenizer::ClipTokenizer;
use crate::Result;

/// Encodes `text` to `[1, tokens, hidden]` embeddings.
///
/// With `clip_skip = Some(k)` the hidden state `k` layers before the last is taken and passed through the final
/// layer norm (diffusers' meaning; A1111's "Clip skip: 2" is `k = 1`).
pub fn encode_text(
    tokenizer: &ClipTokenizer,
    encoder: &ClipTextModel,
    text: &str,
    clip_skip: Option<usize>,
    device: &Device,
) -> Result<Tensor> {
    let tokens = tokenizer.encode(text)?;
    if let Some(removed) = &tokens.truncated {
        tracing::warn!(
            "The following part of your input was truncated because CLIP can only handle sequences up to {} \
             tokens: {removed}",
            tokenizer.max_length()
        );
    }
    let ids = Tensor::new(tokens.ids.as_slice(), device)?.unsqueeze(0)?;
    let out = encoder.forward(&ids)?;
    match clip_skip {
        None => Ok(out.last_hidden_state),
        Some(k) => {
            let layers = out.hidden_states.len();
            let index = layers.checked_sub(k + 1).ok_or_else(|| {
                crate::Error::invalid(
                    "clip_skip",
                    format!(
                        "{k} skips more layers than the text encoder's {}",
                        layers - 1
                    ),
                )
            })?;
            encoder.final_layer_norm(&out.hidden_states[index])
        }
    }
}

/// The text conditioning of one generation: `[n, tokens, hidden]`, or `[2n, …]` as `[negative; positive]`
/// when classifier-free guidance is on.
pub fn encode_prompts(
    tokenizer: &ClipTokenizer,
    encoder: &ClipTextModel,
    prompt: &str,
    negative_prompt: &str,
    images: usize,
    guidance: bool,
    clip_skip: Option<usize>,
) -> Result<Tensor> {
    let device = encoder.device().clone();
    let positive =
        encode_text(tokenizer, encoder, prompt, clip_skip, &device)?.repeat((images, 1, 1))?;
    if !guidance {
        return Ok(positive);
    }
    // diffusers encodes the negative prompt without clip_skip.
    let negative =
        encode_text(tokenizer, encoder, negative_prompt, None, &device)?.repeat((images, 1, 1))?;
    Ok(Tensor::cat(&[negative, positive], 0)?)
}
