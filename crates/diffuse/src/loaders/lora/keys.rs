//! A LoRA file's keys grouped into modules: which model and layer each changes, the tensors that make its
//! delta, and the scale the delta is multiplied by.

use std::collections::BTreeMap;

use super::LoraFormat;

/// The model a module changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Component {
    /// The UNet.
    Unet,
    /// SD's text encoder, or SDXL's first.
    TextEncoder,
    /// SDXL's second text encoder.
    TextEncoder2,
}

impl Component {
    /// The pipeline folder's name for it.
    pub(crate) fn folder_name(self) -> &'static str {
        match self {
            Self::Unet => "unet",
            Self::TextEncoder => "text_encoder",
            Self::TextEncoder2 => "text_encoder_2",
        }
    }
}

/// A layer's name as the file spells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ModuleName {
    /// kohya's: the module path with `_` for `.` (`down_blocks_0_attentions_0_proj_in`, or SGM's
    /// `input_blocks_1_1_proj_in`).
    Flat(String),
    /// diffusers'/PEFT's module path (`down_blocks.0.attentions.0.proj_in`).
    Dotted(String),
}

/// How a module's delta is scaled before the user's weight.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Scale {
    /// kohya's and LyCORIS's `alpha / rank`, 1 without an alpha; the rank is read from the tensors.
    Alpha(Option<f64>),
    /// Already known (PEFT: `lora_alpha / r` from the adapter metadata).
    Fixed(f64),
}

/// One of LoKr's two Kronecker factors: stored whole, or as a low-rank product `a · b`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Factor {
    /// The factor itself.
    Whole(String),
    /// `a` `[rows, rank]` and `b` `[rank, cols…]`.
    Product(String, String),
}

/// What makes a module's delta (tensor names in the file).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Kind {
    /// LoRA / LoCon: `up · down` (through `mid`, LoCon's Tucker core, when present), plus a bias delta.
    LowRank {
        down: String,
        up: String,
        mid: Option<String>,
        bias: Option<String>,
    },
    /// LoHa: `(w1a · w1b) ⊙ (w2a · w2b)`, each product through its Tucker core when present.
    LoHa {
        w1a: String,
        w1b: String,
        w2a: String,
        w2b: String,
        t1: Option<String>,
        t2: Option<String>,
    },
    /// LoKr: `w1 ⊗ w2`, `w2` through its Tucker core when present.
    LoKr {
        w1: Factor,
        w2: Factor,
        t2: Option<String>,
    },
    /// A full weight difference (LyCORIS `diff`), with an optional bias difference.
    Full { diff: String, bias: Option<String> },
}

/// One changed layer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Module {
    /// The model it changes.
    pub component: Component,
    /// The layer, as the file names it.
    pub name: ModuleName,
    /// The key prefix in the file (for messages).
    pub key: String,
    /// The tensors of the delta.
    pub kind: Kind,
    /// The delta's scale.
    pub scale: Scale,
}

/// A key the reader cannot use, and why.
#[derive(Debug)]
pub(crate) struct KeyError {
    pub tensor: String,
    pub message: String,
}

impl KeyError {
    pub(crate) fn new(tensor: &str, message: impl Into<String>) -> Self {
        Self {
            tensor: tensor.to_string(),
            message: message.into(),
        }
    }
}

type Parsed = Result<(LoraFormat, Vec<Module>), KeyError>;

/// Groups the file's keys (with their shapes) into modules.
pub(crate) fn parse(
    shapes: &BTreeMap<String, Vec<usize>>,
    metadata: &BTreeMap<String, String>,
    scalar: &dyn Fn(&str) -> Result<f64, KeyError>,
) -> Parsed {
    let Some(first) = shapes.keys().next() else {
        return Err(KeyError::new("(header)", "the file holds no tensors"));
    };
    let kohya = |k: &str| {
        ["lora_unet_", "lora_te_", "lora_te1_", "lora_te2_"]
            .iter()
            .any(|p| k.starts_with(p))
    };
    if kohya(first) {
        if let Some(other) = shapes.keys().find(|k| !kohya(k)) {
            return Err(KeyError::new(
                other,
                "not a kohya LoRA key (`lora_unet_…`, `lora_te_…`, `lora_te1_…`, `lora_te2_…`) in a kohya file",
            ));
        }
        return Ok((LoraFormat::Kohya, kohya_modules(shapes, scalar)?));
    }
    Ok((
        LoraFormat::Diffusers,
        diffusers_modules(shapes, metadata, scalar)?,
    ))
}

