//! The procedural captioned image set: one shape (circle, square, triangle, star) of some color, size and
//! position on a plain background, with captions such as "a small red circle at the top left on a blue
//! background". A fixed tenth of the (shape, color, position, background) combinations never appears in
//! training ([`ShapeSpec::is_held_out`]), so a test can ask for combinations the model has not seen.

use diffuse::pipelines::RgbImage;

/// The shapes, in caption order.
pub const SHAPES: [Shape; 4] = [Shape::Circle, Shape::Square, Shape::Triangle, Shape::Star];

/// A shape kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Shape {
    /// A disc.
    Circle,
    /// An axis-aligned square.
    Square,
    /// An equilateral triangle pointing up.
    Triangle,
    /// A five-pointed star pointing up.
    Star,
}

impl Shape {
    /// The caption word.
    pub fn name(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
            Shape::Star => "star",
        }
    }

    /// Whether the point (`x`, `y`), relative to the shape's center in units of its radius (y down), is inside.
    pub fn contains(self, x: f32, y: f32) -> bool {
        match self {
            Shape::Circle => x * x + y * y <= 1.0,
            Shape::Square => x.abs() <= SQUARE_HALF && y.abs() <= SQUARE_HALF,
            Shape::Triangle => inside_polygon(&polygon(3, OUTER, None), x, y),
            Shape::Star => inside_polygon(&polygon(5, OUTER, Some(OUTER * STAR_INNER)), x, y),
        }
    }
}

/// Half the side of a square, in radii (its area is close to the circle's).
const SQUARE_HALF: f32 = 0.88;
/// The circumradius of the triangle and the star, in radii.
const OUTER: f32 = 1.25;
/// The star's inner radius over its outer radius.
const STAR_INNER: f32 = 0.5;

/// The vertices of a regular polygon (or a star, with an inner radius) pointing up, centered at 0.
fn polygon(points: usize, outer: f32, inner: Option<f32>) -> Vec<(f32, f32)> {
    let step = std::f32::consts::PI * 2.0 / points as f32;
    let mut vertices = Vec::new();
    for i in 0..points {
        let angle = -std::f32::consts::FRAC_PI_2 + step * i as f32;
        vertices.push((outer * angle.cos(), outer * angle.sin()));
        if let Some(r) = inner {
            let mid = angle + step / 2.0;
            vertices.push((r * mid.cos(), r * mid.sin()));
        }
    }
    vertices
}

/// Even-odd rule point-in-polygon test.
fn inside_polygon(vertices: &[(f32, f32)], x: f32, y: f32) -> bool {
    let mut inside = false;
    let mut j = vertices.len() - 1;
    for i in 0..vertices.len() {
        let (xi, yi) = vertices[i];
        let (xj, yj) = vertices[j];
        if (yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi {
            inside = !inside;
        }
        j = i;
    }
    inside
}

/// The palette: caption word and sRGB color.
pub const COLORS: [(&str, [u8; 3]); 8] = [
    ("red", [220, 40, 40]),
    ("orange", [245, 140, 30]),
    ("yellow", [240, 220, 40]),
    ("green", [40, 170, 60]),
    ("blue", [40, 80, 220]),
    ("purple", [140, 60, 190]),
    ("white", [245, 245, 245]),
    ("black", [20, 20, 20]),
];

/// Where the shape sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Position {
    /// Centered in the top-left quadrant.
    TopLeft,
    /// Centered in the top-right quadrant.
    TopRight,
    /// Centered in the bottom-left quadrant.
    BottomLeft,
    /// Centered in the bottom-right quadrant.
    BottomRight,
    /// In the middle of the image.
    Center,
}

/// The positions, in index order.
pub const POSITIONS: [Position; 5] = [
    Position::TopLeft,
    Position::TopRight,
    Position::BottomLeft,
    Position::BottomRight,
    Position::Center,
];

impl Position {
    /// The caption phrase ("at the top left", "in the center").
    pub fn phrase(self) -> &'static str {
        match self {
            Position::TopLeft => "at the top left",
            Position::TopRight => "at the top right",
            Position::BottomLeft => "at the bottom left",
            Position::BottomRight => "at the bottom right",
            Position::Center => "in the center",
        }
    }

    /// The shape's center as fractions of the width and height.
    pub fn center(self) -> (f32, f32) {
        match self {
            Position::TopLeft => (0.28, 0.28),
            Position::TopRight => (0.72, 0.28),
            Position::BottomLeft => (0.28, 0.72),
            Position::BottomRight => (0.72, 0.72),
            Position::Center => (0.5, 0.5),
        }
    }
}

/// One image's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ShapeSpec {
    /// The shape.
    pub shape: Shape,
    /// Index into [`COLORS`] of the shape's color.
    pub color: usize,
    /// Index into [`COLORS`] of the background; never the shape's color.
    pub background: usize,
    /// Where the shape is.
    pub position: Position,
    /// `true` for "large", `false` for "small".
    pub large: bool,
}

/// Which parts of the full caption to leave out (the image still shows them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CaptionParts {
    /// Leave out "small"/"large".
    pub drop_size: bool,
    /// Leave out the shape's color.
    pub drop_color: bool,
    /// Leave out the position phrase.
    pub drop_position: bool,
    /// Leave out "on a … background".
    pub drop_background: bool,
}

impl ShapeSpec {
    /// The radius as a fraction of the image side.
    pub fn radius(&self) -> f32 {
        if self.large {
            0.21
        } else {
            0.14
        }
    }

    /// The full caption: "a small red circle at the top left on a blue background".
    pub fn caption(&self) -> String {
        self.caption_with(CaptionParts::default())
    }

