//! `torch.Generator("cpu").manual_seed(seed)` and `torch.randn(shape, generator=g, dtype=...)` on the CPU.
//!
//! What torch 2.15 does (`aten/src/ATen/native/cpu/DistributionTemplates.h`, `core/DistributionsHelper.h`,
//! `core/TransformationHelper.h`):
//! - Fewer than 16 elements: one `normal_distribution<double>` sample per element. Each takes two doubles
//!   `u = (random64() & (2^53 - 1)) * 2^-53` (`random64` = first u32 in the high half), returns
//!   `sqrt(-2 log1p(-u2)) cos(2π u1)` and caches the sine partner in the generator, where the next such sample
//!   (in this or a later call) takes it. `manual_seed` clears the cache; the 16-wide path neither reads nor clears it.
//! - 16 elements or more, float32 and float64: every element is first set to a uniform
//!   (`(random() & (2^24 - 1)) * 2^-24` for float32, the 53-bit double above for float64), then each whole block
//!   of 16 goes through Box–Muller (`u1 = 1 - x[j]`, `u2 = x[j + 8]`, `x[j] = r cos θ`, `x[j + 8] = r sin θ`);
//!   when the size is not a multiple of 16, 16 fresh uniforms are transformed into the last 16 elements.
//! - 16 elements or more, float16 and bfloat16: the same in float32, but each block draws its own 16 uniforms
//!   just before it is transformed, and the tail's 16 uniforms are drawn right after the last whole block. The
//!   tail therefore differs from the float32 draw, and the generator ends at another position.
//! - Which float32 functions Box–Muller uses depends on the CPU: see [`BoxMullerKernel`].

use candle_core::{DType, Device, Tensor};
use half::{bf16, f16};

use super::avx_mathfun;
use super::mt19937::Mt19937;
use super::NoiseSource;
use crate::{Error, Result};

/// Which of torch's float32 Box–Muller kernels to reproduce; they differ in the last bit or two.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BoxMullerKernel {
    /// torch's AVX2 kernel (`avx_mathfun.h`'s Cephes log/sincos), run by every x86-64 CPU with AVX2 and FMA,
    /// AVX-512 ones included (torch does not dispatch `normal` to AVX-512). Reproduced to the bit.
    Avx2,
    /// torch's portable kernel, run on CPUs without AVX2 (ARM, old x86): the C library's `logf`, `cosf` and
    /// `sinf`. This uses the C library of the machine it runs on, so it matches torch to the bit only where
    /// torch uses the same one (within 1–2 float ulps elsewhere).
    Scalar,
}

impl BoxMullerKernel {
    /// The kernel torch uses on the CPU this program runs on.
    pub fn for_this_cpu() -> Self {
        #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
        {
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return BoxMullerKernel::Avx2;
            }
        }
        BoxMullerKernel::Scalar
    }
}

/// torch's CPU generator: a seeded stream that every `randn` call continues, exactly as one
/// `torch.Generator("cpu")` passed to successive `torch.randn` calls.
#[derive(Clone)]
pub struct TorchCpuRng {
    engine: Mt19937,
    cached_normal: Option<f64>,
    kernel: BoxMullerKernel,
}

impl TorchCpuRng {
    /// `torch.Generator("cpu").manual_seed(seed)`, with the Box–Muller kernel torch uses on this CPU.
    /// Only the low 32 bits of the seed matter, as in torch.
    pub fn new(seed: u64) -> Self {
        Self::with_kernel(seed, BoxMullerKernel::for_this_cpu())
    }

    /// Like [`TorchCpuRng::new`], reproducing the given kernel whatever this CPU is.
    pub fn with_kernel(seed: u64, kernel: BoxMullerKernel) -> Self {
        TorchCpuRng {
            engine: Mt19937::new(seed),
            cached_normal: None,
            kernel,
        }
    }

    /// The kernel this generator reproduces.
    pub fn kernel(&self) -> BoxMullerKernel {
        self.kernel
    }

    /// The next 32 bits of the stream (torch's `CPUGeneratorImpl::random`).
    pub fn next_u32(&mut self) -> u32 {
        self.engine.next_u32()
    }

    /// The next 64 bits: two 32-bit outputs, the first in the high half (torch's `random64`).
    pub fn next_u64(&mut self) -> u64 {
        let high = self.engine.next_u32();
        let low = self.engine.next_u32();
        (u64::from(high) << 32) | u64::from(low)
    }

    /// `torch.randn(shape, generator=g)` in float32.
    pub fn randn_f32(&mut self, shape: &[usize]) -> Vec<f32> {
        let n = numel(shape);
        if n < 16 {
            return (0..n).map(|_| self.normal_f64() as f32).collect();
        }
        let mut data: Vec<f32> = (0..n).map(|_| self.uniform_f32()).collect();
        for block in data.chunks_exact_mut(16) {
            self.box_muller_f32(block);
        }
        if !n.is_multiple_of(16) {
            let tail = self.transformed_block_f32();
            data[n - 16..].copy_from_slice(&tail);
        }
        data
    }

    /// `torch.randn(shape, generator=g, dtype=torch.float16)`.
    pub fn randn_f16(&mut self, shape: &[usize]) -> Vec<f16> {
        self.randn_half(shape, |v| f16::from_f32(v as f32), f16::from_f32)
    }