fn kohya_modules(
    shapes: &BTreeMap<String, Vec<usize>>,
    scalar: &dyn Fn(&str) -> Result<f64, KeyError>,
) -> Result<Vec<Module>, KeyError> {
    let mut groups: BTreeMap<&str, BTreeMap<&str, &str>> = BTreeMap::new();
    for key in shapes.keys() {
        let (prefix, suffix) = key.split_once('.').unwrap_or((key, ""));
        groups.entry(prefix).or_default().insert(suffix, key);
    }
    let mut modules = Vec::new();
    for (prefix, parts) in groups {
        let (component, flat) = [
            ("lora_unet_", Component::Unet),
            ("lora_te1_", Component::TextEncoder),
            ("lora_te2_", Component::TextEncoder2),
            ("lora_te_", Component::TextEncoder),
        ]
        .iter()
        .find_map(|(p, c)| prefix.strip_prefix(p).map(|rest| (*c, rest)))
        .ok_or_else(|| KeyError::new(prefix, "not a kohya LoRA module name"))?;
        let full = |suffix: &str| format!("{prefix}.{suffix}");
        for suffix in parts.keys() {
            if !KOHYA_SUFFIXES.contains(suffix) {
                let why = match *suffix {
                    "dora_scale" => "DoRA (weight-decomposed LoRA) is not supported".to_string(),
                    "on_input" | "weight" => "(IA)³ adapters are not supported".to_string(),
                    _ => format!(
                        "unknown part `{suffix}` (expected one of {})",
                        KOHYA_SUFFIXES.join(", ")
                    ),
                };
                return Err(KeyError::new(&full(suffix), why));
            }
        }
        let has = |suffix: &str| parts.contains_key(suffix);
        let name = |suffix: &str| has(suffix).then(|| full(suffix));
        let need = |suffix: &str| {
            name(suffix).ok_or_else(|| {
                KeyError::new(&full(suffix), "missing: the module's other tensors need it")
            })
        };
        let kind = if has("lora_down.weight") || has("lora_up.weight") {
            Kind::LowRank {
                down: need("lora_down.weight")?,
                up: need("lora_up.weight")?,
                mid: name("lora_mid.weight"),
                bias: name("lora_up.bias"),
            }
        } else if has("hada_w1_a") || has("hada_w2_a") {
            Kind::LoHa {
                w1a: need("hada_w1_a")?,
                w1b: need("hada_w1_b")?,
                w2a: need("hada_w2_a")?,
                w2b: need("hada_w2_b")?,
                t1: name("hada_t1"),
                t2: name("hada_t2"),
            }
        } else if ["lokr_w1", "lokr_w1_a", "lokr_w2", "lokr_w2_a"]
            .iter()
            .any(|s| has(s))
        {
            let factor = |whole: &str, a: &str, b: &str| -> Result<Factor, KeyError> {
                match name(whole) {
                    Some(w) => Ok(Factor::Whole(w)),
                    None => Ok(Factor::Product(need(a)?, need(b)?)),
                }
            };
            Kind::LoKr {
                w1: factor("lokr_w1", "lokr_w1_a", "lokr_w1_b")?,
                w2: factor("lokr_w2", "lokr_w2_a", "lokr_w2_b")?,
                t2: name("lokr_t2"),
            }
        } else if has("diff") {
            Kind::Full {
                diff: full("diff"),
                bias: name("diff_b"),
            }
        } else {
            return Err(KeyError::new(
                &full(parts.keys().next().copied().unwrap_or("")),
                "a module with no weights (only an alpha)",
            ));
        };
        let alpha = name("alpha").map(|a| scalar(&a)).transpose()?;
        modules.push(Module {
            component,
            name: ModuleName::Flat(flat.to_string()),
            key: prefix.to_string(),
            kind,
            scale: Scale::Alpha(alpha),
        });
    }
    Ok(modules)
}

