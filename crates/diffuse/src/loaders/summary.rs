//! A description of a pipeline folder or single-file checkpoint: its components, their key config values,
//! parameter counts and the dtypes their weights are stored in (what `diffuse info PATH` prints).

use std::collections::BTreeMap;
use std::fmt;

use super::folder::PipelineFolder;
use super::weights::Variant;
use crate::Result;

/// One component of a pipeline folder.
#[derive(Debug, Clone)]
pub struct ComponentSummary {
    /// The subfolder name (`unet`, `vae`, `text_encoder`, ...).
    pub name: String,
    /// The library and class `model_index.json` gives it.
    pub class: (String, String),
    /// Parameters stored, when the component has weights.
    pub parameters: Option<u64>,
    /// Stored dtype → parameter count.
    pub stored_dtypes: BTreeMap<String, u64>,
    /// Key configuration values, in display order.
    pub details: Vec<(String, String)>,
}

/// A pipeline folder, described.
#[derive(Debug, Clone)]
pub struct PipelineSummary {
    /// The folder.
    pub path: String,
    /// The pipeline class.
    pub class_name: String,
    /// For a single-file checkpoint: the model detected and where its configurations come from.
    pub origin: Option<String>,
    /// The diffusers version that wrote it, if recorded.
    pub diffusers_version: Option<String>,
    /// Every component listed in `model_index.json`.
    pub components: Vec<ComponentSummary>,
}

fn weights_summary(
    folder: &PipelineFolder,
    name: &str,
) -> Result<(Option<u64>, BTreeMap<String, u64>)> {
    let files = folder.weight_files(name, Variant::Default)?;
    let mut dtypes = BTreeMap::new();
    let mut total = 0u64;
    for (_, shape, dtype) in files.stored() {
        // Integer buffers (transformers' `position_ids`, `token_type_ids`) are not parameters.
        use safetensors::Dtype;
        if !matches!(dtype, Dtype::F16 | Dtype::BF16 | Dtype::F32 | Dtype::F64) {
            continue;
        }
        let count = shape.iter().product::<usize>() as u64;
        total += count;
        *dtypes
            .entry(format!("{dtype:?}").to_lowercase())
            .or_insert(0) += count;
    }
    Ok((Some(total), dtypes))
}

fn list<T: fmt::Debug>(v: &T) -> String {
    format!("{v:?}")
}

fn opt<T: fmt::Display>(v: &Option<T>) -> String {
    v.as_ref().map_or_else(|| "-".to_string(), T::to_string)
}

