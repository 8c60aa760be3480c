//! Config values that diffusers accepts either once for every block or as a per-block list.

use serde::Deserialize;

use crate::{Error, Result};

/// A value given once for all blocks, or one per block.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum PerBlock<T> {
    /// The same value for every block.
    One(T),
    /// One value per down block, in order.
    Each(Vec<T>),
}

impl<T: Clone + std::fmt::Debug> PerBlock<T> {
    /// The value of each of `blocks` blocks; a list of another length is an error naming `file` and `key`.
    pub fn expand(&self, blocks: usize, file: &str, key: &str) -> Result<Vec<T>> {
        match self {
            PerBlock::One(v) => Ok(vec![v.clone(); blocks]),
            PerBlock::Each(list) if list.len() == blocks => Ok(list.clone()),
            PerBlock::Each(list) => Err(Error::unsupported(
                file,
                key,
                format!("{list:?}"),
                format!("one value, or a list of {blocks} (one per down block)"),
            )),
        }
    }
}

impl<T: std::fmt::Debug> std::fmt::Display for PerBlock<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PerBlock::One(v) => write!(f, "{v:?}"),
            PerBlock::Each(list) => write!(f, "{list:?}"),
        }
    }
}