/// The parts of a kohya/LyCORIS module.
const KOHYA_SUFFIXES: [&str; 20] = [
    "lora_down.weight",
    "lora_up.weight",
    "lora_mid.weight",
    "lora_up.bias",
    "alpha",
    "hada_w1_a",
    "hada_w1_b",
    "hada_w2_a",
    "hada_w2_b",
    "hada_t1",
    "hada_t2",
    "lokr_w1",
    "lokr_w1_a",
    "lokr_w1_b",
    "lokr_w2",
    "lokr_w2_a",
    "lokr_w2_b",
    "lokr_t2",
    "diff",
    "diff_b",
];

/// diffusers' key endings: (ending, part). `_lora.` endings belong to the old attention-processor layout
/// (`attn1.processor.to_q_lora.down.weight`).
const DIFFUSERS_ENDINGS: [(&str, Part); 10] = [
    (".lora_A.weight", Part::Down),
    (".lora_B.weight", Part::Up),
    (".lora_B.bias", Part::UpBias),
    (".lora.down.weight", Part::Down),
    (".lora.up.weight", Part::Up),
    (".lora_linear_layer.down.weight", Part::Down),
    (".lora_linear_layer.up.weight", Part::Up),
    ("_lora.down.weight", Part::Down),
    ("_lora.up.weight", Part::Up),
    (".alpha", Part::Alpha),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Down,
    Up,
    UpBias,
    Alpha,
}

#[derive(Default)]
struct DiffusersModule {
    down: Option<String>,
    up: Option<String>,
    bias: Option<String>,
    alpha: Option<String>,
}

fn diffusers_modules(
    shapes: &BTreeMap<String, Vec<usize>>,
    metadata: &BTreeMap<String, String>,
    scalar: &dyn Fn(&str) -> Result<f64, KeyError>,
) -> Result<Vec<Module>, KeyError> {
    let mut grouped: BTreeMap<(Component, String), DiffusersModule> = BTreeMap::new();
    for key in shapes.keys() {
        if key.contains("lora_magnitude_vector") || key.ends_with("dora_scale") {
            return Err(KeyError::new(
                key,
                "DoRA (weight-decomposed LoRA) is not supported",
            ));
        }
        let Some((ending, part)) = DIFFUSERS_ENDINGS
            .iter()
            .find(|(ending, _)| key.ends_with(ending))
        else {
            return Err(KeyError::new(
                key,
                "not a LoRA key this reader knows: expected kohya's `lora_unet_…`/`lora_te…_…` or \
                 diffusers'/PEFT's `unet.…`/`text_encoder.…` ending in `.lora_A.weight`/`.lora_B.weight`",
            ));
        };
        let path = &key[..key.len() - ending.len()];
        let (component, path) = [
            ("unet.", Component::Unet),
            ("text_encoder_2.", Component::TextEncoder2),
            ("text_encoder.", Component::TextEncoder),
        ]
        .iter()
        .find_map(|(p, c)| path.strip_prefix(p).map(|rest| (*c, rest)))
        // diffusers' oldest files hold the UNet's attention processors alone, unprefixed.
        .unwrap_or((Component::Unet, path));
        let path = processor_path(path, ending);
        let entry = grouped.entry((component, path)).or_default();
        let slot = match part {
            Part::Down => &mut entry.down,
            Part::Up => &mut entry.up,
            Part::UpBias => &mut entry.bias,
            Part::Alpha => &mut entry.alpha,
        };
        *slot = Some(key.clone());
    }
    let config = AdapterMetadata::read(metadata)?;
    let mut modules = Vec::new();
    for ((component, path), parts) in grouped {
        let key = format!("{}.{path}", component.folder_name());
        let missing = |what: &str| KeyError::new(&key, format!("has no {what} tensor"));
        let down = parts.down.ok_or_else(|| missing("lora_A (down)"))?;
        let up = parts.up.ok_or_else(|| missing("lora_B (up)"))?;
        let rank = shapes
            .get(&down)
            .and_then(|s| s.first())
            .copied()
            .unwrap_or(0);
        let alpha = parts.alpha.as_deref().map(scalar).transpose()?;
        let scale = match config.get(&component) {
            Some(adapter) => Scale::Fixed(adapter.scale(&path)),
            None => Scale::Alpha(alpha.or(Some(rank as f64))),
        };
        modules.push(Module {
            component,
            name: ModuleName::Dotted(path),
            key,
            kind: Kind::LowRank {
                down,
                up,
                mid: None,
                bias: parts.bias,
            },
            scale,
        });
    }
    Ok(modules)
}

