//! `UNet2DConditionModel`: the denoiser, conditioned on the timestep and, by cross-attention, on the text.

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;

use crate::device::Quantization;
use crate::kernels::group_norm::{group_norm, GroupNorm};
use crate::kernels::linear::{linear, Linear};

use super::blocks::{BlockSpec, DownBlock, MidBlock, UpBlock};
use super::config::UNet2DConditionConfig;
use crate::models::activations::Activation;
use crate::models::conv::Conv2d;
use crate::models::embeddings::{timestep_embedding, TimestepEmbedding};
use crate::models::resnet::ResnetConfig;
use crate::models::transformer_2d::Transformer2DConfig;
use crate::{Error, Result};

const FILE: &str = "unet/config.json";

/// Conditioning beyond the timestep and the text embeddings.
#[derive(Debug, Clone, Default)]
pub struct ExtraConditioning {
    /// SDXL's pooled text embedding (`text_embeds`): `[batch, dim]`.
    pub text_embeds: Option<Tensor>,
    /// SDXL's micro-conditioning (`time_ids`): `[batch, 6]`.
    pub time_ids: Option<Tensor>,
    /// LCM's guidance embedding (`timestep_cond`): `[batch, time_cond_proj_dim]`.
    pub timestep_cond: Option<Tensor>,
    /// The class labels of a UNet with `class_embed_type: "simple_projection"` (AudioLDM's normalised text
    /// embeddings): `[batch, projection_class_embeddings_input_dim]`.
    pub class_labels: Option<Tensor>,
}

struct TextTimeEmbedding {
    time_dim: usize,
    embedding: TimestepEmbedding,
}

/// The UNet, built from its diffusers config and weights.
pub struct UNet2DConditionModel {
    conv_in: Conv2d,
    time_embedding: TimestepEmbedding,
    add_embedding: Option<TextTimeEmbedding>,
    class_embedding: Option<Linear>,
    time_embed_act: Option<Activation>,
    down_blocks: Vec<DownBlock>,
    mid_block: Option<MidBlock>,
    up_blocks: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_act: Activation,
    conv_out: Conv2d,
    config: UNet2DConditionConfig,
    quantization: Option<Quantization>,
}

fn reject<T: std::fmt::Display>(key: &str, value: T, expected: &str) -> Error {
    Error::unsupported(FILE, key, value, expected)
}

fn parse_act(name: &Option<String>, key: &str) -> Result<Option<Activation>> {
    name.as_deref()
        .map(|n| Activation::parse(n, FILE, key))
        .transpose()
}

/// Rejects every config value that changes the math in a way this implementation does not reproduce.
fn check_supported(cfg: &UNet2DConditionConfig) -> Result<()> {
    if cfg
        .num_attention_heads
        .as_ref()
        .is_some_and(|v| !v.is_null())
    {
        return Err(reject(
            "num_attention_heads",
            cfg.num_attention_heads.clone().unwrap_or_default(),
            "null (diffusers reads the head count from `attention_head_dim`)",
        ));
    }
    if cfg.resnet_time_scale_shift != "default" {
        return Err(reject(
            "resnet_time_scale_shift",
            &cfg.resnet_time_scale_shift,
            "\"default\"",
        ));
    }
    if cfg.time_embedding_type != "positional" {
        return Err(reject(
            "time_embedding_type",
            &cfg.time_embedding_type,
            "\"positional\"",
        ));
    }
    if cfg.attention_type != "default" {
        return Err(reject("attention_type", &cfg.attention_type, "\"default\""));
    }
    match cfg.class_embed_type.as_deref() {
        None | Some("simple_projection") => {}
        Some(other) => {
            return Err(reject(
                "class_embed_type",
                other,
                "null or \"simple_projection\"",
            ))
        }
    }
    if cfg.class_embeddings_concat && cfg.class_embed_type.is_none() {
        return Err(reject(
            "class_embeddings_concat",
            true,
            "false without a class_embed_type",
        ));
    }
    if let Some(v) = cfg.num_class_embeds {
        return Err(reject("num_class_embeds", v, "null"));
    }
    if let Some(v) = &cfg.encoder_hid_dim_type {
        return Err(reject("encoder_hid_dim_type", v, "null"));
    }
    if let Some(v) = &cfg.cross_attention_norm {
        return Err(reject("cross_attention_norm", v, "null"));
    }
    if cfg.dual_cross_attention {
        return Err(reject("dual_cross_attention", true, "false"));
    }
    if cfg
        .reverse_transformer_layers_per_block
        .as_ref()
        .is_some_and(|v| !v.is_null())
    {
        return Err(reject(
            "reverse_transformer_layers_per_block",
            "a list",
            "null (asymmetric UNets are not supported)",
        ));
    }
    match cfg.addition_embed_type.as_deref() {
        None | Some("text_time") => {}
        Some(other) => {
            return Err(reject(
                "addition_embed_type",
                other,
                "null or \"text_time\"",
            ))
        }
    }
    if cfg.norm_num_groups.is_none() {
        return Err(reject("norm_num_groups", "null", "an integer"));
    }
    if cfg.conv_in_kernel.is_multiple_of(2) || cfg.conv_out_kernel.is_multiple_of(2) {
        return Err(reject(
            "conv_in_kernel/conv_out_kernel",
            format!("{}/{}", cfg.conv_in_kernel, cfg.conv_out_kernel),
            "odd kernel sizes",
        ));
    }
    let blocks = cfg.down_block_types.len();
    if blocks == 0 || cfg.up_block_types.len() != blocks || cfg.block_out_channels.len() != blocks {
        return Err(reject(
            "down_block_types/up_block_types/block_out_channels",
            format!(
                "{}/{}/{} entries",
                blocks,
                cfg.up_block_types.len(),
                cfg.block_out_channels.len()
            ),
            "the same non-zero number of entries in each",
        ));
    }
    Ok(())
}

