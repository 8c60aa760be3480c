//! Reads a generated shapes image back into (shape, color, background, position) with plain image statistics:
//! a color histogram over the palette for the background, a soft foreground mask for the shape's color, the
//! mask's centroid for the position, and its moments (fill of the bounding box, height of the centroid in
//! it) for the shape.
#![allow(dead_code)]

use diffuse::pipelines::RgbImage;
use diffuse_train::shapes::{Position, Shape, COLORS, POSITIONS, SHAPES};

/// What the judge sees in an image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    /// Index into `COLORS` of the most common palette color.
    pub background: usize,
    /// Index into `COLORS` of the foreground's mean color, or `None` when there is no foreground.
    pub color: Option<usize>,
    /// The position class nearest to the foreground's centroid.
    pub position: Option<Position>,
    /// The shape class nearest to the foreground's moments.
    pub shape: Option<Shape>,
    /// Foreground area over bounding-box area.
    pub fill: f32,
    /// Height of the foreground's centroid in its bounding box (0 top, 1 bottom).
    pub centroid_height: f32,
    /// Foreground area in pixels.
    pub area: f32,
}

fn distance2(a: [f32; 3], b: [f32; 3]) -> f32 {
    (0..3).map(|i| (a[i] - b[i]).powi(2)).sum()
}

fn palette(i: usize) -> [f32; 3] {
    COLORS[i].1.map(f32::from)
}

fn nearest_color(rgb: [f32; 3], excluding: Option<usize>) -> usize {
    (0..COLORS.len())
        .filter(|&i| Some(i) != excluding)
        .min_by(|&a, &b| distance2(rgb, palette(a)).total_cmp(&distance2(rgb, palette(b))))
        .unwrap_or(0)
}

fn pixel(image: &RgbImage, i: usize) -> [f32; 3] {
    [0, 1, 2].map(|c| image.pixels[3 * i + c] as f32)
}

/// (fill, centroid height) of each shape as the training images show it at 32×32 (measured over rendered
/// images; exact shapes would give circle π/4, square 1, triangle 1/2 at 2/3, star 0.43 at 0.55).
fn templates() -> [(Shape, f32, f32); 4] {
    [
        (Shape::Circle, 0.79, 0.5),
        (Shape::Square, 1.0, 0.5),
        (Shape::Triangle, 0.57, 0.655),
        (Shape::Star, 0.52, 0.554),
    ]
}

