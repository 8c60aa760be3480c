//! Pipeline configurations embedded in the binary, so that a single-file checkpoint loads without a network:
//! the `model_index.json`, component configs, scheduler config and CLIP tokenizer of the Hub repos diffusers
//! configures single files from (`crates/diffuse/assets/`; see its README for where they come from).

use std::path::PathBuf;

use super::detect::CheckpointKind;

/// One Hub repo's configuration files, embedded.
#[derive(Debug)]
pub struct BuiltinConfig {
    /// The Hub repo whose files these are.
    pub repo: &'static str,
    /// Other Hub ids of the same repo (renamed or mirrored), which select these files too.
    pub aliases: &'static [&'static str],
    files: &'static [(&'static str, &'static str)],
}

impl BuiltinConfig {
    /// The text of the file at `path` (relative to the repo root, e.g. `unet/config.json`), if embedded.
    pub fn file(&self, path: &str) -> Option<&'static str> {
        self.files
            .iter()
            .find(|(name, _)| *name == path)
            .map(|(_, text)| *text)
    }

    /// The pseudo-path errors name these files under: `<built-in REPO>`.
    pub fn label(&self) -> PathBuf {
        PathBuf::from(format!("<built-in {}>", self.repo))
    }

    /// Whether `id` (a Hub id, without `@revision`) names these configurations.
    pub fn is_named(&self, id: &str) -> bool {
        id == self.repo || self.aliases.contains(&id)
    }
}

/// The text of `crates/diffuse/assets/<the concatenated pieces>`.
macro_rules! asset {
    ($($piece:expr),+) => {
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/", $($piece),+))
    };
}

const VOCAB: &str = asset!("clip-tokenizer/vocab.json");
const MERGES: &str = asset!("clip-tokenizer/merges.txt");

/// The CLIP tokenizer's four files under `$dir`, padding with `<|endoftext|>` (`endoftext-pad`) or `!`
/// (`bang-pad`).
macro_rules! tokenizer {
    ($dir:literal, $pad:literal) => {
        [
            (concat!($dir, "/vocab.json"), VOCAB),
            (concat!($dir, "/merges.txt"), MERGES),
            (
                concat!($dir, "/tokenizer_config.json"),
                asset!("clip-tokenizer/", $pad, "/tokenizer_config.json"),
            ),
            (
                concat!($dir, "/special_tokens_map.json"),
                asset!("clip-tokenizer/", $pad, "/special_tokens_map.json"),
            ),
        ]
    };
}

/// The component configs of repo folder `$repo` under `assets/configs/`.
macro_rules! configs {
    ($repo:literal) => {
        [
            (
                "model_index.json",
                asset!("configs/", $repo, "/model_index.json"),
            ),
            (
                "unet/config.json",
                asset!("configs/", $repo, "/unet/config.json"),
            ),
            (
                "vae/config.json",
                asset!("configs/", $repo, "/vae/config.json"),
            ),
            (
                "text_encoder/config.json",
                asset!("configs/", $repo, "/text_encoder/config.json"),
            ),
            (
                "scheduler/scheduler_config.json",
                asset!("configs/", $repo, "/scheduler/scheduler_config.json"),
            ),
        ]
    };
}

const fn join<const A: usize, const B: usize, const N: usize>(
    a: [(&'static str, &'static str); A],
    b: [(&'static str, &'static str); B],
) -> [(&'static str, &'static str); N] {
    let mut out = [("", ""); N];
    let mut i = 0;
    while i < A {
        out[i] = a[i];
        i += 1;
    }
    while i < A + B {
        out[i] = b[i - A];
        i += 1;
    }
    out
}

const SD15_FILES: [(&str, &str); 9] = join(
    configs!("stable-diffusion-v1-5"),
    tokenizer!("tokenizer", "endoftext-pad"),
);
const SD21_FILES: [(&str, &str); 9] = join(
    configs!("stable-diffusion-2-1"),
    tokenizer!("tokenizer", "bang-pad"),
);
const SD21_BASE_FILES: [(&str, &str); 9] = join(
    configs!("stable-diffusion-2-1-base"),
    tokenizer!("tokenizer", "bang-pad"),
);
const SDXL_TOKENIZERS: [(&str, &str); 9] = join(
    tokenizer!("tokenizer", "endoftext-pad"),
    join::<4, 1, 5>(
        tokenizer!("tokenizer_2", "bang-pad"),
        [(
            "text_encoder_2/config.json",
            asset!("configs/stable-diffusion-xl-base-1.0/text_encoder_2/config.json"),
        )],
    ),
);
const SDXL_FILES: [(&str, &str); 14] =
    join(configs!("stable-diffusion-xl-base-1.0"), SDXL_TOKENIZERS);

/// SD 1.5: PNDM, 512×512, CLIP ViT-L/14.
pub static SD15: BuiltinConfig = BuiltinConfig {
    repo: "stable-diffusion-v1-5/stable-diffusion-v1-5",
    aliases: &["runwayml/stable-diffusion-v1-5"],
    files: &SD15_FILES,
};

/// SD 2.1 768-v: DDIM with v-prediction, 768×768, OpenCLIP ViT-H/14 (23 layers), upcast attention.
pub static SD21: BuiltinConfig = BuiltinConfig {
    repo: "stabilityai/stable-diffusion-2-1",
    aliases: &[],
    files: &SD21_FILES,
};

/// SD 2.1 base: PNDM with epsilon prediction, 512×512.
pub static SD21_BASE: BuiltinConfig = BuiltinConfig {
    repo: "stabilityai/stable-diffusion-2-1-base",
    aliases: &[],
    files: &SD21_BASE_FILES,
};

/// SDXL base 1.0: Euler, 1024×1024, CLIP ViT-L/14 and OpenCLIP ViT-bigG/14, VAE scaling 0.13025.
pub static SDXL_BASE: BuiltinConfig = BuiltinConfig {
    repo: "stabilityai/stable-diffusion-xl-base-1.0",
    aliases: &[],
    files: &SDXL_FILES,
};

/// Every embedded configuration.
pub static ALL: [&BuiltinConfig; 4] = [&SD15, &SD21, &SD21_BASE, &SDXL_BASE];

/// The configuration diffusers uses for `kind` when no `config=` is given, if it is embedded (the
/// inpainting repos' configurations are not).
pub fn default_for(kind: CheckpointKind) -> Option<&'static BuiltinConfig> {
    ALL.iter()
        .copied()
        .find(|c| c.is_named(kind.default_config_repo()))
}

/// The embedded configuration of Hub id `id`, if there is one.
pub fn named(id: &str) -> Option<&'static BuiltinConfig> {
    ALL.iter().copied().find(|c| c.is_named(id))
}