fn component_details(folder: &PipelineFolder, name: &str) -> Result<Vec<(String, String)>> {
    let pair = |k: &str, v: String| (k.to_string(), v);
    Ok(match name {
        "unet" => {
            let c = folder.unet_config()?;
            vec![
                pair("in_channels", c.in_channels.to_string()),
                pair("sample_size", opt(&c.sample_size.as_ref())),
                pair("block_out_channels", list(&c.block_out_channels)),
                pair("layers_per_block", c.layers_per_block.to_string()),
                pair("attention_head_dim", c.attention_head_dim.to_string()),
                pair("cross_attention_dim", c.cross_attention_dim.to_string()),
                pair(
                    "transformer_layers_per_block",
                    c.transformer_layers_per_block.to_string(),
                ),
                pair("use_linear_projection", c.use_linear_projection.to_string()),
                pair("addition_embed_type", opt(&c.addition_embed_type)),
                pair("time_cond_proj_dim", opt(&c.time_cond_proj_dim)),
            ]
        }
        "vae" => {
            let c = folder.vae_config()?;
            vec![
                pair("block_out_channels", list(&c.block_out_channels)),
                pair("latent_channels", c.latent_channels.to_string()),
                pair("scale_factor", c.scale_factor().to_string()),
                pair("scaling_factor", c.scaling_factor.to_string()),
                pair("shift_factor", opt(&c.shift_factor)),
                pair("force_upcast", c.force_upcast.to_string()),
            ]
        }
        n if n.starts_with("text_encoder")
            && folder.index().class_of(n) == Some("ClapTextModelWithProjection") =>
        {
            let c: crate::models::clap::ClapTextConfig = folder.read_config(n, "config.json")?;
            vec![
                pair("hidden_size", c.hidden_size.to_string()),
                pair("num_hidden_layers", c.num_hidden_layers.to_string()),
                pair("num_attention_heads", c.num_attention_heads.to_string()),
                pair("hidden_act", c.hidden_act.clone()),
                pair("projection_dim", c.projection_dim.to_string()),
                pair("vocab_size", c.vocab_size.to_string()),
            ]
        }
        "vocoder" => {
            let c = folder.vocoder_config()?;
            vec![
                pair("model_in_dim", c.model_in_dim.to_string()),
                pair("sampling_rate", c.sampling_rate.to_string()),
                pair("upsample_rates", list(&c.upsample_rates)),
                pair(
                    "upsample_initial_channel",
                    c.upsample_initial_channel.to_string(),
                ),
                pair("normalize_before", c.normalize_before.to_string()),
            ]
        }
        n if n.starts_with("text_encoder") => {
            let c = folder.text_encoder_config(n)?;
            vec![
                pair("hidden_size", c.hidden_size.to_string()),
                pair("num_hidden_layers", c.num_hidden_layers.to_string()),
                pair("num_attention_heads", c.num_attention_heads.to_string()),
                pair("hidden_act", c.hidden_act.clone()),
                pair("projection_dim", opt(&c.projection_dim)),
                pair("vocab_size", c.vocab_size.to_string()),
            ]
        }
        _ => Vec::new(),
    })
}

impl PipelineSummary {
    /// Describes `folder` (or single-file checkpoint), reading every component's config and weight headers
    /// (not the weights).
    pub fn of(folder: &PipelineFolder) -> Result<Self> {
        let mut components = Vec::new();
        for (name, class) in &folder.index().components {
            let has_weights = name == "unet"
                || name == "vae"
                || name == "vocoder"
                || name.starts_with("text_encoder");
            let (parameters, stored_dtypes) = if has_weights {
                weights_summary(folder, name)?
            } else {
                (None, BTreeMap::new())
            };
            components.push(ComponentSummary {
                name: name.clone(),
                class: class.clone(),
                parameters,
                stored_dtypes,
                details: component_details(folder, name)?,
            });
        }
        let origin = folder.single_file().map(|file| {
            format!(
                "single-file checkpoint: {}; configured by {}",
                file.kind(),
                folder.config_source().label().display()
            )
        });
        Ok(Self {
            path: folder.root().display().to_string(),
            class_name: folder.index().class_name.clone(),
            origin,
            diffusers_version: folder.index().diffusers_version.clone(),
            components,
        })
    }
}

impl fmt::Display for PipelineSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.class_name)?;
        if let Some(v) = &self.diffusers_version {
            write!(f, " (written by diffusers {v})")?;
        }
        writeln!(f)?;
        if let Some(origin) = &self.origin {
            writeln!(f, "  {origin}")?;
        }
        for c in &self.components {
            write!(f, "  {:<15} {}.{}", c.name, c.class.0, c.class.1)?;
            if let Some(p) = c.parameters {
                let dtypes: Vec<String> = c.stored_dtypes.keys().cloned().collect();
                write!(
                    f,
                    "  {} parameters, stored as {}",
                    human(p),
                    dtypes.join("+")
                )?;
            }
            writeln!(f)?;
            for (k, v) in &c.details {
                writeln!(f, "      {k:<29} {v}")?;
            }
        }
        Ok(())
    }
}

fn human(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2}B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.1}M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1}K", n as f64 / 1e3),
        n => n.to_string(),
    }
}
