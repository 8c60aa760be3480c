//! Cheap previews of latents during a generation, without running the VAE.
//!
//! Each latent pixel's 4 channels are projected to RGB by a fixed linear map, `rgb = Σ_c latent_c · F[c]`,
//! mapped from [-1, 1] to [0, 255] (`(rgb + 1) / 2`, clamped, rounded), and the image is enlarged by
//! nearest-neighbour upsampling. `F` ([`SD_LATENT_RGB`]) is the widely used least-squares fit of the SD 1.x/2.x
//! VAE's decoded colours to its (scaled) latents — the factors ComfyUI ships for its SD 1.5 latent format. It is
//! an approximation: colours and rough shapes, no detail; the final image always comes from the VAE.

use candle_core::{DType, Device, Tensor};

use super::images::RgbImage;
use crate::{Error, Result};

/// The latent → RGB factors for the SD 1.x/2.x VAE: row `c` is the (R, G, B) contribution of latent channel `c`.
pub const SD_LATENT_RGB: [[f32; 3]; 4] = [
    [0.3512, 0.2297, 0.3227],
    [0.3250, 0.4974, 0.2350],
    [-0.2829, 0.1762, 0.2721],
    [-0.2120, -0.2616, -0.7177],
];

/// The preview of image `index` of `latents` (`[n, 4, h, w]`, as the pipeline's progress reports them), each
/// latent pixel drawn as an `upscale`×`upscale` block.
pub fn latent_preview(latents: &Tensor, index: usize, upscale: usize) -> Result<RgbImage> {
    let (n, c, h, w) = latents.dims4()?;
    if c != SD_LATENT_RGB.len() {
        return Err(Error::invalid(
            "latents",
            format!(
                "{c} channels; the preview projection takes {}",
                SD_LATENT_RGB.len()
            ),
        ));
    }
    if index >= n {
        return Err(Error::invalid(
            "preview index",
            format!("{index}: the batch has {n} images"),
        ));
    }
    if upscale == 0 {
        return Err(Error::invalid("preview upscale", "0: must be at least 1"));
    }
    let values = latents
        .get(index)?
        .to_dtype(DType::F32)?
        .to_device(&Device::Cpu)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let (out_w, out_h) = (w * upscale, h * upscale);
    let mut pixels = vec![0u8; out_w * out_h * 3];
    for y in 0..h {
        for x in 0..w {
            let mut rgb = [0f32; 3];
            for (channel, factors) in SD_LATENT_RGB.iter().enumerate() {
                let v = values[channel * h * w + y * w + x];
                for (out, factor) in rgb.iter_mut().zip(factors) {
                    *out += v * factor;
                }
            }
            let bytes = rgb.map(|v| (((v + 1.0) / 2.0).clamp(0.0, 1.0) * 255.0).round() as u8);
            for dy in 0..upscale {
                let row = (y * upscale + dy) * out_w;
                for dx in 0..upscale {
                    let at = (row + x * upscale + dx) * 3;
                    pixels[at..at + 3].copy_from_slice(&bytes);
                }
            }
        }
    }
    Ok(RgbImage {
        width: out_w,
        height: out_h,
        pixels,
    })
}
