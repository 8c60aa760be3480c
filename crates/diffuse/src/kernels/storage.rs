//! Moving between candle's CPU storage and the f32 slices the kernels compute on.

use std::borrow::Cow;
use std::ops::Range;

use candle_core::{
    backend::BackendStorage, bail, CpuStorage, DType, Layout, Result, Storage, StorageRef, Tensor,
};
use half::{bf16, f16};
use rayon::prelude::*;

/// The tensor's elements as f32, borrowed when they already are f32. The layout must be contiguous.
pub fn as_f32<'a>(storage: &'a CpuStorage, layout: &Layout, what: &str) -> Result<Cow<'a, [f32]>> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        bail!("{what}: the kernel needs a contiguous tensor");
    };
    Ok(match storage {
        CpuStorage::F32(v) => Cow::Borrowed(&v[start..end]),
        CpuStorage::BF16(v) => Cow::Owned(widen(&v[start..end], bf16::to_f32)),
        CpuStorage::F16(v) => Cow::Owned(widen(&v[start..end], f16::to_f32)),
        other => bail!("{what}: unsupported dtype {:?}", other.dtype()),
    })
}

/// The values of a contiguous f32 tensor, borrowed; `op` names the kernel in errors. For the training kernels,
/// which compute only in f32.
pub fn f32_slice<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        bail!("{op}: only f32 is supported, not {:?}", storage.dtype());
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!("{op}: the kernel needs a contiguous tensor"),
    }
}

/// The values of a contiguous f32 CPU tensor, read in place (no copy) while this holds its storage's read lock.
pub struct F32Values<'a> {
    storage: StorageRef<'a>,
    range: Range<usize>,
}

impl<'a> F32Values<'a> {
    /// Locks `t`'s storage for reading; `op` names the kernel in errors.
    pub fn of(t: &'a Tensor, op: &str) -> Result<Self> {
        let (storage, layout) = t.storage_and_layout();
        let Storage::Cpu(cpu) = &*storage else {
            bail!("{op}: the kernel needs a CPU tensor");
        };
        let values = f32_slice(cpu, layout, op)?;
        let start = layout.start_offset();
        let range = start..start + values.len();
        Ok(Self { storage, range })
    }

    /// The values.
    pub fn get(&self) -> &[f32] {
        match &*self.storage {
            Storage::Cpu(CpuStorage::F32(v)) => &v[self.range.clone()],
            // `of` accepts nothing else.
            _ => &[],
        }
    }
}

fn widen<T: Copy + Send + Sync>(src: &[T], f: fn(T) -> f32) -> Vec<f32> {
    let mut out = vec![0f32; src.len()];
    out.par_chunks_mut(1 << 16)
        .zip(src.par_chunks(1 << 16))
        .for_each(|(o, s)| o.iter_mut().zip(s).for_each(|(o, &s)| *o = f(s)));
    out
}

fn narrow<T: Copy + Send + Sync + Default>(src: &[f32], f: fn(f32) -> T) -> Vec<T> {
    let mut out = vec![T::default(); src.len()];
    out.par_chunks_mut(1 << 16)
        .zip(src.par_chunks(1 << 16))
        .for_each(|(o, s)| o.iter_mut().zip(s).for_each(|(o, &s)| *o = f(s)));
    out
}

/// Wraps f32 results as storage of `dtype` (rounding to nearest for bf16 and f16).
pub fn from_f32(values: Vec<f32>, dtype: DType) -> Result<CpuStorage> {
    Ok(match dtype {
        DType::F32 => CpuStorage::F32(values),
        DType::BF16 => CpuStorage::BF16(narrow(&values, bf16::from_f32)),
        DType::F16 => CpuStorage::F16(narrow(&values, f16::from_f32)),
        other => bail!("unsupported dtype {other:?}"),
    })
}

/// An element type the kernels read and write directly, computing in f32.
pub trait Elem: Copy + Send + Sync + Default + 'static {
    /// Widens to f32.
    fn to_f32(self) -> f32;
    /// Rounds an f32 to this type.
    fn from_f32(v: f32) -> Self;
}

impl Elem for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        v
    }
}

impl Elem for bf16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f32::from_bits((self.to_bits() as u32) << 16)
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        bf16::from_f32(v)
    }
}

impl Elem for f16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        f16::from_f32(v)
    }
}

/// Buffers of at least this many bytes are filled by [`filled`] on the thread pool.
const PARALLEL_FILL_BYTES: usize = 1 << 20;

/// A buffer of `len` copies of `value`, as `vec![value; len]`, but written by the pool's threads in parallel
/// when it is large: a kernel's output buffer is often fresh memory, and the first write to each page faults
/// it in (the operating system zeroes the page), so one thread filling it would serialize those faults and the
/// fill itself.
pub(crate) fn filled<T: Copy + Send + Sync>(len: usize, value: T) -> Vec<T> {
    if len * std::mem::size_of::<T>() < PARALLEL_FILL_BYTES {
        return vec![value; len];
    }
    let mut buffer = Vec::with_capacity(len);
    let chunk = (PARALLEL_FILL_BYTES / std::mem::size_of::<T>().max(1)).max(1);
    buffer.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk)
        .for_each(|part| {
            for slot in part {
                slot.write(value);
            }
        });
    // SAFETY: the loop above initialized every one of the first `len` elements.
    unsafe { buffer.set_len(len) };
    buffer
}

/// An output buffer shared by parallel tasks, each of which writes its own disjoint elements.
pub(crate) struct SharedOut<T> {
    ptr: *mut T,
    len: usize,
}

// SAFETY: the tasks write disjoint elements (each kernel's `at` callers say which), and the buffer outlives the
// parallel loop that uses it.
unsafe impl<T: Send> Sync for SharedOut<T> {}

impl<T> SharedOut<T> {
    /// Shares `out` for the duration of a parallel loop.
    pub(crate) fn new(out: &mut [T]) -> Self {
        Self {
            ptr: out.as_mut_ptr(),
            len: out.len(),
        }
    }

    /// The buffer's length.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The element at `offset`.
    ///
    /// # Safety
    /// `offset` must lie inside the buffer, and no other task may write the elements written through it.
    pub(crate) unsafe fn at(&self, offset: usize) -> *mut T {
        debug_assert!(offset < self.len);
        self.ptr.add(offset)
    }
}

#[cfg(test)]
mod tests {
    use half::bf16;

    #[test]
    fn filled_equals_vec_of_copies_on_both_sides_of_the_parallel_threshold() {
        let threshold = super::PARALLEL_FILL_BYTES / 2;
        for len in [0, 1, threshold - 1, threshold, 3 * threshold + 7] {
            let got = super::filled(len, bf16::from_f32(-1.5));
            assert_eq!(got, vec![bf16::from_f32(-1.5); len], "length {len}");
            let got = super::filled(len, 7u32);
            assert_eq!(got, vec![7u32; len], "length {len}");
        }
    }
}