/// The module path of the old attention-processor layout, where `attn1.processor.to_q_lora` stands for
/// `attn1.to_q` (and `to_out_lora` for `to_out.0`).
fn processor_path(path: &str, ending: &str) -> String {
    if !ending.starts_with("_lora.") {
        return path.to_string();
    }
    let path = path.replace(".processor.", ".");
    match path.strip_suffix("to_out") {
        Some(head) => format!("{head}to_out.0"),
        None => path,
    }
}

/// One model's LoRA configuration from diffusers' `lora_adapter_metadata` (PEFT's `LoraConfig`).
#[derive(Debug, Clone)]
struct AdapterConfig {
    r: f64,
    lora_alpha: f64,
    rank_pattern: Vec<(regex::Regex, f64)>,
    alpha_pattern: Vec<(regex::Regex, f64)>,
    rslora: bool,
}

impl AdapterConfig {
    /// PEFT's scaling for `module`: `lora_alpha / r` (over √r with rsLoRA), either taken from the first
    /// pattern that matches the module's path.
    fn scale(&self, module: &str) -> f64 {
        let pick = |patterns: &[(regex::Regex, f64)], default: f64| {
            patterns
                .iter()
                .find(|(p, _)| p.is_match(module))
                .map_or(default, |(_, v)| *v)
        };
        let r = pick(&self.rank_pattern, self.r);
        let alpha = pick(&self.alpha_pattern, self.lora_alpha);
        if self.rslora {
            alpha / r.sqrt()
        } else {
            alpha / r
        }
    }
}

struct AdapterMetadata;

impl AdapterMetadata {
    /// The per-model configurations in `lora_adapter_metadata` (keys `unet.r`, `unet.lora_alpha`, …).
    fn read(
        metadata: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<Component, AdapterConfig>, KeyError> {
        let mut out = BTreeMap::new();
        let Some(text) = metadata.get("lora_adapter_metadata") else {
            return Ok(out);
        };
        let bad = |message: String| KeyError::new("(metadata lora_adapter_metadata)", message);
        let json: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(text).map_err(|e| bad(format!("not a JSON object: {e}")))?;
        for component in [
            Component::Unet,
            Component::TextEncoder,
            Component::TextEncoder2,
        ] {
            let field = |name: &str| json.get(&format!("{}.{name}", component.folder_name()));
            let number = |name: &str| field(name).and_then(serde_json::Value::as_f64);
            let Some(r) = number("r") else { continue };
            let patterns = |name: &str| -> Result<Vec<(regex::Regex, f64)>, KeyError> {
                let Some(map) = field(name).and_then(serde_json::Value::as_object) else {
                    return Ok(Vec::new());
                };
                map.iter()
                    .map(|(pattern, value)| {
                        // PEFT's match: the pattern at the end of the module path, on a `.` boundary.
                        let re = regex::Regex::new(&format!(r"^(?:.*\.)?(?:{pattern})$"))
                            .map_err(|e| bad(format!("{name} pattern `{pattern}`: {e}")))?;
                        let v = value
                            .as_f64()
                            .ok_or_else(|| bad(format!("{name} `{pattern}`: not a number")))?;
                        Ok((re, v))
                    })
                    .collect()
            };
            if r <= 0.0 {
                return Err(bad(format!(
                    "{}.r is {r}; a rank is positive",
                    component.folder_name()
                )));
            }
            out.insert(
                component,
                AdapterConfig {
                    r,
                    lora_alpha: number("lora_alpha").unwrap_or(r),
                    rank_pattern: patterns("rank_pattern")?,
                    alpha_pattern: patterns("alpha_pattern")?,
                    rslora: field("use_rslora")
                        .and_then(serde_json::Value::as_bool)
                        .unwrap_or(false),
                },
            );
        }
        Ok(out)
    }
}

impl PartialOrd for Component {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Component {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (*self as u8).cmp(&(*other as u8))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shapes(keys: &[&str]) -> BTreeMap<String, Vec<usize>> {
        keys.iter().map(|k| (k.to_string(), vec![4, 8])).collect()
    }