fn is_cross_attn(kind: &str, key: &str, plain: &str, cross: &str) -> Result<bool> {
    if kind == plain {
        Ok(false)
    } else if kind == cross {
        Ok(true)
    } else {
        Err(reject(key, kind, &format!("\"{plain}\" or \"{cross}\"")))
    }
}

impl UNet2DConditionModel {
    /// Builds the UNet from weights under `vb` (the root of `diffusion_pytorch_model.safetensors`).
    pub fn new(vb: VarBuilder, cfg: &UNet2DConditionConfig) -> Result<Self> {
        check_supported(cfg)?;
        let n = cfg.down_block_types.len();
        let channels = &cfg.block_out_channels;
        let heads = cfg
            .attention_head_dim
            .expand(n, FILE, "attention_head_dim")?;
        let cross_dims = cfg
            .cross_attention_dim
            .expand(n, FILE, "cross_attention_dim")?;
        let layers = cfg.layers_per_block.expand(n, FILE, "layers_per_block")?;
        let depths =
            cfg.transformer_layers_per_block
                .expand(n, FILE, "transformer_layers_per_block")?;
        let only_cross = cfg
            .only_cross_attention
            .expand(n, FILE, "only_cross_attention")?;
        let groups = cfg.norm_num_groups.unwrap_or(32);
        let act = Activation::parse(&cfg.act_fn, FILE, "act_fn")?;
        for (i, (&c, &h)) in channels.iter().zip(&heads).enumerate() {
            if h == 0 || c % h != 0 {
                return Err(reject(
                    "attention_head_dim",
                    format!("{h} heads for block {i}"),
                    &format!("a divisor of the block's {c} channels"),
                ));
            }
            if c % groups != 0 {
                return Err(reject(
                    "norm_num_groups",
                    groups,
                    &format!("a divisor of every block's channels ({c} in block {i})"),
                ));
            }
        }

        let c0 = channels[0];
        let time_embed_dim = cfg.time_embedding_dim.unwrap_or(4 * c0);
        let conv_in = Conv2d::new(
            vb.pp("conv_in"),
            cfg.in_channels,
            c0,
            cfg.conv_in_kernel,
            (cfg.conv_in_kernel - 1) / 2,
            1,
        )?;
        let time_embedding = TimestepEmbedding::new(
            vb.pp("time_embedding"),
            c0,
            time_embed_dim,
            act,
            parse_act(&cfg.timestep_post_act, "timestep_post_act")?,
            cfg.time_cond_proj_dim,
        )?;
        let add_embedding = if cfg.addition_embed_type.as_deref() == Some("text_time") {
            let time_dim = cfg.addition_time_embed_dim.ok_or_else(|| {
                reject(
                    "addition_time_embed_dim",
                    "null",
                    "an integer with addition_embed_type text_time",
                )
            })?;
            let input = cfg.projection_class_embeddings_input_dim.ok_or_else(|| {
                reject(
                    "projection_class_embeddings_input_dim",
                    "null",
                    "an integer with addition_embed_type text_time",
                )
            })?;
            Some(TextTimeEmbedding {
                time_dim,
                embedding: TimestepEmbedding::new(
                    vb.pp("add_embedding"),
                    input,
                    time_embed_dim,
                    Activation::Silu,
                    None,
                    None,
                )?,
            })
        } else {
            None
        };

        let class_embedding = match cfg.class_embed_type.as_deref() {
            Some(_) => {
                let input = cfg.projection_class_embeddings_input_dim.ok_or_else(|| {
                    reject(
                        "projection_class_embeddings_input_dim",
                        "null",
                        "an integer with class_embed_type simple_projection",
                    )
                })?;
                Some(linear(input, time_embed_dim, vb.pp("class_embedding"))?)
            }
            None => None,
        };
        // With `class_embeddings_concat`, the resnets take the time and class embeddings side by side.
        let blocks_time_embed_dim = if cfg.class_embeddings_concat {
            2 * time_embed_dim
        } else {
            time_embed_dim
        };
        let resnet = |scale: f64| ResnetConfig {
            in_channels: 0,
            out_channels: 0,
            temb_channels: Some(blocks_time_embed_dim),
            groups,
            eps: cfg.norm_eps,
            act,
            output_scale_factor: scale,
        };
        let transformer = |i: usize, c: usize, depth: usize, only: bool| Transformer2DConfig {
            channels: c,
            heads: heads[i],
            layers: depth,
            cross_attention_dim: cross_dims[i],
            norm_groups: groups,
            use_linear_projection: cfg.use_linear_projection,
            only_cross_attention: only,
            upcast_attention: cfg.upcast_attention,
        };

        let mut down_blocks = Vec::with_capacity(n);
        let mut skip_channels = vec![c0];
        for (i, kind) in cfg.down_block_types.iter().enumerate() {
            let cross = is_cross_attn(
                kind,
                "down_block_types",
                "DownBlock2D",
                "CrossAttnDownBlock2D",
            )?;
            let input = if i == 0 { c0 } else { channels[i - 1] };
            let spec = BlockSpec {
                layers: layers[i],
                resnet: resnet(cfg.resnet_out_scale_factor),
                transformer: cross.then(|| transformer(i, channels[i], depths[i], only_cross[i])),
                resample: i + 1 < n,
            };
            down_blocks.push(DownBlock::new(
                vb.pp("down_blocks").pp(i),
                &spec,
                input,
                channels[i],
                cfg.downsample_padding,
            )?);
            skip_channels.extend(std::iter::repeat_n(
                channels[i],
                layers[i] + usize::from(i + 1 < n),
            ));
        }

        let last = n - 1;
        let mid_resnet = ResnetConfig {
            in_channels: channels[last],
            out_channels: channels[last],
            ..resnet(cfg.mid_block_scale_factor)
        };
        let mid_block = match cfg.mid_block_type.as_deref() {
            None => None,
            Some("UNetMidBlock2DCrossAttn") => Some(MidBlock::new(
                vb.pp("mid_block"),
                mid_resnet,
                Some(&transformer(last, channels[last], depths[last], false)),
            )?),
            Some("UNetMidBlock2D") => Some(MidBlock::new(vb.pp("mid_block"), mid_resnet, None)?),
            Some(other) => {
                return Err(reject(
                    "mid_block_type",
                    other,
                    "\"UNetMidBlock2DCrossAttn\", \"UNetMidBlock2D\" or null",
                ))
            }
        };

        let mut up_blocks = Vec::with_capacity(n);
        let mut prev_output = channels[last];
        for (i, kind) in cfg.up_block_types.iter().enumerate() {
            let r = last - i;
            let cross = is_cross_attn(kind, "up_block_types", "UpBlock2D", "CrossAttnUpBlock2D")?;
            let block_layers = layers[r] + 1;
            let skips: Vec<usize> = (0..block_layers)
                .map(|_| skip_channels.pop().unwrap_or(0))
                .collect();
            let spec = BlockSpec {
                layers: block_layers,
                resnet: resnet(cfg.resnet_out_scale_factor),
                transformer: cross.then(|| transformer(r, channels[r], depths[r], only_cross[r])),
                resample: i < last,
            };
            up_blocks.push(UpBlock::new(
                vb.pp("up_blocks").pp(i),
                &spec,
                prev_output,
                channels[r],
                &skips,
            )?);
            prev_output = channels[r];
        }

        let conv_out = Conv2d::new(
            vb.pp("conv_out"),
            c0,
            cfg.out_channels,
            cfg.conv_out_kernel,
            (cfg.conv_out_kernel - 1) / 2,
            1,
        )?;
        Ok(Self {
            quantization: crate::kernels::int8::current(),
            conv_in,
            time_embedding,
            add_embedding,
            class_embedding,
            time_embed_act: parse_act(&cfg.time_embedding_act_fn, "time_embedding_act_fn")?,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out: group_norm(groups, c0, cfg.norm_eps, vb.pp("conv_norm_out"))?,
            conv_act: act,
            conv_out,
            config: cfg.clone(),
        })
    }

