//! Renamings from the key names of other checkpoint layouts to diffusers' names.

use super::weights::{KeyMap, StoredKey};

/// Old diffusers VAEs store the mid-block attention as `query`/`key`/`value`/`proj_attn`; diffusers renames
/// them to `to_q`/`to_k`/`to_v`/`to_out.0` on load. Returns that map for the names present in `stored`.
pub fn legacy_vae_attention_keys(stored: &[String]) -> KeyMap {
    const RENAMES: [(&str, &str); 4] = [
        ("to_q", "query"),
        ("to_k", "key"),
        ("to_v", "value"),
        ("to_out.0", "proj_attn"),
    ];
    let mut map = KeyMap::new();
    for part in ["encoder", "decoder"] {
        let prefix = format!("{part}.mid_block.attentions.0");
        for (new, old) in RENAMES {
            for suffix in ["weight", "bias"] {
                let stored_name = format!("{prefix}.{old}.{suffix}");
                if stored.contains(&stored_name) {
                    map.insert(
                        format!("{prefix}.{new}.{suffix}"),
                        StoredKey::reshaped(stored_name),
                    );
                }
            }
        }
    }
    map
}
