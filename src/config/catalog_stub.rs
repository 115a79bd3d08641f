//! TEMPORARY stand-in for `crate::catalog` until the real catalog lands on main; same API,
//! two models. Delete on merge.

use serde::{Deserialize, Serialize};

/// KV cache element type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KvDtype {
    /// fp16.
    F16,
    /// bf16.
    Bf16,
    /// fp8.
    Fp8,
    /// q8_0.
    #[serde(rename = "q8_0")]
    Q8_0,
    /// q4_0.
    #[serde(rename = "q4_0")]
    Q4_0,
}

/// A model's shape.
#[derive(Debug)]
pub struct ModelSpec {
    /// Name.
    pub name: &'static str,
    /// Layers.
    pub layers: u32,
    /// KV heads.
    pub kv_heads: u32,
    /// Head dim.
    pub head_dim: u32,
    /// Max context.
    pub max_context: u32,
}

impl ModelSpec {
    /// Bytes per token.
    pub fn kv_bytes_per_token(&self, dtype: KvDtype) -> u64 {
        let elems =
            2 * u64::from(self.layers) * u64::from(self.kv_heads) * u64::from(self.head_dim);
        match dtype {
            KvDtype::F16 | KvDtype::Bf16 => elems * 2,
            KvDtype::Fp8 => elems,
            KvDtype::Q8_0 => elems * 34 / 32,
            KvDtype::Q4_0 => elems * 18 / 32,
        }
    }

    /// Bytes for a context.
    pub fn kv_bytes_for_context(&self, tokens: u64, dtype: KvDtype, _honour_sliding: bool) -> u64 {
        self.kv_bytes_per_token(dtype) * tokens
    }
}

/// Unknown model.
#[derive(Debug, thiserror::Error)]
#[error(
    "unknown model '{0}'; close names: llama-3.1-8b, qwen2.5-7b; use one of them, or give kv_bytes_per_token directly"
)]
pub struct CatalogError(String);

static MODELS: [ModelSpec; 2] = [
    ModelSpec {
        name: "llama-3.1-8b",
        layers: 32,
        kv_heads: 8,
        head_dim: 128,
        max_context: 131_072,
    },
    ModelSpec {
        name: "qwen2.5-7b",
        layers: 28,
        kv_heads: 4,
        head_dim: 128,
        max_context: 32_768,
    },
];

/// Find a model.
pub fn lookup(name: &str) -> Result<&'static ModelSpec, CatalogError> {
    let n = name.to_ascii_lowercase();
    let n = n.strip_suffix("-instruct").unwrap_or(&n);
    MODELS
        .iter()
        .find(|m| m.name == n)
        .ok_or_else(|| CatalogError(name.to_owned()))
}
