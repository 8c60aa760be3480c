//! User training data: a folder of captioned images, either `name.png` next to `name.txt`, or images listed
//! in a `metadata.jsonl` as diffusers' ImageFolder reads them (`{"file_name": "a.png", "text": "…"}` per
//! line). Images are resized (the short side to the training resolution) and center-cropped.

use std::path::{Path, PathBuf};

use image::imageops::FilterType;

use diffuse::pipelines::RgbImage;
use diffuse::{Error, Result};

/// File extensions read as images.
pub const IMAGE_EXTENSIONS: [&str; 6] = ["png", "jpg", "jpeg", "webp", "bmp", "tiff"];

/// A folder of captioned images.
#[derive(Debug, Clone)]
pub struct ImageFolder {
    root: PathBuf,
    items: Vec<(PathBuf, String)>,
    resolution: usize,
}

fn io_error(path: &Path, cause: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        cause,
    }
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

impl ImageFolder {
    /// Lists the captioned images in `root`, to be served at `resolution`×`resolution` pixels.
    ///
    /// Errors: the folder is missing or unreadable, holds no images, an image has no caption (no `.txt` next to
    /// it, or no line in `metadata.jsonl`), or `metadata.jsonl` is malformed or names a missing file.
    pub fn open(root: &Path, resolution: usize) -> Result<Self> {
        let metadata = root.join("metadata.jsonl");
        let items = if metadata.is_file() {
            read_metadata(root, &metadata)?
        } else {
            read_pairs(root)?
        };
        if items.is_empty() {
            return Err(Error::invalid(
                "data",
                format!(
                    "{}: no images found (expected {} files each with a .txt caption, or a metadata.jsonl)",
                    root.display(),
                    IMAGE_EXTENSIONS.join("/")
                ),
            ));
        }
        Ok(Self {
            root: root.to_path_buf(),
            items,
            resolution,
        })
    }

    /// The folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The side of the square images served, in pixels.
    pub fn resolution(&self) -> usize {
        self.resolution
    }

    /// The number of images.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether the folder has no images (never true for an opened folder).
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Image `index`, resized and center-cropped, with its caption.
    pub fn get(&self, index: usize) -> Result<(RgbImage, String)> {
        let (path, caption) = self.items.get(index).ok_or_else(|| {
            Error::invalid(
                "index",
                format!("{index} is out of range (0..{})", self.items.len()),
            )
        })?;
        let image = RgbImage::open(path, "training image")?;
        Ok((resize_center_crop(&image, self.resolution), caption.clone()))
    }
}

/// Every image in `root` with its `.txt` caption (same stem), sorted by file name.
fn read_pairs(root: &Path) -> Result<Vec<(PathBuf, String)>> {
    let entries = std::fs::read_dir(root).map_err(|e| io_error(root, e))?;
    let mut images = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| io_error(root, e))?.path();
        if path.is_file() && is_image(&path) {
            images.push(path);
        }
    }
    images.sort();
    images
        .into_iter()
        .map(|image| {
            let caption_path = image.with_extension("txt");
            if !caption_path.is_file() {
                return Err(Error::invalid(
                    "data",
                    format!(
                        "{}: the image has no caption (expected {})",
                        image.display(),
                        caption_path.display()
                    ),
                ));
            }
            let caption =
                std::fs::read_to_string(&caption_path).map_err(|e| io_error(&caption_path, e))?;
            Ok((image, caption.trim().to_string()))
        })
        .collect()
}

/// The images listed in `metadata.jsonl`, in file order.
fn read_metadata(root: &Path, metadata: &Path) -> Result<Vec<(PathBuf, String)>> {
    let text = std::fs::read_to_string(metadata).map_err(|e| io_error(metadata, e))?;
    let mut items = Vec::new();
    for (number, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let json_error = |message: String| Error::Json {
            path: metadata.to_path_buf(),
            message: format!("line {}: {message}", number + 1),
        };
        let value: serde_json::Value =
            serde_json::from_str(line).map_err(|e| json_error(e.to_string()))?;
        let file_name = value
            .get("file_name")
            .and_then(|v| v.as_str())
            .ok_or_else(|| json_error("no string `file_name`".into()))?;
        let caption = ["text", "caption"]
            .iter()
            .find_map(|key| value.get(*key).and_then(|v| v.as_str()))
            .ok_or_else(|| {
                json_error(format!(
                    "`{file_name}` has no caption (a string `text` or `caption`)"
                ))
            })?;
        let path = root.join(file_name);
        if !path.is_file() {
            return Err(json_error(format!(
                "`{file_name}`: no such file in {}",
                root.display()
            )));
        }
        items.push((path, caption.trim().to_string()));
    }
    Ok(items)
}

/// Scales `image` so that its short side is `size` (bilinear), then crops the central `size`×`size` square.
pub fn resize_center_crop(image: &RgbImage, size: usize) -> RgbImage {
    let (w, h) = (image.width.max(1), image.height.max(1));
    let scale = size as f64 / w.min(h) as f64;
    let nw = ((w as f64 * scale).round() as usize).max(size);
    let nh = ((h as f64 * scale).round() as usize).max(size);
    let Some(buffer) = image::RgbImage::from_raw(w as u32, h as u32, image.pixels.clone()) else {
        return image.clone();
    };
    let resized = if (nw, nh) == (w, h) {
        buffer
    } else {
        image::imageops::resize(&buffer, nw as u32, nh as u32, FilterType::Triangle)
    };
    let left = (nw - size) / 2;
    let top = (nh - size) / 2;
    let cropped =
        image::imageops::crop_imm(&resized, left as u32, top as u32, size as u32, size as u32)
            .to_image();
    RgbImage {
        width: size,
        height: size,
        pixels: cropped.into_raw(),
    }
}
