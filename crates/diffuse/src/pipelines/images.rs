//! Images in and out of the pipelines: reading and resizing inputs, masks, tensors ↔ 8-bit RGB, and PNG files
//! carrying AUTOMATIC1111's `parameters` text.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use image::imageops::FilterType;

use crate::metadata::GenerationParameters;
use crate::{Error, Result};

/// An 8-bit RGB image, row-major, 3 bytes per pixel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `height · width · 3` bytes.
    pub pixels: Vec<u8>,
}

impl RgbImage {
    /// Reads an image file (PNG, JPEG, WebP, BMP, TIFF) as RGB; `what` names it in errors (e.g. `--image`).
    pub fn open(path: &Path, what: &str) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            cause: source,
        })?;
        Self::decode(&bytes, what).map_err(|e| match e {
            Error::InvalidArgument { name, message } => {
                Error::invalid(name, format!("{}: {message}", path.display()))
            }
            other => other,
        })
    }

    /// Decodes an encoded image (any supported format) as RGB.
    pub fn decode(bytes: &[u8], what: &str) -> Result<Self> {
        let decoded = image::load_from_memory(bytes)
            .map_err(|e| Error::invalid(what, format!("not a readable image ({e})")))?
            .to_rgb8();
        Ok(Self {
            width: decoded.width() as usize,
            height: decoded.height() as usize,
            pixels: decoded.into_raw(),
        })
    }

    /// Resizes to `width`×`height` with a Lanczos filter (as diffusers' image processor does with PIL); a no-op at
    /// the same size.
    pub fn resized(&self, width: usize, height: usize) -> Self {
        if width == self.width && height == self.height {
            return self.clone();
        }
        let Some(buffer) =
            image::RgbImage::from_raw(self.width as u32, self.height as u32, self.pixels.clone())
        else {
            return self.clone();
        };
        let out =
            image::imageops::resize(&buffer, width as u32, height as u32, FilterType::Lanczos3);
        Self {
            width,
            height,
            pixels: out.into_raw(),
        }
    }

    /// The image as a `[1, 3, h, w]` tensor in [-1, 1] (diffusers' `preprocess`: x / 255 · 2 − 1).
    pub fn to_tensor(&self, device: &Device, dtype: DType) -> Result<Tensor> {
        let (w, h) = (self.width, self.height);
        let mut planar = vec![0f32; 3 * w * h];
        for (i, px) in self.pixels.chunks_exact(3).enumerate() {
            for c in 0..3 {
                planar[c * w * h + i] = px[c] as f32 / 255.0 * 2.0 - 1.0;
            }
        }
        Ok(Tensor::from_vec(planar, (1, 3, h, w), &Device::Cpu)?
            .to_dtype(dtype)?
            .to_device(device)?)
    }

    /// The grayscale mask of this image as `[1, 1, h, w]` in {0, 1}: PIL's "L" conversion, then values ≥ 0.5
    /// become 1 (diffusers' mask processor: grayscale, binarize, no normalization). White is repainted.
    pub fn to_mask_tensor(&self, device: &Device, dtype: DType) -> Result<Tensor> {
        let values: Vec<f32> = self
            .pixels
            .chunks_exact(3)
            .map(|px| {
                let l =
                    (px[0] as u32 * 19595 + px[1] as u32 * 38470 + px[2] as u32 * 7471 + 0x8000)
                        >> 16;
                if l as f32 / 255.0 >= 0.5 {
                    1.0
                } else {
                    0.0
                }
            })
            .collect();
        Ok(
            Tensor::from_vec(values, (1, 1, self.height, self.width), &Device::Cpu)?
                .to_dtype(dtype)?
                .to_device(device)?,
        )
    }

    /// Converts decoded VAE output `[n, 3, h, w]` (about [-1, 1]) to images: (x / 2 + 0.5) clamped to [0, 1],
    /// times 255, rounded, as diffusers' postprocess does.
    pub fn from_decoded(decoded: &Tensor) -> Result<Vec<Self>> {
        let (n, c, h, w) = decoded.dims4()?;
        if c != 3 {
            return Err(Error::invalid(
                "decoded image",
                format!("{c} channels, expected 3"),
            ));
        }
        let values = ((decoded.to_dtype(DType::F32)? / 2.0)? + 0.5)?
            .clamp(0f32, 1f32)?
            .to_device(&Device::Cpu)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        Ok((0..n)
            .map(|b| {
                let base = b * 3 * h * w;
                let mut pixels = vec![0u8; 3 * h * w];
                for i in 0..h * w {
                    for ch in 0..3 {
                        let v = values[base + ch * h * w + i] * 255.0;
                        pixels[3 * i + ch] = v.round_ties_even() as u8;
                    }
                }
                Self {
                    width: w,
                    height: h,
                    pixels,
                }
            })
            .collect())
    }

    /// Encodes the image as PNG, with A1111's `parameters` tEXt chunk when `parameters` is given.
    pub fn to_png(&self, parameters: Option<&GenerationParameters>) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        {
            let mut encoder = png::Encoder::new(&mut out, self.width as u32, self.height as u32);
            encoder.set_color(png::ColorType::Rgb);
            encoder.set_depth(png::BitDepth::Eight);
            let png_error = |e: png::EncodingError| Error::invalid("png", e.to_string());
            if let Some(p) = parameters {
                let text = p.to_parameters_string();
                if text.is_ascii() {
                    encoder
                        .add_text_chunk("parameters".into(), text)
                        .map_err(png_error)?;
                } else {
                    encoder
                        .add_itxt_chunk("parameters".into(), text)
                        .map_err(png_error)?;
                }
            }
            let mut writer = encoder.write_header().map_err(png_error)?;
            writer.write_image_data(&self.pixels).map_err(png_error)?;
            writer.finish().map_err(png_error)?;
        }
        Ok(out)
    }

    /// Writes the image as a PNG file.
    pub fn save_png(&self, path: &Path, parameters: Option<&GenerationParameters>) -> Result<()> {
        let bytes = self.to_png(parameters)?;
        std::fs::write(path, bytes).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            cause: source,
        })
    }
}

/// Reads the `parameters` text (tEXt, zTXt or iTXt) of a PNG file, if it has one.
pub fn read_png_parameters(path: &Path) -> Result<Option<String>> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        cause: source,
    })?;
    png_parameters(&bytes).map_err(|e| match e {
        Error::InvalidArgument { name, message } => {
            Error::invalid(name, format!("{}: {message}", path.display()))
        }
        other => other,
    })
}

/// Reads the `parameters` text (tEXt, zTXt or iTXt) of PNG bytes, if there is one.
pub fn png_parameters(bytes: &[u8]) -> Result<Option<String>> {
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let reader = decoder
        .read_info()
        .map_err(|e| Error::invalid("image", format!("not a readable PNG ({e})")))?;
    let info = reader.info();
    if let Some(t) = info
        .uncompressed_latin1_text
        .iter()
        .find(|t| t.keyword == "parameters")
    {
        return Ok(Some(t.text.clone()));
    }
    if let Some(t) = info
        .compressed_latin1_text
        .iter()
        .find(|t| t.keyword == "parameters")
    {
        return Ok(t.get_text().ok());
    }
    if let Some(t) = info.utf8_text.iter().find(|t| t.keyword == "parameters") {
        return Ok(t.get_text().ok());
    }
    Ok(None)
}
