//! int8 matrix products on the AVX512-VNNI dot-product instruction (VPDPBUSD: 64 products of an unsigned by a
//! signed byte, summed four at a time into 16 i32 lanes): C (m × n, f32) is
//! `s_row[i] · s_col[j] · (A·B − comp[j]) + bias[j]`, where A holds quantized activations shifted by 128 (so that
//! they are unsigned) and B quantized weights packed once into panels; `comp[j] = 128 · Σ_k B[k, j]` takes the
//! shift back out. A is read in place: each row is a list of equally long segments at fixed offsets from the
//! row's base, so that a convolution's rows are read straight out of its padded channels-last input (an implicit
//! im2col) and a linear layer's rows are plain rows. Used only when the CPU reports AVX512-VNNI at run time.

use rayon::prelude::*;

use super::storage::SharedOut;

/// Columns of C per packed panel (four 16-lane vectors).
pub const NR: usize = 64;
/// Rows of C per micro-kernel call.
const MR: usize = 6;
/// Rows of C per task.
const MC: usize = MR * 8;
/// The most bytes of packed weights a task multiplies its rows by (they stay in the core's L2 cache).
const PANEL_BYTES: usize = 512 << 10;
/// The zero point of the activations' bytes: a quantized value q is stored as q + 128.
pub const ZERO_POINT: u8 = 128;

/// Whether this CPU has the AVX512-VNNI instructions (checked once).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| {
            is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vnni")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Weights quantized per output column (symmetric, to −127..=127) and packed into the kernel's panels: panel p
/// holds columns `p · NR..(p + 1) · NR`, four inner values per 32-bit lane (`[k / 4][NR]` lanes).
#[derive(Debug)]
pub struct PackedInt8 {
    panels: Vec<u32>,
    /// Inner dimension (a multiple of 4).
    k: usize,
    /// Columns.
    n: usize,
    /// Each column's scale: the weight is `scale · q` (zero past n).
    scale: Vec<f32>,
    /// `128 · Σ_k q[k, j]` (zero past n).
    comp: Vec<i32>,
}

impl PackedInt8 {
    /// Quantizes and packs `n` columns of `k` inner values (k a multiple of 4); `fill(j, column)` writes column j's
    /// values into `column` (`k` long, zeroed) in the order the rows of A are read.
    pub fn pack(n: usize, k: usize, fill: impl Fn(usize, &mut [f32]) + Sync) -> Self {
        assert!(
            k.is_multiple_of(4),
            "int8 gemm: inner dimension {k} is not a multiple of 4"
        );
        let size = k / 4 * NR;
        let panel_count = n.div_ceil(NR);
        let mut panels = vec![0u32; panel_count * size];
        // Scales and compensations padded to whole panels: the kernel reads them [`NR`] at a time.
        let mut scale = vec![0f32; panel_count * NR];
        let mut comp = vec![0i32; panel_count * NR];
        panels
            .par_chunks_mut(size)
            .zip(scale.par_chunks_mut(NR).zip(comp.par_chunks_mut(NR)))
            .enumerate()
            .for_each(|(p, (panel, (scale, comp)))| {
                let mut column = vec![0f32; k];
                for c in 0..NR.min(n - p * NR) {
                    column.fill(0.0);
                    fill(p * NR + c, &mut column);
                    let max = max_abs(&column);
                    let inv = if max > 0.0 { 127.0 / max } else { 0.0 };
                    let mut sum = 0i32;
                    for (kq, four) in column.as_chunks::<4>().0.iter().enumerate() {
                        let q = four.map(|v| (v * inv + 128.5).clamp(1.0, 255.0) as i32 - 128);
                        sum += q.iter().sum::<i32>();
                        panel[kq * NR + c] = u32::from_le_bytes(q.map(|v| v as i8 as u8));
                    }
                    scale[c] = max / 127.0;
                    comp[c] = i32::from(ZERO_POINT) * sum;
                }
            });
        Self {
            panels,
            k,
            n,
            scale,
            comp,
        }
    }
}

/// Where the rows of A lie in [`Rows::data`].
#[derive(Clone, Copy)]
pub enum RowBase {
    /// Row i starts at `i · stride`.
    Strided(usize),
    /// Row i is output pixel `(i / wo, i % wo)` of a convolution over a padded channels-last image whose rows
    /// are `wp` pixels of `channels` bytes, taken every `step` pixels.
    Pixels {
        /// Output pixels per row.
        wo: usize,
        /// Pixels per padded input row.
        wp: usize,
        /// Bytes per pixel.
        channels: usize,
        /// The convolution's stride.
        step: usize,
    },
}

