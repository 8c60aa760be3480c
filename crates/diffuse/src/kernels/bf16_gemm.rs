//! bf16 matrix products on the AVX512-BF16 dot-product instruction (VDPBF16PS: 32 bf16 products summed
//! pairwise into 16 f32 lanes), f32 accumulation: C (m × n) = A (m × k) · B (k × n), A row-major with k even,
//! B supplied panel by panel by a packer that interleaves row pairs ("VNNI" order). Each task packs one panel
//! once and multiplies every row of its row group by it. Used only when the CPU reports `avx512bf16` at run
//! time; callers fall back to f32 arithmetic otherwise.

use half::bf16;
use rayon::prelude::*;

use super::storage::{Elem, SharedOut};

/// Columns of C per packed panel (four 16-lane vectors).
pub const NR: usize = 64;
/// Rows of C per micro-kernel call.
const MR: usize = 6;
/// The fewest rows of C a task multiplies by its panel (so that a panel is packed at most once per this many
/// rows).
const MC: usize = MR * 32;
/// Tasks per thread the row groups aim at, for load balance.
const TASKS_PER_THREAD: usize = 8;

/// Whether this CPU has the AVX512-BF16 instructions (checked once).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| {
            is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The bias added to C: one value per row or one per column.
#[derive(Clone, Copy)]
pub enum Bias<'a> {
    /// No bias.
    None,
    /// `bias[i]` added to row i.
    Rows(&'a [f32]),
    /// `bias[j]` added to column j.
    Cols(&'a [f32]),
}

/// One batched product: for each batch item b, C_b = A_b · B_b where A_b starts at `b · a_batch_stride` (0:
/// shared), C_b at `b · c_batch_stride` with row stride `c_rs` and unit column stride.
pub struct Problem<'a> {
    /// Rows of C.
    pub m: usize,
    /// Columns of C.
    pub n: usize,
    /// Inner dimension (even).
    pub k: usize,
    /// Batch items.
    pub batch: usize,
    /// A, row-major with row stride k.
    pub a: &'a [bf16],
    /// Distance between batch items of A (0 when shared).
    pub a_batch_stride: usize,
    /// Row stride of C.
    pub c_rs: usize,
    /// Distance between batch items of C.
    pub c_batch_stride: usize,
    /// Bias.
    pub bias: Bias<'a>,
}

/// Supplies panels of bf16 pairs: `panel[kp · NR + c]` holds B_b[2·kp, j0 + c] in its low half and
/// B_b[2·kp + 1, j0 + c] in its high half ([`pair`]), zero for columns past n.
pub trait PackB: Sync {
    /// The panel of columns `j0..j0 + NR` of batch item `b` (`k / 2 · NR` pairs): packed into `scratch` and
    /// returned, or one the packer already holds.
    fn panel<'a>(&'a self, b: usize, j0: usize, scratch: &'a mut [u32]) -> &'a [u32];
}

/// Panels packed once and kept (a layer's weights): panel j holds columns `j · NR..(j + 1) · NR`.
pub struct PackedPanels<'a> {
    /// The panels, `k / 2 · NR` pairs each, in column order.
    pub panels: &'a [u32],
    /// Inner dimension.
    pub k: usize,
}

impl PackB for PackedPanels<'_> {
    fn panel<'a>(&'a self, _b: usize, j0: usize, _scratch: &'a mut [u32]) -> &'a [u32] {
        let size = self.k / 2 * NR;
        &self.panels[j0 / NR * size..(j0 / NR + 1) * size]
    }
}

/// Two bf16 values as the dot-product instruction reads them: `lo` in the low half.
#[inline(always)]
pub fn pair(lo: bf16, hi: bf16) -> u32 {
    u32::from(lo.to_bits()) | (u32::from(hi.to_bits()) << 16)
}

/// The bits of `v` rounded to the nearest bf16 (ties to even) in the high half of a u32, the low half zero;
/// NaN stays a quiet NaN. Branch-free, so that the packing loops vectorize.
#[inline(always)]
fn bf16_high(v: f32) -> u32 {
    let b = v.to_bits();
    let rounded = b.wrapping_add(0x7fff + ((b >> 16) & 1));
    let nan = (b & 0x7fff_ffff) > 0x7f80_0000;
    (if nan { b | 0x0040_0000 } else { rounded }) & 0xffff_0000
}

