//! The Mersenne Twister behind torch's CPU generator (`at::mt19937` in ATen's `MT19937RNGEngine.h`).

const STATE_N: usize = 624;
const STATE_M: usize = 397;
const MATRIX_A: u32 = 0x9908_b0df;
const UPPER_MASK: u32 = 0x8000_0000;
const LOWER_MASK: u32 = 0x7fff_ffff;

/// mt19937 seeded as `torch.Generator("cpu").manual_seed(seed)` seeds it.
#[derive(Clone)]
pub(crate) struct Mt19937 {
    state: [u32; STATE_N],
    next: usize,
}

impl Mt19937 {
    /// Seeds the engine with the low 32 bits of `seed`, as torch does.
    pub(crate) fn new(seed: u64) -> Self {
        let mut state = [0u32; STATE_N];
        state[0] = (seed & 0xffff_ffff) as u32;
        for j in 1..STATE_N {
            let previous = state[j - 1];
            state[j] = 1_812_433_253u32
                .wrapping_mul(previous ^ (previous >> 30))
                .wrapping_add(j as u32);
        }
        // torch regenerates the whole state before the first output.
        Mt19937 {
            state,
            next: STATE_N,
        }
    }

    /// The next tempered 32-bit output.
    pub(crate) fn next_u32(&mut self) -> u32 {
        if self.next == STATE_N {
            self.regenerate();
        }
        let mut y = self.state[self.next];
        self.next += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    fn regenerate(&mut self) {
        for k in 0..STATE_N {
            let current = self.state[k];
            let following = self.state[(k + 1) % STATE_N];
            let mixed = (current & UPPER_MASK) | (following & LOWER_MASK);
            let twisted = (mixed >> 1) ^ if following & 1 == 1 { MATRIX_A } else { 0 };
            self.state[k] = self.state[(k + STATE_M) % STATE_N] ^ twisted;
        }
        self.next = 0;
    }
}
