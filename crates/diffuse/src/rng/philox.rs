//! AUTOMATIC1111's CPU port of torch's CUDA generator (`modules/rng_philox.py`, A1111's RNG source "NV").
//!
//! Element `i` of draw number `offset` (0 for the first `randn` call, 1 for the next, ...) is Philox4x32-10 with
//! key = the 64-bit seed (low half first) and counter = `[offset, 0, i, 0]`; of the four outputs `x, y, _, _`,
//! Box–Muller keeps one value: `sqrt(-2 ln u) sin v` with `u = x 2^-32 + 2^-33` and `v = y 2π 2^-32 + π 2^-32`,
//! evaluated in double precision with A1111's float32 constants, as numpy evaluates that file, then rounded to
//! float32. A1111 reports that this reproduces `torch.randn(..., device="cuda")`.

use super::NoiseSource;

const PHILOX_M: [u32; 2] = [0xD251_1F53, 0xCD9E_8D57];
const PHILOX_W: [u32; 2] = [0x9E37_79B9, 0xBB67_AE85];
const ROUNDS: usize = 10;

/// A1111's "NV" generator: a seed and the number of draws made so far.
#[derive(Clone, Debug)]
pub struct PhiloxRng {
    seed: u64,
    offset: u32,
}

impl PhiloxRng {
    /// A generator for `seed`, before its first draw (offset 0).
    pub fn new(seed: u64) -> Self {
        PhiloxRng { seed, offset: 0 }
    }

    /// How many draws this generator has made: the counter word of its next draw.
    pub fn offset(&self) -> u32 {
        self.offset
    }

    /// The four 32-bit Philox4x32-10 outputs for `counter` under this generator's key.
    fn philox(&self, mut counter: [u32; 4]) -> [u32; 4] {
        let mut key = [self.seed as u32, (self.seed >> 32) as u32];
        for round in 0..ROUNDS {
            let product0 = u64::from(counter[0]) * u64::from(PHILOX_M[0]);
            let product2 = u64::from(counter[2]) * u64::from(PHILOX_M[1]);
            counter = [
                (product2 >> 32) as u32 ^ counter[1] ^ key[0],
                product2 as u32,
                (product0 >> 32) as u32 ^ counter[3] ^ key[1],
                product0 as u32,
            ];
            if round + 1 < ROUNDS {
                key[0] = key[0].wrapping_add(PHILOX_W[0]);
                key[1] = key[1].wrapping_add(PHILOX_W[1]);
            }
        }
        counter
    }
}

/// A1111's Box–Muller on two Philox outputs, first value only.
fn box_muller(x: u32, y: u32) -> f32 {
    let two_pow32_inv = f64::from(2.328_306_4e-10_f64 as f32);
    let two_pow32_inv_2pi = f64::from((2.328_306_4e-10_f64 * 6.283_185_5) as f32);
    let u = f64::from(x) * two_pow32_inv + two_pow32_inv / 2.0;
    let v = f64::from(y) * two_pow32_inv_2pi + two_pow32_inv_2pi / 2.0;
    ((-2.0 * u.ln()).sqrt() * v.sin()) as f32
}

impl NoiseSource for PhiloxRng {
    /// Draws the next tensor; like A1111's port, each call advances the offset by one, whatever its size.
    /// Element indices are 32-bit, as there: more than 2^32 elements would repeat.
    fn randn(&mut self, shape: &[usize]) -> Vec<f32> {
        let n: usize = shape.iter().product();
        let values = (0..n)
            .map(|i| {
                let [x, y, _, _] = self.philox([self.offset, 0, i as u32, 0]);
                box_muller(x, y)
            })
            .collect();
        self.offset = self.offset.wrapping_add(1);
        values
    }
}