/// `v` rounded to the nearest bf16.
#[inline(always)]
pub(crate) fn to_bf16(v: f32) -> bf16 {
    bf16::from_bits((bf16_high(v) >> 16) as u16)
}

/// `lo` and `hi` rounded to bf16 and paired as the dot-product instruction reads them.
#[inline(always)]
pub(crate) fn pair_of(lo: f32, hi: f32) -> u32 {
    (bf16_high(lo) >> 16) | bf16_high(hi)
}

/// `dst[i] = pair_of(lo[i], hi[i])` for every i of `dst` (`lo` and `hi` at least as long): 16 pairs per
/// instruction on AVX512-BF16 (`vcvtneps2bf16`, which rounds alike but reads f32 subnormals as zero), one by one
/// elsewhere.
pub(crate) fn pair_rows(dst: &mut [u32], lo: &[f32], hi: &[f32]) {
    assert!(
        lo.len() >= dst.len() && hi.len() >= dst.len(),
        "pair_rows: short rows"
    );
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: AVX512-BF16 is present; every access lies inside the three slices (lengths checked above).
        unsafe { pair_rows_avx512(dst, lo, hi) };
        return;
    }
    for ((d, &l), &h) in dst.iter_mut().zip(lo).zip(hi) {
        *d = pair_of(l, h);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn pair_rows_avx512(dst: &mut [u32], lo: &[f32], hi: &[f32]) {
    use std::arch::x86_64::*;
    let n = dst.len();
    let mut i = 0;
    while i < n {
        let count = (n - i).min(16);
        let mask: __mmask16 = if count == 16 {
            0xffff
        } else {
            (1u16 << count) - 1
        };
        let l = _mm512_maskz_loadu_ps(mask, lo.as_ptr().add(i));
        let h = _mm512_maskz_loadu_ps(mask, hi.as_ptr().add(i));
        let l = _mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(
            _mm512_cvtneps_pbh(l),
        ));
        let h = _mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(
            _mm512_cvtneps_pbh(h),
        ));
        let pairs = _mm512_or_si512(l, _mm512_slli_epi32::<16>(h));
        _mm512_mask_storeu_epi32(dst.as_mut_ptr().add(i) as *mut i32, mask, pairs);
        i += 16;
    }
}