/// Reads `image`.
pub fn read(image: &RgbImage) -> Reading {
    let n = image.width * image.height;
    let mut votes = [0usize; COLORS.len()];
    for i in 0..n {
        votes[nearest_color(pixel(image, i), None)] += 1;
    }
    let background = (0..COLORS.len()).max_by_key(|&c| votes[c]).unwrap_or(0);
    let mut bg_sum = [0f32; 3];
    let mut bg_count = 0f32;
    for i in 0..n {
        let p = pixel(image, i);
        if nearest_color(p, None) == background {
            (0..3).for_each(|c| bg_sum[c] += p[c]);
            bg_count += 1.0;
        }
    }
    let bg = bg_sum.map(|s| s / bg_count.max(1.0));
    // The foreground color: the mean of the pixels clearly away from the background.
    let far: Vec<usize> = (0..n)
        .filter(|&i| distance2(pixel(image, i), bg) > 70f32.powi(2))
        .collect();
    let empty = Reading {
        background,
        color: None,
        position: None,
        shape: None,
        fill: 0.0,
        centroid_height: 0.0,
        area: 0.0,
    };
    if far.len() < 4 {
        return empty;
    }
    let mut fg = [0f32; 3];
    for &i in &far {
        let p = pixel(image, i);
        (0..3).for_each(|c| fg[c] += p[c] / far.len() as f32);
    }
    let color = nearest_color(fg, Some(background));
    // Soft mask: each pixel's position between the background and the foreground color.
    let axis = [0, 1, 2].map(|c| fg[c] - bg[c]);
    let norm2 = distance2(fg, bg).max(1.0);
    let closeness: Vec<f32> = (0..n)
        .map(|i| {
            let p = pixel(image, i);
            let t: f32 = (0..3).map(|c| (p[c] - bg[c]) * axis[c]).sum::<f32>() / norm2;
            t.clamp(0.0, 1.0)
        })
        .collect();
    // The shape is the largest 4-connected region of pixels nearer the foreground color, with the pixels
    // around it (its anti-aliased edge); stray specks elsewhere are ignored.
    let region = largest_region(&closeness, image.width, image.height);
    if region.len() < 4 {
        return empty;
    }
    let mut weights = vec![0f32; n];
    for &i in &region {
        let (col, row) = ((i % image.width) as isize, (i / image.width) as isize);
        for dy in -1..=1 {
            for dx in -1..=1 {
                let (x, y) = (col + dx, row + dy);
                if x >= 0 && y >= 0 && (x as usize) < image.width && (y as usize) < image.height {
                    let j = y as usize * image.width + x as usize;
                    weights[j] = closeness[j];
                }
            }
        }
    }
    let (w, h) = (image.width as f32, image.height as f32);
    let area: f32 = weights.iter().sum();
    let (mut cx, mut cy) = (0f32, 0f32);
    let mut column_max = vec![0f32; image.width];
    let mut row_max = vec![0f32; image.height];
    for (i, &wt) in weights.iter().enumerate() {
        let (col, row) = (i % image.width, i / image.width);
        cx += wt * (col as f32 + 0.5) / area;
        cy += wt * (row as f32 + 0.5) / area;
        column_max[col] = column_max[col].max(wt);
        row_max[row] = row_max[row].max(wt);
    }
    let top = row_max
        .iter()
        .position(|&m| m > 0.0)
        .map_or(0.0, |r| r as f32 + 1.0 - row_max[r]);
    // The bounding box's sides, to sub-pixel precision: the sum of each column's (row's) largest weight.
    let width: f32 = column_max.iter().sum();
    let height: f32 = row_max.iter().sum();
    if width < 1.0 || height < 1.0 {
        return empty;
    }
    let fill = area / (width * height);
    let centroid_height = (cy - top) / height;
    let position = POSITIONS.iter().copied().min_by(|a, b| {
        let d = |p: &Position| {
            let (px, py) = p.center();
            (px - cx / w).powi(2) + (py - cy / h).powi(2)
        };
        d(a).total_cmp(&d(b))
    });
    let shape = templates()
        .iter()
        .min_by(|a, b| {
            let d = |t: &(Shape, f32, f32)| {
                ((fill - t.1) / 0.1).powi(2) + ((centroid_height - t.2) / 0.05).powi(2)
            };
            d(a).total_cmp(&d(b))
        })
        .map(|t| t.0);
    debug_assert!(SHAPES.len() == templates().len());
    Reading {
        background,
        color: Some(color),
        position,
        shape,
        fill,
        centroid_height,
        area,
    }
}

/// The pixel indices of the largest 4-connected region where `closeness` exceeds ½.
fn largest_region(closeness: &[f32], width: usize, height: usize) -> Vec<usize> {
    let mut seen = vec![false; closeness.len()];
    let mut best = Vec::new();
    for start in 0..closeness.len() {
        if seen[start] || closeness[start] <= 0.5 {
            continue;
        }
        seen[start] = true;
        let mut region = vec![start];
        let mut next = 0;
        while next < region.len() {
            let i = region[next];
            next += 1;
            let (x, y) = (i % width, i / width);
            let neighbours = [
                (x > 0).then(|| i - 1),
                (x + 1 < width).then(|| i + 1),
                (y > 0).then(|| i - width),
                (y + 1 < height).then(|| i + width),
            ];
            for j in neighbours.into_iter().flatten() {
                if !seen[j] && closeness[j] > 0.5 {
                    seen[j] = true;
                    region.push(j);
                }
            }
        }
        if region.len() > best.len() {
            best = region;
        }
    }
    best
}

/// The fraction of pixels nearer to the palette's red than to any other palette color.
pub fn red_fraction(image: &RgbImage) -> f32 {
    let n = image.width * image.height;
    let red = (0..n)
        .filter(|&i| nearest_color(pixel(image, i), None) == 0)
        .count();
    red as f32 / n as f32
}

/// The pixels of `image` far from its most common palette color (its foreground), as a mask.
fn foreground(image: &RgbImage) -> Vec<bool> {
    let background = palette(read(image).background);
    (0..image.width * image.height)
        .map(|i| distance2(pixel(image, i), background) > 70f32.powi(2))
        .collect()
}

/// The intersection over union of the foregrounds of two images of the same size.
pub fn mask_overlap(a: &RgbImage, b: &RgbImage) -> f32 {
    let (ma, mb) = (foreground(a), foreground(b));
    let both = ma.iter().zip(&mb).filter(|(x, y)| **x && **y).count();
    let either = ma.iter().zip(&mb).filter(|(x, y)| **x || **y).count();
    both as f32 / either.max(1) as f32
}
