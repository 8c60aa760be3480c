//! Uploaded images: base64 or data URLs, size checks before decoding, and masks in each API's convention.

use std::io::Cursor;

use base64::Engine as _;
use diffuse::pipelines::RgbImage;
use image::{DynamicImage, ImageReader};

use crate::config::Limits;
use crate::error::ApiError;

/// How a mask image marks the area to repaint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaskRule {
    /// OpenAI: fully transparent pixels (alpha below 128) are edited; a mask without transparency is read as
    /// diffusers reads it (white is repainted).
    TransparentRepaints,
    /// A1111 (`create_binary_mask`): a mask with an alpha channel that is not fully opaque is its alpha
    /// (opaque is repainted); otherwise its luminance (white is repainted).
    OpaqueOrWhiteRepaints,
}

/// The bytes of a base64 string, with or without a `data:...;base64,` prefix.
pub fn base64_bytes(text: &str, field: &str) -> Result<Vec<u8>, ApiError> {
    let payload = match text.split_once(";base64,") {
        Some((head, rest)) if head.starts_with("data:") => rest,
        _ => text,
    };
    let cleaned: String = payload.chars().filter(|c| !c.is_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(cleaned.as_bytes())
        .map_err(|e| ApiError::bad_field(field, format!("not valid base64 ({e})")))
}

/// Runs `work` (decoding uploads) on the blocking pool: a large image takes long enough to decode that on the
/// async runtime it would stall every other request, `/health` included.
pub async fn off_runtime<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::internal(format!("decoding the upload failed: {e}")))?
}

/// Decodes an uploaded image, refusing sides beyond the limit before any pixel is decoded.
pub fn decode(bytes: &[u8], field: &str, limits: &Limits) -> Result<DynamicImage, ApiError> {
    let unreadable = |e: &dyn std::fmt::Display| {
        ApiError::bad_field(field, format!("not a readable image ({e})"))
    };
    let reader = || {
        ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| unreadable(&e))
    };
    let (width, height) = reader()?.into_dimensions().map_err(|e| unreadable(&e))?;
    let max = limits.max_input_side;
    if width as usize > max || height as usize > max || width == 0 || height == 0 {
        return Err(ApiError::bad_field(
            field,
            format!("{width}×{height}: each side must be from 1 to {max} pixels"),
        ));
    }
    let mut reader = reader()?;
    let mut decode_limits = image::Limits::default();
    decode_limits.max_image_width = Some(max as u32);
    decode_limits.max_image_height = Some(max as u32);
    reader.limits(decode_limits);
    reader.decode().map_err(|e| unreadable(&e))
}

/// The image as RGB, alpha dropped.
pub fn to_rgb(image: &DynamicImage) -> RgbImage {
    let rgb = image.to_rgb8();
    RgbImage {
        width: rgb.width() as usize,
        height: rgb.height() as usize,
        pixels: rgb.into_raw(),
    }
}

/// Whether any pixel is less than fully opaque.
pub fn has_transparency(image: &DynamicImage) -> bool {
    image.color().has_alpha() && image.to_rgba8().pixels().any(|p| p.0[3] < 255)
}

/// The mask as diffusers takes it (white = repaint), resized to `width`×`height` when it differs.
pub fn to_mask(image: &DynamicImage, rule: MaskRule, width: usize, height: usize) -> RgbImage {
    let transparent = has_transparency(image);
    let mask = if transparent {
        let rgba = image.to_rgba8();
        let pixels = rgba
            .pixels()
            .flat_map(|p| {
                let alpha = p.0[3];
                let repaint = match rule {
                    MaskRule::TransparentRepaints => alpha < 128,
                    MaskRule::OpaqueOrWhiteRepaints => alpha >= 128,
                };
                let v = if repaint { 255 } else { 0 };
                [v, v, v]
            })
            .collect();
        RgbImage {
            width: rgba.width() as usize,
            height: rgba.height() as usize,
            pixels,
        }
    } else {
        to_rgb(image)
    };
    mask.resized(width, height)
}

/// Inverts a mask (A1111's `inpainting_mask_invert`).
pub fn invert(mask: &mut RgbImage) {
    for v in &mut mask.pixels {
        *v = 255 - *v;
    }
}