    /// `torch.randn(shape, generator=g, dtype=torch.bfloat16)`.
    pub fn randn_bf16(&mut self, shape: &[usize]) -> Vec<bf16> {
        self.randn_half(shape, |v| bf16::from_f32(v as f32), bf16::from_f32)
    }

    /// `torch.randn(shape, generator=g, dtype=torch.float64)`.
    pub fn randn_f64(&mut self, shape: &[usize]) -> Vec<f64> {
        let n = numel(shape);
        if n < 16 {
            return (0..n).map(|_| self.normal_f64()).collect();
        }
        let mut data: Vec<f64> = (0..n).map(|_| self.uniform_f64()).collect();
        for block in data.chunks_exact_mut(16) {
            box_muller_f64(block);
        }
        if !n.is_multiple_of(16) {
            let mut tail = [0f64; 16];
            tail.iter_mut().for_each(|v| *v = self.uniform_f64());
            box_muller_f64(&mut tail);
            data[n - 16..].copy_from_slice(&tail);
        }
        data
    }

    /// The reduced-precision path shared by float16 and bfloat16: per-block uniforms, float32 math, then a
    /// round-to-nearest-even cast (`from_double` goes through float first, as torch's `static_cast` does).
    fn randn_half<T: Copy + Default>(
        &mut self,
        shape: &[usize],
        from_double: impl Fn(f64) -> T,
        from_float: impl Fn(f32) -> T,
    ) -> Vec<T> {
        let n = numel(shape);
        if n < 16 {
            return (0..n).map(|_| from_double(self.normal_f64())).collect();
        }
        let mut data = vec![T::default(); n];
        for start in (0..n - 15).step_by(16) {
            let block = self.transformed_block_f32();
            for (out, value) in data[start..start + 16].iter_mut().zip(block) {
                *out = from_float(value);
            }
        }
        if !n.is_multiple_of(16) {
            let block = self.transformed_block_f32();
            for (out, value) in data[n - 16..].iter_mut().zip(block) {
                *out = from_float(value);
            }
        }
        data
    }

    fn uniform_f32(&mut self) -> f32 {
        (self.engine.next_u32() & ((1 << 24) - 1)) as f32 * (1.0 / (1u32 << 24) as f32)
    }

    fn uniform_f64(&mut self) -> f64 {
        (self.next_u64() & ((1 << 53) - 1)) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// One `normal_distribution<double>` sample, using and refilling the cached sine partner.
    fn normal_f64(&mut self) -> f64 {
        if let Some(cached) = self.cached_normal.take() {
            return cached;
        }
        let u1 = self.uniform_f64();
        let u2 = self.uniform_f64();
        let radius = (-2.0 * (-u2).ln_1p()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * u1;
        self.cached_normal = Some(radius * theta.sin());
        radius * theta.cos()
    }

    /// 16 fresh uniforms through Box–Muller.
    fn transformed_block_f32(&mut self) -> [f32; 16] {
        let mut block = [0f32; 16];
        block.iter_mut().for_each(|v| *v = self.uniform_f32());
        self.box_muller_f32(&mut block);
        block
    }

    fn box_muller_f32(&self, block: &mut [f32]) {
        for j in 0..8 {
            let u1 = 1.0 - block[j];
            let u2 = block[j + 8];
            let (radius, sin, cos) = match self.kernel {
                BoxMullerKernel::Avx2 => {
                    let radius = (-2.0 * avx_mathfun::log(u1)).sqrt();
                    let theta = (2.0 * std::f64::consts::PI) as f32 * u2;
                    let (sin, cos) = avx_mathfun::sin_cos(theta);
                    (radius, sin, cos)
                }
                BoxMullerKernel::Scalar => {
                    let radius = (-2.0 * u1.ln()).sqrt();
                    let theta = (2.0 * std::f64::consts::PI * f64::from(u2)) as f32;
                    (radius, theta.sin(), theta.cos())
                }
            };
            // torch stores fma(n, std = 1, mean = 0): n itself, except that -0 becomes +0.
            block[j] = radius * cos + 0.0;
            block[j + 8] = radius * sin + 0.0;
        }
    }
}

/// torch's portable Box–Muller on doubles (no vectorized double kernel exists).
fn box_muller_f64(block: &mut [f64]) {
    for j in 0..8 {
        let u1 = 1.0 - block[j];
        let u2 = block[j + 8];
        let radius = (-2.0 * u1.ln()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * u2;
        block[j] = radius * theta.cos() + 0.0;
        block[j + 8] = radius * theta.sin() + 0.0;
    }
}

fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

impl NoiseSource for TorchCpuRng {
    fn randn(&mut self, shape: &[usize]) -> Vec<f32> {
        self.randn_f32(shape)
    }

    fn randn_dtype(&mut self, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let device = &Device::Cpu;
        Ok(match dtype {
            DType::F32 => Tensor::from_vec(self.randn_f32(shape), shape, device)?,
            DType::F16 => Tensor::from_vec(self.randn_f16(shape), shape, device)?,
            DType::BF16 => Tensor::from_vec(self.randn_bf16(shape), shape, device)?,
            DType::F64 => Tensor::from_vec(self.randn_f64(shape), shape, device)?,
            other => {
                return Err(Error::invalid(
                    "noise dtype",
                    format!("normal noise is drawn in F16, BF16, F32 or F64, not {other:?}"),
                ))
            }
        })
    }
}