/// Runs the product into `out` (f32 or bf16), in parallel over (batch, column panel, row group).
pub fn run<T: Elem>(p: &Problem, packer: &dyn PackB, out: &mut [T]) -> candle_core::Result<()> {
    if !available() {
        candle_core::bail!("bf16 gemm: this CPU has no AVX512-BF16");
    }
    if !p.k.is_multiple_of(2) {
        candle_core::bail!("bf16 gemm: odd inner dimension {}", p.k);
    }
    let last_c = (p.batch.max(1) - 1) * p.c_batch_stride + p.m.saturating_sub(1) * p.c_rs + p.n;
    let last_a = (p.batch.max(1) - 1) * p.a_batch_stride + p.m * p.k;
    if p.m == 0 || p.n == 0 || p.batch == 0 {
        return Ok(());
    }
    if last_c > out.len() || last_a > p.a.len() {
        candle_core::bail!("bf16 gemm: views outside their buffers");
    }
    let panels = p.n.div_ceil(NR);
    // Split the rows only as far as load balance needs: every split packs the panel once more.
    let wanted = (TASKS_PER_THREAD * rayon::current_num_threads()).div_ceil(p.batch * panels);
    let groups = wanted.clamp(1, p.m.div_ceil(MC));
    let group_rows = p.m.div_ceil(groups).next_multiple_of(MR);
    let groups = p.m.div_ceil(group_rows);
    // Tasks write disjoint elements: distinct (batch, row block, column panel) triples.
    let shared = SharedOut::new(out);
    (0..p.batch * panels * groups)
        .into_par_iter()
        .for_each_init(
            || vec![0u32; p.k / 2 * NR],
            |scratch, task| {
                let b = task / (panels * groups);
                let j0 = (task / groups % panels) * NR;
                let i0 = task % groups * group_rows;
                let panel = packer.panel(b, j0, scratch);
                assert!(panel.len() >= p.k / 2 * NR, "bf16 gemm: a short panel");
                let rows = group_rows.min(p.m - i0);
                // SAFETY: AVX512-BF16 was detected above; the A rows, panel pairs and C elements addressed lie
                // inside their buffers (checked above) and this task's C elements are written by no other task.
                unsafe { task_block(p, panel, b, i0, rows, j0, &shared) };
            },
        );
    Ok(())
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl,avx512dq,fma")]
unsafe fn task_block<T: Elem>(
    p: &Problem,
    panel: &[u32],
    b: usize,
    i0: usize,
    rows: usize,
    j0: usize,
    out: &SharedOut<T>,
) {
    let cols = NR.min(p.n - j0);
    let a_base = b * p.a_batch_stride;
    let mut tile = [[0f32; NR]; MR];
    let mut i = 0;
    while i < rows {
        let mr = MR.min(rows - i);
        let a = &p.a[a_base + (i0 + i) * p.k..a_base + (i0 + i + mr) * p.k];
        match mr {
            6 => micro::<6>(a, p.k, panel, &mut tile),
            5 => micro::<5>(a, p.k, panel, &mut tile),
            4 => micro::<4>(a, p.k, panel, &mut tile),
            3 => micro::<3>(a, p.k, panel, &mut tile),
            2 => micro::<2>(a, p.k, panel, &mut tile),
            _ => micro::<1>(a, p.k, panel, &mut tile),
        }
        for (r, acc) in tile.iter().enumerate().take(mr) {
            let row = i0 + i + r;
            let start = b * p.c_batch_stride + row * p.c_rs + j0;
            debug_assert!(start + cols <= out.len());
            let dst = std::slice::from_raw_parts_mut(out.at(start), cols);
            match p.bias {
                Bias::None => store(dst, &acc[..cols], 0.0, None),
                Bias::Rows(bias) => store(dst, &acc[..cols], bias[row], None),
                Bias::Cols(bias) => store(dst, &acc[..cols], 0.0, Some(&bias[j0..j0 + cols])),
            }
        }
        i += mr;
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn task_block<T: Elem>(
    _p: &Problem,
    _panel: &[u32],
    _b: usize,
    _i0: usize,
    _rows: usize,
    _j0: usize,
    _out: &SharedOut<T>,
) {
}

#[inline(always)]
fn store<T: Elem>(dst: &mut [T], acc: &[f32], row_bias: f32, col_bias: Option<&[f32]>) {
    match col_bias {
        Some(bias) => {
            for ((d, &a), &b) in dst.iter_mut().zip(acc).zip(bias) {
                *d = T::from_f32(a + b);
            }
        }
        None => {
            for (d, &a) in dst.iter_mut().zip(acc) {
                *d = T::from_f32(a + row_bias);
            }
        }
    }
}

/// `tile[r][c] = Σ_kk a[r · lda + kk] · B[kk, c]` for the first `R` rows, B read from the packed panel.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn micro<const R: usize>(a: &[bf16], lda: usize, panel: &[u32], tile: &mut [[f32; NR]; MR]) {
    use std::arch::x86_64::*;
    let pairs = lda / 2;
    debug_assert!(a.len() >= R * lda && panel.len() >= pairs * NR);
    let mut acc = [[_mm512_setzero_ps(); 4]; R];
    let a_ptr = a.as_ptr() as *const i32;
    let b_ptr = panel.as_ptr() as *const __m512i;
    for kp in 0..pairs {
        let bv = [
            std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(b_ptr.add(kp * 4))),
            std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(b_ptr.add(kp * 4 + 1))),
            std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(b_ptr.add(kp * 4 + 2))),
            std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(b_ptr.add(kp * 4 + 3))),
        ];
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let pair = a_ptr.add(r * pairs + kp).read_unaligned();
            let av = std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(pair));
            for (acc_v, &b_v) in acc_r.iter_mut().zip(&bv) {
                *acc_v = _mm512_dpbf16_ps(*acc_v, av, b_v);
            }
        }
    }
    for (r, acc_r) in acc.iter().enumerate() {
        for (v, &acc_v) in acc_r.iter().enumerate() {
            _mm512_storeu_ps(tile[r].as_mut_ptr().add(16 * v), acc_v);
        }
    }
}
