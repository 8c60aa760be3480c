//! The machine a run happens on, as benchmarks record it and `diffuse info --system` prints it: the CPU's model,
//! instruction-set features, topology and caches, memory, and which kernel paths the dispatcher takes here.

use std::fmt;
use std::path::Path;

use crate::device::{host_memory, HostMemory};
use crate::internals::kernels::{
    attention_avx512, bf16_gemm, causal_attention, conv, few_rows_gemm, int8_gemm, simd, winograd,
    winograd_bf16,
};
use crate::Result;

mod dot_rates;
mod dtype_speed;

pub use dot_rates::{measure_dot_rates, DotRates};
pub use dtype_speed::{auto_dtype, cpu_dtype_speed, DtypeSpeed};

/// The CPU features that decide the kernels' speed, as `/proc/cpuinfo` names them.
const FEATURES: [&str; 14] = [
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512dq",
    "avx512_bf16",
    "avx512_fp16",
    "avx512_vnni",
    "avx_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
];

/// One CPU cache, as `/sys/devices/system/cpu/cpu0/cache` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cache {
    /// 1, 2, 3.
    pub level: u32,
    /// `Data`, `Instruction` or `Unified`.
    pub kind: String,
    /// Size as the kernel writes it (`48K`, `2048K`, `260M`).
    pub size: String,
    /// The logical CPUs sharing it (`0`, `0-1`).
    pub shared_by: String,
}

/// What this machine is and what diffuse's kernels do on it.
#[derive(Debug, Clone)]
pub struct SystemInfo {
    /// `model name` of `/proc/cpuinfo`.
    pub cpu_model: String,
    /// Vendor, family, model and stepping (`GenuineIntel family 6 model 207 stepping 2`).
    pub cpu_id: String,
    /// Logical CPUs the process may run on.
    pub logical_cpus: usize,
    /// Physical cores per socket and sockets, where `/proc/cpuinfo` says.
    pub cores: Option<usize>,
    /// Hardware threads per core, where known.
    pub threads_per_core: Option<usize>,
    /// The caches of CPU 0.
    pub caches: Vec<Cache>,
    /// Which of the kernel-relevant features (AVX2, FMA, the AVX-512 family, VNNI, AMX) the CPU reports.
    pub features: Vec<&'static str>,
    /// Host memory.
    pub memory: Option<HostMemory>,
    /// The transparent-huge-pages mode (`always`, `madvise`, `never`).
    pub transparent_huge_pages: Option<String>,
    /// The dispatcher's choices: (what, which path and why).
    pub dispatch: Vec<(&'static str, String)>,
    /// bf16 against f32 on this CPU, when measured ([`SystemInfo::with_dtype_speed`]).
    pub dtype_speed: Option<DtypeSpeed>,
    /// One core's multiply-add rates per operand type, when measured ([`SystemInfo::with_dot_rates`]).
    pub dot_rates: Option<DotRates>,
}

impl SystemInfo {
    /// Reads `/proc/cpuinfo`, sysfs and the kernels' feature checks.
    pub fn detect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let first = cpuinfo.split("\n\n").next().unwrap_or_default();
        let field = |name: &str| {
            first
                .lines()
                .find_map(|line| {
                    let (key, value) = line.split_once(':')?;
                    (key.trim() == name).then(|| value.trim().to_string())
                })
                .unwrap_or_default()
        };
        let flags = field("flags");
        let flags: Vec<&str> = flags.split_whitespace().collect();
        let number = |name: &str| field(name).parse::<usize>().ok();
        let cores = number("cpu cores");
        let threads_per_core = match (number("siblings"), cores) {
            (Some(siblings), Some(cores)) if cores > 0 => Some(siblings / cores),
            _ => None,
        };
        Self {
            cpu_model: field("model name"),
            cpu_id: format!(
                "{} family {} model {} stepping {}",
                field("vendor_id"),
                field("cpu family"),
                field("model"),
                field("stepping")
            ),
            logical_cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cores,
            threads_per_core,
            caches: caches(Path::new("/sys/devices/system/cpu/cpu0/cache")),
            features: FEATURES
                .iter()
                .copied()
                .filter(|f| flags.contains(f))
                .collect(),
            memory: host_memory(),
            transparent_huge_pages: std::fs::read_to_string(
                "/sys/kernel/mm/transparent_hugepage/enabled",
            )
            .ok()
            .and_then(|mode| {
                let start = mode.find('[')? + 1;
                let end = mode[start..].find(']')? + start;
                Some(mode[start..end].to_string())
            }),
            dispatch: dispatch(),
            dtype_speed: None,
            dot_rates: None,
        }
    }