    /// The caption without the parts `parts` leaves out.
    pub fn caption_with(&self, parts: CaptionParts) -> String {
        let mut words = vec!["a"];
        if !parts.drop_size {
            words.push(if self.large { "large" } else { "small" });
        }
        if !parts.drop_color {
            words.push(COLORS[self.color].0);
        }
        words.push(self.shape.name());
        if !parts.drop_position {
            words.push(self.position.phrase());
        }
        if !parts.drop_background {
            words.extend(["on a", COLORS[self.background].0, "background"]);
        }
        words.join(" ")
    }

    /// Whether this (shape, color, position, background) combination is kept out of training.
    pub fn is_held_out(&self) -> bool {
        let shape = SHAPES.iter().position(|&s| s == self.shape).unwrap_or(0) as u64;
        let position = POSITIONS
            .iter()
            .position(|&p| p == self.position)
            .unwrap_or(0) as u64;
        let combo = ((shape * 8 + self.color as u64) * 5 + position) * 8 + self.background as u64;
        splitmix64(combo ^ 0x5eed_5eed).is_multiple_of(10)
    }

    /// Renders the spec at `size`×`size` with 4×4 supersampling; `jitter` (each in [-1, 1]) moves the center
    /// by up to 3 % of the side and scales the radius by up to ±8 %.
    pub fn render(&self, size: usize, jitter: [f32; 3]) -> RgbImage {
        let (cx, cy) = self.position.center();
        let s = size as f32;
        let cx = (cx + 0.03 * jitter[0]) * s;
        let cy = (cy + 0.03 * jitter[1]) * s;
        let r = self.radius() * (1.0 + 0.08 * jitter[2]) * s;
        let fg = COLORS[self.color].1;
        let bg = COLORS[self.background].1;
        let mut pixels = Vec::with_capacity(size * size * 3);
        const SUB: usize = 4;
        for py in 0..size {
            for px in 0..size {
                let mut hits = 0;
                for sy in 0..SUB {
                    for sx in 0..SUB {
                        let x = px as f32 + (sx as f32 + 0.5) / SUB as f32;
                        let y = py as f32 + (sy as f32 + 0.5) / SUB as f32;
                        if self.shape.contains((x - cx) / r, (y - cy) / r) {
                            hits += 1;
                        }
                    }
                }
                let a = hits as f32 / (SUB * SUB) as f32;
                for c in 0..3 {
                    let v = a * fg[c] as f32 + (1.0 - a) * bg[c] as f32;
                    pixels.push(v.round() as u8);
                }
            }
        }
        RgbImage {
            width: size,
            height: size,
            pixels,
        }
    }

    /// Every combination (both sizes) kept out of training, in a fixed order.
    pub fn held_out() -> Vec<ShapeSpec> {
        let mut all = Vec::new();
        for shape in SHAPES {
            for color in 0..COLORS.len() {
                for position in POSITIONS {
                    for background in (0..COLORS.len()).filter(|&b| b != color) {
                        for large in [true, false] {
                            let spec = ShapeSpec {
                                shape,
                                color,
                                background,
                                position,
                                large,
                            };
                            if spec.is_held_out() {
                                all.push(spec);
                            }
                        }
                    }
                }
            }
        }
        all
    }
}

/// The SplitMix64 finalizer: a well-mixed 64-bit hash.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A deterministic stream of numbers from one seed (SplitMix64).
#[derive(Debug, Clone)]
pub struct SplitMix {
    state: u64,
}

impl SplitMix {
    /// A stream starting at `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        splitmix64(self.state)
    }

    /// A uniform integer in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// A uniform float in [0, 1).
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// The procedural data set: `len` images of `size`×`size` pixels, item `i` drawn from `seed` and `i` alone.
#[derive(Debug, Clone)]
pub struct ShapesDataset {
    len: usize,
    size: usize,
    seed: u64,
}

/// The probability that each optional caption part is left out of a training caption.
const DROP_PART: f32 = 0.15;

impl ShapesDataset {
    /// `len` items at `size` pixels, from `seed`.
    pub fn new(len: usize, size: usize, seed: u64) -> Self {
        Self { len, size, seed }
    }

    /// The number of items.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The image side in pixels.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The content, caption parts and jitter of item `index` (never a held-out combination).
    pub fn spec(&self, index: usize) -> (ShapeSpec, CaptionParts, [f32; 3]) {
        let mut rng = SplitMix::new(splitmix64(self.seed ^ splitmix64(index as u64)));
        let spec = loop {
            let color = rng.below(COLORS.len());
            let background = (color + 1 + rng.below(COLORS.len() - 1)) % COLORS.len();
            let spec = ShapeSpec {
                shape: SHAPES[rng.below(SHAPES.len())],
                color,
                background,
                position: POSITIONS[rng.below(POSITIONS.len())],
                large: rng.below(2) == 1,
            };
            if !spec.is_held_out() {
                break spec;
            }
        };
        let parts = CaptionParts {
            drop_size: rng.unit() < DROP_PART,
            drop_color: rng.unit() < DROP_PART,
            drop_position: rng.unit() < DROP_PART,
            drop_background: rng.unit() < DROP_PART,
        };
        let jitter = [0; 3].map(|_: i32| rng.unit() * 2.0 - 1.0);
        (spec, parts, jitter)
    }

    /// Item `index`: the rendered image and its caption.
    pub fn get(&self, index: usize) -> (RgbImage, String) {
        let (spec, parts, jitter) = self.spec(index);
        (spec.render(self.size, jitter), spec.caption_with(parts))
    }
}