    /// The configuration the model was built from.
    pub fn config(&self) -> &UNet2DConditionConfig {
        &self.config
    }

    /// How its linear layers and convolutions were quantized when it was built (none: its dtype).
    pub fn quantization(&self) -> Option<Quantization> {
        self.quantization
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        self.conv_in.weight().device()
    }

    /// The dtype the weights are held in.
    pub fn dtype(&self) -> DType {
        self.conv_in.weight().dtype()
    }

    /// Predicts the noise (or v, or x₀, per the scheduler's `prediction_type`) for `sample` (`[batch, in, h, w]`)
    /// at `timestep` (`[batch]` or a single value, any float dtype) given the text `context`
    /// (`[batch, tokens, cross_attention_dim]`; none for a UNet conditioned by class labels only, as AudioLDM's).
    pub fn forward(
        &self,
        sample: &Tensor,
        timestep: &Tensor,
        context: Option<&Tensor>,
        extra: &ExtraConditioning,
    ) -> Result<Tensor> {
        let (batch, channels, height, width) = sample.dims4()?;
        if channels != self.config.in_channels {
            return Err(Error::invalid(
                "sample",
                format!(
                    "{channels} channels, but the UNet takes {} (unet/config.json in_channels)",
                    self.config.in_channels
                ),
            ));
        }
        let dtype = self.dtype();
        let timesteps = match timestep.elem_count() {
            1 => timestep.flatten_all()?.repeat(batch)?,
            n if n == batch => timestep.flatten_all()?,
            n => {
                return Err(Error::invalid(
                    "timestep",
                    format!("{n} values for a batch of {batch}"),
                ))
            }
        };
        let t_emb = timestep_embedding(
            &timesteps,
            self.config.block_out_channels[0],
            self.config.flip_sin_to_cos,
            self.config.freq_shift,
        )?
        .to_dtype(dtype)?;
        let mut emb = self
            .time_embedding
            .forward(&t_emb, extra.timestep_cond.as_ref())?;
        if let Some(class_embedding) = &self.class_embedding {
            let labels = extra.class_labels.as_ref().ok_or_else(|| {
                Error::invalid(
                    "class_labels",
                    "required by a UNet with class_embed_type \"simple_projection\"",
                )
            })?;
            let class_emb = class_embedding.forward(&labels.to_dtype(dtype)?)?;
            emb = if self.config.class_embeddings_concat {
                Tensor::cat(&[&emb, &class_emb], 1)?
            } else {
                (emb + class_emb)?
            };
        }
        if let Some(add) = &self.add_embedding {
            emb = (emb + self.text_time_embedding(add, extra, batch, dtype)?)?;
        }
        if let Some(act) = self.time_embed_act {
            emb = act.forward(&emb)?;
        }

        let sample = if self.config.center_input_sample {
            sample.affine(2.0, -1.0)?
        } else {
            sample.clone()
        };
        let mut x = self.conv_in.forward(&sample)?;
        let mut skips = vec![x.clone()];
        for block in &self.down_blocks {
            x = block.forward(&x, &emb, context, &mut skips)?;
        }
        if let Some(mid) = &self.mid_block {
            x = mid.forward(&x, &emb, context)?;
        }

        let factor = 1usize << (self.up_blocks.len().saturating_sub(1));
        let forward_upsample_size = height % factor != 0 || width % factor != 0;
        let last = self.up_blocks.len() - 1;
        for (i, block) in self.up_blocks.iter().enumerate() {
            let upsample_size = if i < last && forward_upsample_size {
                let remaining = skips.len().saturating_sub(block.skip_count());
                skips
                    .get(remaining.wrapping_sub(1))
                    .map(|t| t.dims4().map(|(_, _, h, w)| (h, w)))
                    .transpose()?
            } else {
                None
            };
            x = block.forward(&x, &emb, context, &mut skips, upsample_size)?;
        }
        let x = self.conv_norm_out.forward_act(&x, self.conv_act)?;
        Ok(self.conv_out.forward(&x)?)
    }

    fn text_time_embedding(
        &self,
        add: &TextTimeEmbedding,
        extra: &ExtraConditioning,
        batch: usize,
        dtype: DType,
    ) -> Result<Tensor> {
        let missing = |name: &str| {
            Error::invalid(
                name,
                "required by a UNet with addition_embed_type \"text_time\" (SDXL)",
            )
        };
        let text_embeds = extra
            .text_embeds
            .as_ref()
            .ok_or_else(|| missing("text_embeds"))?;
        let time_ids = extra.time_ids.as_ref().ok_or_else(|| missing("time_ids"))?;
        let time_embeds = timestep_embedding(
            &time_ids.flatten_all()?,
            add.time_dim,
            self.config.flip_sin_to_cos,
            self.config.freq_shift,
        )?
        .reshape((batch, ()))?;
        let add_embeds =
            Tensor::cat(&[text_embeds.to_dtype(DType::F32)?, time_embeds], 1)?.to_dtype(dtype)?;
        Ok(add.embedding.forward(&add_embeds, None)?)
    }
}