    /// Adds one core's multiply-add rates in f32, bf16 and int8 ([`measure_dot_rates`], a few milliseconds).
    pub fn with_dot_rates(mut self) -> Self {
        self.dot_rates = Some(measure_dot_rates());
        self
    }

    /// Adds how bf16 compares with f32 here ([`cpu_dtype_speed`]: cached, or measured in about a second).
    pub fn with_dtype_speed(mut self) -> Result<Self> {
        self.dtype_speed = Some(cpu_dtype_speed()?);
        Ok(self)
    }
}

fn caches(dir: &Path) -> Vec<Cache> {
    let read = |path: std::path::PathBuf| {
        std::fs::read_to_string(path)
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    let mut caches: Vec<Cache> = (0..8)
        .map(|i| dir.join(format!("index{i}")))
        .filter(|index| index.is_dir())
        .map(|index| Cache {
            level: read(index.join("level")).parse().unwrap_or(0),
            kind: read(index.join("type")),
            size: read(index.join("size")),
            shared_by: read(index.join("shared_cpu_list")),
        })
        .collect();
    caches.sort_by_key(|c| (c.level, c.kind.clone()));
    caches
}

fn dispatch() -> Vec<(&'static str, String)> {
    let level = match simd::simd_level() {
        simd::SimdLevel::Avx512 => "AVX-512 (F, BW, VL, DQ with FMA)",
        simd::SimdLevel::Avx2 => "AVX2 with FMA",
        simd::SimdLevel::Baseline => "the baseline instruction set (no AVX2/FMA found)",
    };
    let bf16 = if bf16_gemm::available() {
        "bf16 operands with f32 accumulation on AVX512-BF16 (VDPBF16PS); how fast against f32 depends on the CPU \
         (some issue these dot products at twice the f32 FMA's multiply-add rate, others at or below it: see the \
         measured rates), bf16 always halves the weights' memory"
    } else {
        "no AVX512-BF16: bf16 tensors are widened to f32 for every product"
    };
    let attention = if attention_avx512::available_bf16() {
        "flash-style blocks, AVX-512 kernel (bf16 products on AVX512-BF16)"
    } else if attention_avx512::available() {
        "flash-style blocks, AVX-512 kernel"
    } else {
        "flash-style blocks, two matrix products per block"
    };
    let int8 = if int8_gemm::available() {
        "available (quantize = int8): the UNet's linear layers and convolutions on AVX512-VNNI (VPDPBUSD), int8 \
         weights per output channel and activations per token or image, f32 results; attention scores over 2048 \
         keys or more in int8 too"
    } else {
        "unavailable (quantize = int8 needs AVX512-VNNI)"
    };
    let convolutions = format!(
        "f32 3×3 convolutions (stride 1) as Winograd F(2×2, 3×3) on planes of {} pixels or more with {} input \
         channels or more, F(4×4, 3×3) on planes of {} pixels or more with {} input channels or more; unfolded \
         (im2col) products otherwise; {}",
        conv::WINOGRAD_MIN_PIXELS,
        conv::WINOGRAD_MIN_CHANNELS,
        winograd::F4_MIN_PIXELS,
        winograd::F4_MIN_CHANNELS,
        if bf16_gemm::available() {
            format!(
                "bf16 ones as Winograd F(2×2, 3×3) on planes of {} pixels or more with {} channels or more in and \
                 out (bf16 products of the transformed operands, f32 sums), unfolded otherwise",
                winograd_bf16::MIN_PIXELS,
                winograd_bf16::MIN_CHANNELS
            )
        } else {
            "bf16 ones widened to f32 (no AVX512-BF16)".to_string()
        }
    );
    let text = if few_rows_gemm::available() {
        format!(
            "f32 linear layers over {}–{} rows (the text encoders) on the few-row kernel (weights as stored, \
             no packing); the text encoders' causal attention (heads of {}) on its own kernel",
            few_rows_gemm::ROWS.start(),
            few_rows_gemm::ROWS.end(),
            causal_attention::HEAD_DIM
        )
    } else {
        "candle's matmul and masked attention (the few-row and causal-attention kernels need AVX-512)".to_string()
    };
    vec![
        ("vector kernels", level.to_string()),
        ("convolutions", convolutions),
        ("text encoders", text),
        ("bf16 products", bf16.to_string()),
        ("int8 products", int8.to_string()),
        ("attention", attention.to_string()),
        (
            "threads",
            format!(
                "{} (RAYON_NUM_THREADS or all logical CPUs)",
                rayon::current_num_threads()
            ),
        ),
    ]
}

impl fmt::Display for SystemInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "CPU: {} ({})", self.cpu_model, self.cpu_id)?;
        let per_core = self
            .threads_per_core
            .map_or(String::new(), |t| format!(", {t} thread(s) per core"));
        let cores = self
            .cores
            .map_or(String::new(), |c| format!(", {c} core(s) per socket"));
        writeln!(f, "logical CPUs: {}{cores}{per_core}", self.logical_cpus)?;
        let caches: Vec<String> = self
            .caches
            .iter()
            .map(|c| format!("L{} {} {} (CPUs {})", c.level, c.kind, c.size, c.shared_by))
            .collect();
        writeln!(f, "caches: {}", caches.join(", "))?;
        writeln!(f, "features: {}", self.features.join(" "))?;
        if let Some(memory) = &self.memory {
            writeln!(
                f,
                "memory: {:.1} GiB total, {:.1} GiB available",
                memory.total as f64 / (1u64 << 30) as f64,
                memory.available as f64 / (1u64 << 30) as f64
            )?;
        }
        if let Some(thp) = &self.transparent_huge_pages {
            writeln!(f, "transparent huge pages: {thp}")?;
        }
        for (what, choice) in &self.dispatch {
            writeln!(f, "{what}: {choice}")?;
        }
        if let Some(rates) = &self.dot_rates {
            let rate = |r: Option<f64>| r.map_or("none".to_string(), |r| format!("{:.0}", r / 1e9));
            let ratio = |r: Option<f64>| match (r, rates.f32_fma) {
                (Some(r), Some(f)) => format!(" ({:.2}× f32)", r / f),
                _ => String::new(),
            };
            writeln!(
                f,
                "multiply-adds per second on one core (G, measured): f32 FMA {}, bf16 VDPBF16PS {}{}, int8 VPDPBUSD {}{}",
                rate(rates.f32_fma),
                rate(rates.bf16_dot),
                ratio(rates.bf16_dot),
                rate(rates.int8_dot),
                ratio(rates.int8_dot)
            )?;
        }
        if let Some(speed) = &self.dtype_speed {
            writeln!(
                f,
                "bf16 against f32 (a UNet-sized 3×3 convolution, measured once and cached): {:.2}× ({:.3} s against \
                 {:.3} s); auto picks f32 on the CPU",
                speed.bf16_speedup(),
                speed.bf16_seconds,
                speed.f32_seconds
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::SystemInfo;

    #[test]
    fn describes_this_machine() {
        let info = SystemInfo::detect();
        assert!(info.logical_cpus >= 1);
        let text = info.to_string();
        for line in ["CPU: ", "logical CPUs: ", "vector kernels: ", "threads: "] {
            assert!(text.contains(line), "{text}");
        }
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") {
            assert!(info.features.contains(&"avx2"), "{text}");
        }
    }

    #[test]
    fn measures_the_dot_product_rates_it_has() {
        let info = SystemInfo::detect().with_dot_rates();
        let rates = info.dot_rates.expect("measured");
        #[cfg(target_arch = "x86_64")]
        {
            assert_eq!(rates.f32_fma.is_some(), is_x86_feature_detected!("avx512f"));
            assert_eq!(
                rates.int8_dot.is_some(),
                is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vnni")
            );
        }
        for rate in [rates.f32_fma, rates.bf16_dot, rates.int8_dot]
            .into_iter()
            .flatten()
        {
            assert!(rate.is_finite() && rate > 1e8, "{rate}");
        }
        assert!(info
            .to_string()
            .contains("multiply-adds per second on one core"));
    }
}