impl RowBase {
    #[inline(always)]
    fn at(self, i: usize) -> usize {
        match self {
            Self::Strided(stride) => i * stride,
            Self::Pixels {
                wo,
                wp,
                channels,
                step,
            } => ((i / wo) * step * wp + (i % wo) * step) * channels,
        }
    }
}

/// The left operand: quantized activations (value + 128) with one scale per row.
pub struct Rows<'a> {
    /// The bytes.
    pub data: &'a [u8],
    /// Number of rows (of C).
    pub m: usize,
    /// Where each row starts.
    pub base: RowBase,
    /// The offsets of a row's segments from its start, in the inner dimension's order.
    pub segments: &'a [usize],
    /// Bytes per segment (a multiple of 4); `segments.len() · segment` is the inner dimension.
    pub segment: usize,
    /// Each row's scale: the activation is `scale · (byte − 128)`.
    pub scale: &'a [f32],
}

/// Where C's elements go: element (i, j) at `i · row_stride + j · col_stride` of the output.
#[derive(Clone, Copy)]
pub struct OutLayout {
    /// Distance between rows.
    pub row_stride: usize,
    /// Distance between columns.
    pub col_stride: usize,
}

/// C = A · B (dequantized) + bias into `out`, in parallel over (row group, column group).
pub fn run(
    a: &Rows,
    b: &PackedInt8,
    bias: Option<&[f32]>,
    layout: OutLayout,
    out: &mut [f32],
) -> candle_core::Result<()> {
    if !available() {
        candle_core::bail!("int8 gemm: this CPU has no AVX512-VNNI");
    }
    let (m, n) = (a.m, b.n);
    if a.segments.len() * a.segment != b.k || !a.segment.is_multiple_of(4) {
        candle_core::bail!(
            "int8 gemm: rows of {} segments of {} bytes against packed weights of inner dimension {}",
            a.segments.len(),
            a.segment,
            b.k
        );
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    let last_read = a.base.at(m - 1) + a.segments.iter().max().copied().unwrap_or(0) + a.segment;
    let last_write = (m - 1) * layout.row_stride + (n - 1) * layout.col_stride + 1;
    if last_read > a.data.len()
        || last_write > out.len()
        || a.scale.len() < m
        || bias.is_some_and(|bias| bias.len() < n)
    {
        candle_core::bail!("int8 gemm: views outside their buffers");
    }
    let panels = n.div_ceil(NR);
    let panels_per_group = (PANEL_BYTES / (b.k * NR).max(1)).clamp(1, panels);
    let column_groups = panels.div_ceil(panels_per_group);
    let row_groups = m.div_ceil(MC);
    // Tasks write disjoint elements: distinct (row group, column group) pairs.
    let shared = SharedOut::new(out);
    (0..row_groups * column_groups)
        .into_par_iter()
        .for_each(|task| {
            let (rg, cg) = (task / column_groups, task % column_groups);
            let rows = rg * MC..(rg * MC + MC).min(m);
            let first = cg * panels_per_group;
            let panel_range = first..(first + panels_per_group).min(panels);
            // SAFETY: VNNI was detected above; every row read and element written lies inside its buffer
            // (checked above) and this task's elements are written by no other task.
            unsafe { task_block(a, b, bias, layout, rows, panel_range, &shared) };
        });
    Ok(())
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn task_block(
    a: &Rows,
    b: &PackedInt8,
    bias: Option<&[f32]>,
    layout: OutLayout,
    rows: std::ops::Range<usize>,
    panels: std::ops::Range<usize>,
    out: &SharedOut<f32>,
) {
    let size = b.k / 4 * NR;
    let mut tile = [[0f32; NR]; MR];
    let mut panel_bias = vec![[0f32; NR]; panels.len()];
    if let Some(bias) = bias {
        for (pb, p) in panel_bias.iter_mut().zip(panels.clone()) {
            let j0 = p * NR;
            let cols = NR.min(b.n - j0);
            pb[..cols].copy_from_slice(&bias[j0..j0 + cols]);
        }
    }
    let mut i = rows.start;
    while i < rows.end {
        let mr = MR.min(rows.end - i);
        let mut starts = [a.data.as_ptr(); MR];
        let mut row_scale = [0f32; MR];
        for r in 0..mr {
            starts[r] = a.data.as_ptr().add(a.base.at(i + r));
            row_scale[r] = a.scale[i + r];
        }
        for (p, pb) in panels.clone().zip(&panel_bias) {
            let j0 = p * NR;
            let cols = NR.min(b.n - j0);
            let epilogue = Epilogue {
                row_scale,
                col_scale: b.scale.as_ptr().add(j0),
                comp: b.comp.as_ptr().add(j0),
                bias: pb.as_ptr(),
            };
            // Full-width panels of a row-major C are written in place; the rest go through the tile.
            let direct = layout.col_stride == 1 && cols == NR;
            let mut dst = [std::ptr::null_mut(); MR];
            for (r, d) in dst.iter_mut().enumerate().take(mr) {
                *d = if direct {
                    out.at((i + r) * layout.row_stride + j0)
                } else {
                    tile[r].as_mut_ptr()
                };
            }
            let panel = b.panels.as_ptr().add(p * size);
            match mr {
                6 => micro::<6>(&starts, a.segments, a.segment, panel, &epilogue, &dst),
                5 => micro::<5>(&starts, a.segments, a.segment, panel, &epilogue, &dst),
                4 => micro::<4>(&starts, a.segments, a.segment, panel, &epilogue, &dst),
                3 => micro::<3>(&starts, a.segments, a.segment, panel, &epilogue, &dst),
                2 => micro::<2>(&starts, a.segments, a.segment, panel, &epilogue, &dst),
                _ => micro::<1>(&starts, a.segments, a.segment, panel, &epilogue, &dst),
            }
            if direct {
                continue;
            }
            for (r, values) in tile.iter().enumerate().take(mr) {
                let start = (i + r) * layout.row_stride + j0 * layout.col_stride;
                for (c, &v) in values.iter().enumerate().take(cols) {
                    *out.at(start + c * layout.col_stride) = v;
                }
            }
        }
        i += mr;
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn task_block(
    _a: &Rows,
    _b: &PackedInt8,
    _bias: Option<&[f32]>,
    _layout: OutLayout,
    _rows: std::ops::Range<usize>,
    _panels: std::ops::Range<usize>,
    _out: &SharedOut<f32>,
) {
}

/// What turns a panel's i32 sums into C's values: `row_scale[r] · col_scale[c] · (sum − comp[c]) + bias[c]`,
/// the column arrays read [`NR`] at a time (padded).
struct Epilogue {
    row_scale: [f32; MR],
    col_scale: *const f32,
    comp: *const i32,
    bias: *const f32,
}

/// `dst[r][c] = epilogue(Σ_k A_r[k] · B[k, c])` for the first `R` rows and the [`NR`] columns of one packed
/// panel, each row of A read segment by segment from its start.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn micro<const R: usize>(
    starts: &[*const u8; MR],
    segments: &[usize],
    segment: usize,
    panel: *const u32,
    epilogue: &Epilogue,
    dst: &[*mut f32; MR],
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_si512(); 4]; R];
    let mut b_ptr = panel as *const __m512i;
    for &offset in segments {
        let mut kk = 0;
        while kk < segment {
            let bv = [
                _mm512_loadu_si512(b_ptr),
                _mm512_loadu_si512(b_ptr.add(1)),
                _mm512_loadu_si512(b_ptr.add(2)),
                _mm512_loadu_si512(b_ptr.add(3)),
            ];
            b_ptr = b_ptr.add(4);
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let four = (starts[r].add(offset + kk) as *const i32).read_unaligned();
                let av = _mm512_set1_epi32(four);
                for (acc_v, &b_v) in acc_r.iter_mut().zip(&bv) {
                    *acc_v = _mm512_dpbusd_epi32(*acc_v, av, b_v);
                }
            }
            kk += 4;
        }
    }
    for v in 0..4 {
        let comp = _mm512_loadu_si512(epilogue.comp.add(16 * v) as *const __m512i);
        let col_scale = _mm512_loadu_ps(epilogue.col_scale.add(16 * v));
        let bias = _mm512_loadu_ps(epilogue.bias.add(16 * v));
        for (r, acc_r) in acc.iter().enumerate() {
            let sum = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc_r[v], comp));
            let scale = _mm512_mul_ps(col_scale, _mm512_set1_ps(epilogue.row_scale[r]));
            _mm512_storeu_ps(dst[r].add(16 * v), _mm512_fmadd_ps(sum, scale, bias));
        }
    }
}

/// The largest absolute value of `values` (0 for none).
pub fn max_abs(values: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let mut chunks = values.chunks_exact(16);
    for chunk in &mut chunks {
        for (l, &v) in lanes.iter_mut().zip(chunk) {
            *l = l.max(v.abs());
        }
    }
    let tail = chunks.remainder().iter().fold(0f32, |m, v| m.max(v.abs()));
    lanes.iter().fold(tail, |m, &l| m.max(l))
}

/// Quantizes `values` into `dst`: value · `inv` (within ±127) rounded to nearest, halves up, plus 128. Written as a
/// truncating conversion of a positive number, which vectorizes on every x86 CPU (no rounding instruction or
/// library call).
#[inline]
pub fn quantize_into(values: &[f32], inv: f32, dst: &mut [u8]) {
    for (d, &v) in dst.iter_mut().zip(values) {
        *d = (v * inv + 128.5).clamp(1.0, 255.0) as u8;
    }
}