    fn no_scalar(_: &str) -> Result<f64, KeyError> {
        Ok(8.0)
    }

    #[test]
    fn kohya_modules_group_their_parts() {
        let (format, modules) = parse(
            &shapes(&[
                "lora_unet_down_blocks_0_attentions_0_proj_in.alpha",
                "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight",
                "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight",
                "lora_te2_text_model_encoder_layers_0_mlp_fc1.hada_w1_a",
                "lora_te2_text_model_encoder_layers_0_mlp_fc1.hada_w1_b",
                "lora_te2_text_model_encoder_layers_0_mlp_fc1.hada_w2_a",
                "lora_te2_text_model_encoder_layers_0_mlp_fc1.hada_w2_b",
            ]),
            &BTreeMap::new(),
            &no_scalar,
        )
        .unwrap();
        assert_eq!(format, LoraFormat::Kohya);
        assert_eq!(modules.len(), 2);
        assert_eq!(modules[0].component, Component::TextEncoder2);
        assert!(matches!(modules[0].kind, Kind::LoHa { .. }));
        assert_eq!(modules[0].scale, Scale::Alpha(None));
        assert_eq!(
            modules[1].name,
            ModuleName::Flat("down_blocks_0_attentions_0_proj_in".into())
        );
        assert_eq!(modules[1].scale, Scale::Alpha(Some(8.0)));
    }

    #[test]
    fn peft_modules_take_the_metadata_scale() {
        let mut metadata = BTreeMap::new();
        metadata.insert(
            "lora_adapter_metadata".to_string(),
            r#"{"unet.r": 4, "unet.lora_alpha": 8, "unet.alpha_pattern": {"^mid_block.attentions.0.proj_in": 2}}"#
                .to_string(),
        );
        let (format, modules) = parse(
            &shapes(&[
                "unet.mid_block.attentions.0.proj_in.lora_A.weight",
                "unet.mid_block.attentions.0.proj_in.lora_B.weight",
                "unet.up_blocks.0.attentions.0.proj_in.lora_A.weight",
                "unet.up_blocks.0.attentions.0.proj_in.lora_B.weight",
                "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight",
                "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight",
            ]),
            &metadata,
            &no_scalar,
        )
        .unwrap();
        assert_eq!(format, LoraFormat::Diffusers);
        let scale = |path: &str| {
            modules
                .iter()
                .find(|m| m.name == ModuleName::Dotted(path.into()))
                .unwrap()
                .scale
        };
        assert_eq!(scale("mid_block.attentions.0.proj_in"), Scale::Fixed(0.5));
        assert_eq!(scale("up_blocks.0.attentions.0.proj_in"), Scale::Fixed(2.0));
        // No metadata for the text encoder: alpha = rank, scale 1.
        assert_eq!(
            scale("text_model.encoder.layers.0.self_attn.q_proj"),
            Scale::Alpha(Some(4.0))
        );
    }

    #[test]
    fn old_processor_keys_name_their_layer() {
        let (_, modules) = parse(
            &shapes(&[
                "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora.down.weight",
                "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora.up.weight",
            ]),
            &BTreeMap::new(),
            &no_scalar,
        )
        .unwrap();
        assert_eq!(
            modules[0].name,
            ModuleName::Dotted(
                "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0".into()
            )
        );
    }

    #[test]
    fn unknown_and_unsupported_keys_are_named() {
        for (keys, expected) in [
            (&["model.diffusion_model.x.weight"][..], "not a LoRA key"),
            (
                &["lora_unet_a.lora_down.weight", "lora_unet_a.dora_scale"][..],
                "DoRA",
            ),
            (&["lora_unet_a.lora_down.weight"][..], "lora_up.weight"),
            (
                &[
                    "lora_unet_a.lora_down.weight",
                    "lora_unet_a.lora_up.weight",
                    "unet.x.lora_A.weight",
                ][..],
                "unet.x",
            ),
        ] {
            let e = parse(&shapes(keys), &BTreeMap::new(), &no_scalar).unwrap_err();
            assert!(
                e.tensor.contains(expected) || e.message.contains(expected),
                "{keys:?}: {} {}",
                e.tensor,
                e.message
            );
        }
    }
}
