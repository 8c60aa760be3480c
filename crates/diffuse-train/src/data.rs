//! Training data: the procedural shapes set or a folder of captioned images, served as pixel tensors.

use std::path::Path;

use candle_core::{Device, Tensor};

use super::folder::ImageFolder;
use super::shapes::ShapesDataset;
use diffuse::pipelines::RgbImage;
use diffuse::{Error, Result};

/// How many procedural images the data spec `shapes` means.
pub const DEFAULT_SHAPES_COUNT: usize = 20_000;

/// Where training images and captions come from.
#[derive(Debug, Clone)]
pub enum TrainingData {
    /// The procedural shapes set.
    Shapes(ShapesDataset),
    /// A folder of captioned images.
    Folder(ImageFolder),
}

impl TrainingData {
    /// Parses a data spec: `shapes` or `shapes:COUNT` for the procedural set (drawn from `seed`), otherwise a
    /// folder of captioned images; images are served at `resolution`×`resolution`.
    pub fn from_spec(spec: &str, resolution: usize, seed: u64) -> Result<Self> {
        let path = Path::new(spec);
        if !path.exists() {
            if let Some(rest) = spec.strip_prefix("shapes") {
                let count = match rest.strip_prefix(':') {
                    None if rest.is_empty() => DEFAULT_SHAPES_COUNT,
                    Some(n) => n.parse::<usize>().ok().filter(|&n| n > 0).ok_or_else(|| {
                        Error::invalid(
                            "data",
                            format!("{spec:?}: expected shapes:COUNT with a positive COUNT"),
                        )
                    })?,
                    None => return Err(missing_folder(spec)),
                };
                return Ok(TrainingData::Shapes(ShapesDataset::new(
                    count, resolution, seed,
                )));
            }
            return Err(missing_folder(spec));
        }
        if !path.is_dir() {
            return Err(Error::invalid(
                "data",
                format!(
                    "{spec}: not a folder (expected a folder of captioned images, or `shapes`)"
                ),
            ));
        }
        Ok(TrainingData::Folder(ImageFolder::open(path, resolution)?))
    }

    /// The number of items.
    pub fn len(&self) -> usize {
        match self {
            TrainingData::Shapes(s) => s.len(),
            TrainingData::Folder(f) => f.len(),
        }
    }

    /// Whether there are no items.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The side of the square images served, in pixels.
    pub fn resolution(&self) -> usize {
        match self {
            TrainingData::Shapes(s) => s.size(),
            TrainingData::Folder(f) => f.resolution(),
        }
    }

    /// Item `index`: the image at the training resolution and its caption.
    pub fn get(&self, index: usize) -> Result<(RgbImage, String)> {
        match self {
            TrainingData::Shapes(s) => Ok(s.get(index)),
            TrainingData::Folder(f) => f.get(index),
        }
    }

    /// A one-line description for progress output.
    pub fn describe(&self) -> String {
        match self {
            TrainingData::Shapes(s) => format!(
                "{} procedural shapes images at {}×{}",
                s.len(),
                s.size(),
                s.size()
            ),
            TrainingData::Folder(f) => format!("{} images from {}", f.len(), f.root().display()),
        }
    }

    /// Items `indices` as a `[n, 3, h, w]` tensor in [-1, 1] and their captions.
    pub fn batch(&self, indices: &[usize], device: &Device) -> Result<(Tensor, Vec<String>)> {
        let mut images = Vec::with_capacity(indices.len());
        let mut captions = Vec::with_capacity(indices.len());
        for &i in indices {
            let (image, caption) = self.get(i)?;
            images.push(image.to_tensor(device, candle_core::DType::F32)?);
            captions.push(caption);
        }
        Ok((Tensor::cat(&images, 0)?, captions))
    }
}

fn missing_folder(spec: &str) -> Error {
    Error::Io {
        path: spec.into(),
        cause: std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no such data folder (use `shapes` or `shapes:COUNT` for the procedural set)",
        ),
    }
}
