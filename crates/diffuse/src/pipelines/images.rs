//! Images in and out of the pipelines: reading and resizing inputs, masks, tensors ↔ 8-bit RGB, and PNG, JPEG
//! and WebP files carrying AUTOMATIC1111's `parameters` text where A1111 puts it.

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
        self.save_as(path, ImageFormat::Png, parameters)
    }

    /// Writes the image in the format its file name asks for ([`ImageFormat::of_path`]), with the parameters
    /// where A1111 puts them in that format.
    pub fn save(&self, path: &Path, parameters: Option<&GenerationParameters>) -> Result<()> {
        self.save_as(path, ImageFormat::of_path(path)?, parameters)
    }

    fn save_as(
        &self,
        path: &Path,
        format: ImageFormat,
        parameters: Option<&GenerationParameters>,
    ) -> Result<()> {
        let bytes = self.encode(format, parameters)?;
        std::fs::write(path, bytes).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            cause: source,
        })
    }

    /// Encodes the image as `format`: PNG with a `parameters` text chunk; JPEG (quality 80, A1111's default)
    /// and lossless WebP with the parameters as the EXIF `UserComment`, as A1111 writes them.
    pub fn encode(
        &self,
        format: ImageFormat,
        parameters: Option<&GenerationParameters>,
    ) -> Result<Vec<u8>> {
        let encode_error = |e: image::ImageError| Error::invalid("image", e.to_string());
        let (w, h) = (self.width as u32, self.height as u32);
        let exif = parameters.map(|p| super::exif::user_comment_tiff(&p.to_parameters_string()));
        match format {
            ImageFormat::Png => self.to_png(parameters),
            ImageFormat::Jpeg => {
                let mut out = Vec::new();
                image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 80)
                    .encode(&self.pixels, w, h, image::ExtendedColorType::Rgb8)
                    .map_err(encode_error)?;
                match exif {
                    Some(tiff) => with_jpeg_exif(&out, &tiff),
                    None => Ok(out),
                }
            }
            ImageFormat::Webp => {
                let mut out = Vec::new();
                image::codecs::webp::WebPEncoder::new_lossless(&mut out)
                    .encode(&self.pixels, w, h, image::ExtendedColorType::Rgb8)
                    .map_err(encode_error)?;
                match exif {
                    Some(tiff) => with_webp_exif(&out, w, h, &tiff),
                    None => Ok(out),
                }
            }
        }
    }
}

/// The image file formats diffuse writes, each carrying the generation parameters where A1111 puts them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageFormat {
    /// PNG, parameters in a `parameters` text chunk.
    Png,
    /// JPEG, parameters in the EXIF `UserComment`.
    Jpeg,
    /// Lossless WebP, parameters in the EXIF `UserComment`.
    Webp,
}

impl ImageFormat {
    /// The format a file name asks for by its extension (`.png`, `.jpg`/`.jpeg`, `.webp`; PNG without one).
    pub fn of_path(path: &Path) -> Result<Self> {
        let extension = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase());
        match extension.as_deref() {
            None | Some("png") => Ok(Self::Png),
            Some("jpg" | "jpeg") => Ok(Self::Jpeg),
            Some("webp") => Ok(Self::Webp),
            Some(other) => Err(Error::invalid(
                "output",
                format!(
                    "{}: .{other} images are not written; use .png, .jpg or .webp",
                    path.display()
                ),
            )),
        }
    }
}

/// `jpeg` with an APP1 EXIF segment holding `tiff` right after its start-of-image marker.
fn with_jpeg_exif(jpeg: &[u8], tiff: &[u8]) -> Result<Vec<u8>> {
    let length = 2 + 6 + tiff.len();
    let length = u16::try_from(length).map_err(|_| {
        Error::invalid(
            "parameters",
            format!("{length} bytes of EXIF do not fit a JPEG segment (64 KiB); shorten the prompt or write PNG"),
        )
    })?;
    let mut out = Vec::with_capacity(jpeg.len() + length as usize + 2);
    out.extend_from_slice(&jpeg[..2]);
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(b"Exif\0\0");
    out.extend_from_slice(tiff);
    out.extend_from_slice(&jpeg[2..]);
    Ok(out)
}

