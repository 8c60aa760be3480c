//! Tiled decoding, diffusers' `AutoencoderKL.enable_tiling()`: the latents are cut into overlapping tiles that
//! are decoded one at a time (so the decoder's activations are those of one tile, whatever the image size),
//! and each tile is blended linearly into its upper and left neighbours over the overlap to hide the seams.

use candle_core::{DType, Tensor};

use super::config::AutoencoderKLConfig;
use crate::models::config_values::PerBlock;
use crate::{Error, Result};

/// The tile geometry, in diffusers' terms.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VaeTiling {
    /// Latent tile side (`tile_latent_min_size`); latents no larger than this are decoded whole.
    pub latent_tile: usize,
    /// Decoded tile side (`tile_sample_min_size`).
    pub sample_tile: usize,
    /// Fraction of a tile shared with its neighbour (`tile_overlap_factor`).
    pub overlap: f64,
}

impl VaeTiling {
    /// diffusers' defaults for a VAE: tiles of the config's `sample_size` pixels (32 when absent), an overlap of
    /// a quarter.
    pub fn for_config(cfg: &AutoencoderKLConfig) -> Self {
        let sample = match &cfg.sample_size {
            Some(PerBlock::One(side)) => *side,
            Some(PerBlock::Each(sides)) => sides.first().copied().unwrap_or(32),
            None => 32,
        };
        Self {
            latent_tile: sample / cfg.scale_factor().max(1),
            sample_tile: sample,
            overlap: 0.25,
        }
    }

    /// Whether latents of this height and width are decoded in tiles.
    pub fn applies_to(&self, height: usize, width: usize) -> bool {
        height > self.latent_tile || width > self.latent_tile
    }
}

/// Decodes `z` (`[batch, c, h, w]`) tile by tile with `decode` (post-quant conv + decoder), as diffusers'
/// `tiled_decode` does, in-place blending order included.
pub fn tiled_decode(
    z: &Tensor,
    tiling: &VaeTiling,
    decode: impl Fn(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let (_, _, height, width) = z.dims4()?;
    let stride = (tiling.latent_tile as f64 * (1.0 - tiling.overlap)) as usize;
    let blend_extent = (tiling.sample_tile as f64 * tiling.overlap) as usize;
    let row_limit = tiling.sample_tile.saturating_sub(blend_extent);
    if stride == 0 || row_limit == 0 || !(0.0..1.0).contains(&tiling.overlap) {
        return Err(Error::invalid(
            "vae tiling",
            format!("{tiling:?}: tiles must advance by at least one latent pixel"),
        ));
    }
    let mut rows: Vec<Vec<Tensor>> = Vec::new();
    for i in (0..height).step_by(stride) {
        let mut row = Vec::new();
        for j in (0..width).step_by(stride) {
            let tile = z.narrow(2, i, tiling.latent_tile.min(height - i))?.narrow(
                3,
                j,
                tiling.latent_tile.min(width - j),
            )?;
            row.push(decode(&tile)?);
        }
        rows.push(row);
    }
    let dtype = rows
        .first()
        .and_then(|r| r.first())
        .map_or(DType::F32, Tensor::dtype);
    // diffusers blends each tile in place, so later tiles see their neighbours already blended.
    for i in 0..rows.len() {
        for j in 0..rows[i].len() {
            let mut tile = rows[i][j].to_dtype(DType::F32)?;
            if i > 0 {
                tile = blend(
                    &rows[i - 1][j].to_dtype(DType::F32)?,
                    &tile,
                    blend_extent,
                    2,
                )?;
            }
            if j > 0 {
                tile = blend(
                    &rows[i][j - 1].to_dtype(DType::F32)?,
                    &tile,
                    blend_extent,
                    3,
                )?;
            }
            rows[i][j] = tile;
        }
    }
    let mut out_rows = Vec::with_capacity(rows.len());
    for row in &rows {
        let cropped = row
            .iter()
            .map(|t| {
                let (_, _, h, w) = t.dims4()?;
                t.narrow(2, 0, row_limit.min(h))?
                    .narrow(3, 0, row_limit.min(w))
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        out_rows.push(Tensor::cat(&cropped, 3)?);
    }
    Ok(Tensor::cat(&out_rows, 2)?.to_dtype(dtype)?)
}

/// diffusers' `blend_v` (`dim` 2) / `blend_h` (`dim` 3): the first `extent` rows (columns) of `b` become
/// `a`'s last ones · (1 − y/extent) + `b`'s · y/extent.
fn blend(a: &Tensor, b: &Tensor, extent: usize, dim: usize) -> Result<Tensor> {
    let extent = extent.min(a.dim(dim)?).min(b.dim(dim)?);
    if extent == 0 {
        return Ok(b.clone());
    }
    let mut shape = [1usize; 4];
    shape[dim] = extent;
    let (wa, wb): (Vec<f32>, Vec<f32>) = (0..extent)
        .map(|y| {
            let t = y as f64 / extent as f64;
            ((1.0 - t) as f32, t as f32)
        })
        .unzip();
    let device = b.device();
    let wa = Tensor::from_vec(wa, &shape[..], device)?;
    let wb = Tensor::from_vec(wb, &shape[..], device)?;
    let a_tail = a.narrow(dim, a.dim(dim)? - extent, extent)?;
    let b_head = b.narrow(dim, 0, extent)?;
    let blended = (a_tail.broadcast_mul(&wa)? + b_head.broadcast_mul(&wb)?)?;
    let rest = b.narrow(dim, extent, b.dim(dim)? - extent)?;
    Ok(Tensor::cat(&[&blended, &rest], dim)?)
}
