//! `model_index.json`: the pipeline class and the (library, class) of each component.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use super::json::{parse_json, read_json};
use crate::{Error, Result};

/// A pipeline folder's `model_index.json`.
#[derive(Debug, Clone)]
pub struct ModelIndex {
    /// The pipeline class (`StableDiffusionPipeline`, `StableDiffusionXLPipeline`, ...).
    pub class_name: String,
    /// The diffusers version that wrote the folder, if recorded.
    pub diffusers_version: Option<String>,
    /// Each present component's subfolder name → (library, class).
    pub components: BTreeMap<String, (String, String)>,
    /// The pipeline's own options (e.g. SDXL's `force_zeros_for_empty_prompt`).
    pub options: BTreeMap<String, Value>,
}

impl ModelIndex {
    /// Reads `model_index.json` at `path`.
    pub fn read(path: &Path) -> Result<Self> {
        Self::from_raw(read_json(path)?, path)
    }

    /// Parses `text`, the contents of a `model_index.json` that errors call `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        Self::from_raw(parse_json(text, path)?, path)
    }

    fn from_raw(raw: BTreeMap<String, Value>, path: &Path) -> Result<Self> {
        let class_name = match raw.get("_class_name") {
            Some(Value::String(s)) => s.clone(),
            other => {
                return Err(Error::Json {
                    path: path.to_path_buf(),
                    message: format!(
                        "key `_class_name`: expected the pipeline class name, found {}",
                        other.map_or("nothing".to_string(), Value::to_string)
                    ),
                })
            }
        };
        let diffusers_version = raw
            .get("_diffusers_version")
            .and_then(Value::as_str)
            .map(String::from);
        let mut components = BTreeMap::new();
        let mut options = BTreeMap::new();
        for (key, value) in &raw {
            if key.starts_with('_') {
                continue;
            }
            // Components are [library, class]; [null, null] marks an absent optional component.
            match value {
                Value::Array(pair) => {
                    if let [Value::String(lib), Value::String(class)] = pair.as_slice() {
                        components.insert(key.clone(), (lib.clone(), class.clone()));
                    }
                }
                other => {
                    options.insert(key.clone(), other.clone());
                }
            }
        }
        Ok(Self {
            class_name,
            diffusers_version,
            components,
            options,
        })
    }

    /// The boolean pipeline option `key`, or `default` when absent.
    pub fn flag(&self, key: &str, default: bool) -> bool {
        self.options
            .get(key)
            .and_then(Value::as_bool)
            .unwrap_or(default)
    }

    /// The class of component `name`, if present.
    pub fn class_of(&self, name: &str) -> Option<&str> {
        self.components.get(name).map(|(_, class)| class.as_str())
    }
}