/// A simple-format `webp` rewritten in the extended format with an EXIF chunk holding `tiff`.
fn with_webp_exif(webp: &[u8], width: u32, height: u32, tiff: &[u8]) -> Result<Vec<u8>> {
    let chunks = webp
        .get(12..)
        .filter(|_| webp.starts_with(b"RIFF") && webp.get(8..12) == Some(b"WEBP"))
        .ok_or_else(|| Error::invalid("image", "the WebP encoder wrote no RIFF container"))?;
    let mut body = b"WEBP".to_vec();
    // VP8X: the EXIF flag, then the canvas size minus one, 24 bits each.
    body.extend_from_slice(b"VP8X");
    body.extend_from_slice(&10u32.to_le_bytes());
    body.extend_from_slice(&[0x08, 0, 0, 0]);
    body.extend_from_slice(&(width - 1).to_le_bytes()[..3]);
    body.extend_from_slice(&(height - 1).to_le_bytes()[..3]);
    body.extend_from_slice(chunks);
    body.extend_from_slice(b"EXIF");
    body.extend_from_slice(&(tiff.len() as u32).to_le_bytes());
    body.extend_from_slice(tiff);
    if tiff.len() % 2 == 1 {
        body.push(0);
    }
    let mut out = b"RIFF".to_vec();
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend(body);
    Ok(out)
}

/// Reads the generation parameters of an image file: a PNG's `parameters` text, or a JPEG's or WebP's EXIF
/// `UserComment` (as A1111 writes them).
pub fn read_image_parameters(path: &Path) -> Result<Option<String>> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        cause: source,
    })?;
    image_parameters(&bytes).map_err(|e| match e {
        Error::InvalidArgument { name, message } => {
            Error::invalid(name, format!("{}: {message}", path.display()))
        }
        other => other,
    })
}

/// The generation parameters of an encoded PNG, JPEG or WebP image, if it has them.
pub fn image_parameters(bytes: &[u8]) -> Result<Option<String>> {
    if bytes.starts_with(b"\x89PNG") {
        png_parameters(bytes)
    } else if bytes.starts_with(&[0xFF, 0xD8]) {
        Ok(jpeg_exif(bytes).and_then(super::exif::user_comment))
    } else if bytes.starts_with(b"RIFF") && bytes.get(8..12) == Some(b"WEBP") {
        Ok(webp_exif(bytes).and_then(super::exif::user_comment))
    } else {
        Err(Error::invalid(
            "image",
            "not a PNG, JPEG or WebP image (the formats that carry generation parameters)",
        ))
    }
}

/// The EXIF block of a JPEG (its APP1 "Exif" segment), if it has one.
fn jpeg_exif(jpeg: &[u8]) -> Option<&[u8]> {
    let mut at = 2;
    while let (Some(&0xFF), Some(&marker)) = (jpeg.get(at), jpeg.get(at + 1)) {
        // Start of scan: the entropy-coded data follows, and no metadata segment after it matters.
        if marker == 0xDA {
            return None;
        }
        let length = u16::from_be_bytes([*jpeg.get(at + 2)?, *jpeg.get(at + 3)?]) as usize;
        let segment = jpeg.get(at + 4..at + 2 + length)?;
        if marker == 0xE1 && segment.starts_with(b"Exif\0\0") {
            return Some(segment);
        }
        at += 2 + length;
    }
    None
}

/// The EXIF chunk of a WebP, if it has one.
fn webp_exif(webp: &[u8]) -> Option<&[u8]> {
    let mut at = 12;
    while let Some(header) = webp.get(at..at + 8) {
        let size = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
        let data = webp.get(at + 8..at + 8 + size)?;
        if &header[..4] == b"EXIF" {
            return Some(data);
        }
        at += 8 + size + size % 2;
    }
    None
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
