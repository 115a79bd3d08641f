//! The model catalog: shapes of common open models as data.
//!
//! A profile names a model (`model = "qwen2.5-32b-instruct"`) and the governor computes its
//! KV bytes per token and weight bytes from the shape here, instead of asking the user to
//! type numbers in. Each entry's `source` says where its numbers come from and whether they
//! were checked against the model's published `config.json`; the formulas and the table are
//! those of `ENGINES.md` §3.
//!
//! - KV bytes per token = `2 (K and V) × layers × kv_heads × head_dim × bytes per element`.
//! - Sliding-window models (Gemma-2/3, gpt-oss) keep at most `window` tokens in their local
//!   layers; [`ModelSpec::kv_bytes_for_context`] can honour that for engines that exploit it
//!   (vLLM's hybrid allocator, llama.cpp's SWA cache). [`ModelSpec::kv_bytes_per_token`] is
//!   always the all-layers figure, the conservative one.
//! - Weight bytes = `params × bits per weight / 8`, with GGUF quantizations as their usual
//!   average bits per weight (approximations: GGUF keeps some tensors at higher precision).
//!
//! MLA models (DeepSeek-V2/V3) break the formula and are not in the catalog; give
//! `kv_bytes_per_token` directly for them.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use thiserror::Error;

/// The element type of the KV cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KvDtype {
    /// 16-bit float (the default of every engine): 2 bytes per element.
    #[default]
    #[serde(rename = "f16")]
    F16,
    /// bfloat16: 2 bytes per element.
    #[serde(rename = "bf16")]
    Bf16,
    /// 8-bit float (vLLM `--kv-cache-dtype fp8`, SGLang `fp8_e4m3`): 1 byte per element.
    #[serde(rename = "fp8")]
    Fp8,
    /// llama.cpp/Ollama `q8_0`: blocks of 32 elements in 34 bytes.
    #[serde(rename = "q8_0")]
    Q8_0,
    /// llama.cpp/Ollama `q4_0`: blocks of 32 elements in 18 bytes.
    #[serde(rename = "q4_0")]
    Q4_0,
}

impl KvDtype {
    /// Every dtype, in the order of the names in error messages.
    pub const ALL: [KvDtype; 5] = [
        KvDtype::F16,
        KvDtype::Bf16,
        KvDtype::Fp8,
        KvDtype::Q8_0,
        KvDtype::Q4_0,
    ];

    /// Bytes per element as a fraction `(numerator, denominator)`: 2/1, 2/1, 1/1, 34/32,
    /// 18/32.
    pub const fn bytes_per_elem(self) -> (u64, u64) {
        match self {
            KvDtype::F16 | KvDtype::Bf16 => (2, 1),
            KvDtype::Fp8 => (1, 1),
            KvDtype::Q8_0 => (34, 32),
            KvDtype::Q4_0 => (18, 32),
        }
    }

    /// The name used in config files and flags (`f16`, `q8_0`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            KvDtype::F16 => "f16",
            KvDtype::Bf16 => "bf16",
            KvDtype::Fp8 => "fp8",
            KvDtype::Q8_0 => "q8_0",
            KvDtype::Q4_0 => "q4_0",
        }
    }

    /// `elements` elements in bytes, rounded up.
    fn bytes_of(self, elements: u128) -> u128 {
        let (num, den) = self.bytes_per_elem();
        (elements * u128::from(num)).div_ceil(u128::from(den))
    }
}

impl fmt::Display for KvDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A KV dtype name that is none of the known ones.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("unknown KV cache dtype '{given}'; use one of f16, bf16, fp8, q8_0, q4_0")]
pub struct UnknownKvDtype {
    /// What was given.
    pub given: String,
}

impl FromStr for KvDtype {
    type Err = UnknownKvDtype;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        let found = match lower.as_str() {
            // Engines' own spellings of the same types.
            "fp16" | "float16" | "half" => Some(KvDtype::F16),
            "bfloat16" => Some(KvDtype::Bf16),
            "fp8_e4m3" | "fp8_e5m2" => Some(KvDtype::Fp8),
            other => KvDtype::ALL.into_iter().find(|d| d.name() == other),
        };
        found.ok_or_else(|| UnknownKvDtype {
            given: s.to_owned(),
        })
    }
}

/// The format the weights are loaded in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum WeightFormat {
    /// bfloat16/float16 checkpoints (vLLM/SGLang default): 16 bits per weight.
    #[serde(rename = "bf16")]
    Bf16,
    /// FP8 checkpoints or on-the-fly FP8: 8 bits per weight.
    #[serde(rename = "fp8")]
    Fp8,
    /// GGUF `Q8_0`: about 8.5 bits per weight.
    #[serde(rename = "q8_0")]
    Q8_0,
    /// GGUF `Q4_K_M` (the usual Ollama/llama.cpp default): about 4.85 bits per weight.
    #[serde(rename = "q4_k_m")]
    Q4KM,
}

impl WeightFormat {
    /// Every format, in the order of the names in error messages.
    pub const ALL: [WeightFormat; 4] = [
        WeightFormat::Bf16,
        WeightFormat::Fp8,
        WeightFormat::Q8_0,
        WeightFormat::Q4KM,
    ];

    /// Bits per weight × 100 (1600, 800, 850, 485), to keep the arithmetic integral.
    pub const fn centibits_per_weight(self) -> u64 {
        match self {
            WeightFormat::Bf16 => 1600,
            WeightFormat::Fp8 => 800,
            WeightFormat::Q8_0 => 850,
            WeightFormat::Q4KM => 485,
        }
    }

    /// The name used in config files and flags (`bf16`, `q4_k_m`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            WeightFormat::Bf16 => "bf16",
            WeightFormat::Fp8 => "fp8",
            WeightFormat::Q8_0 => "q8_0",
            WeightFormat::Q4KM => "q4_k_m",
        }
    }
}

impl fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A weight format name that is none of the known ones.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("unknown weight format '{given}'; use one of bf16, fp8, q8_0, q4_k_m")]
pub struct UnknownWeightFormat {
    /// What was given.
    pub given: String,
}

impl FromStr for WeightFormat {
    type Err = UnknownWeightFormat;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        let found = match lower.as_str() {
            "fp16" | "f16" | "float16" | "bfloat16" => Some(WeightFormat::Bf16),
            "q4_k" | "q4km" => Some(WeightFormat::Q4KM),
            other => WeightFormat::ALL.into_iter().find(|w| w.name() == other),
        };
        found.ok_or_else(|| UnknownWeightFormat {
            given: s.to_owned(),
        })
    }
}

/// How a model's layers attend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Attention {
    /// Every layer attends to the whole context.
    Full,
    /// `global_layers` layers attend to the whole context; the others to the last `window`
    /// tokens only.
    Sliding {
        /// Tokens a local layer keeps.
        window: u32,
        /// Layers with full attention.
        global_layers: u32,
    },
}

/// One model's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ModelSpec {
    /// Canonical catalog name (lower case, e.g. `llama-3.1-8b`).
    pub name: &'static str,
    /// Other names that find it (lower case: Hugging Face ids, `-instruct` names, Ollama tags).
    pub aliases: &'static [&'static str],
    /// `num_hidden_layers`.
    pub layers: u32,
    /// `num_key_value_heads`.
    pub kv_heads: u32,
    /// `head_dim` (or `hidden_size / num_attention_heads`).
    pub head_dim: u32,
    /// Full or sliding-window attention.
    pub attention: Attention,
    /// Parameter count.
    pub params: u64,
    /// The context length the model's `config.json` declares (`max_position_embeddings`):
    /// what vLLM takes as `--max-model-len` by default.
    pub max_context: u32,
    /// Where the numbers come from, and whether they were verified.
    pub source: &'static str,
}

impl ModelSpec {
    /// KV elements per token per layer (K and V).
    fn elems_per_token_layer(&self) -> u128 {
        2 * u128::from(self.kv_heads) * u128::from(self.head_dim)
    }

    /// KV bytes per token over all layers: `2 × layers × kv_heads × head_dim × bytes/elem`
    /// (rounded up for quantized dtypes). Sliding windows are not honoured: this is the
    /// conservative figure, and what an engine without SWA support pays.
    pub fn kv_bytes_per_token(&self, dtype: KvDtype) -> u64 {
        let elems = self.elems_per_token_layer() * u128::from(self.layers);
        clamp_u64(dtype.bytes_of(elems))
    }

    /// KV bytes of one sequence of `tokens` tokens. With `honour_sliding` and a
    /// sliding-window model: `global layers × tokens + local layers × min(tokens, window)`;
    /// otherwise `layers × tokens`.
    pub fn kv_bytes_for_context(&self, tokens: u64, dtype: KvDtype, honour_sliding: bool) -> u64 {
        let tokens = u128::from(tokens);
        let layer_tokens = match self.attention {
            Attention::Sliding {
                window,
                global_layers,
            } if honour_sliding => {
                let global = u128::from(global_layers.min(self.layers));
                let local = u128::from(self.layers) - global;
                global * tokens + local * tokens.min(u128::from(window))
            }
            _ => u128::from(self.layers) * tokens,
        };
        clamp_u64(dtype.bytes_of(self.elems_per_token_layer() * layer_tokens))
    }

    /// Weight bytes in `format`: `params × bits per weight / 8`, rounded up.
    pub fn weight_bytes(&self, format: WeightFormat) -> u64 {
        let centibits = u128::from(self.params) * u128::from(format.centibits_per_weight());
        clamp_u64(centibits.div_ceil(800))
    }
}

fn clamp_u64(v: u128) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

/// A name the catalog does not know.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CatalogError {
    /// No model or alias has this name.
    #[error(
        "unknown model '{name}'; close names: {}; use one of them, or give kv_bytes_per_token directly",
        close_list(close)
    )]
    Unknown {
        /// What was asked for.
        name: String,
        /// Catalog names close to it, closest first.
        close: Vec<&'static str>,
    },
}

fn close_list(close: &[&'static str]) -> String {
    if close.is_empty() {
        // Nothing is close: list a few of every family so the user sees what exists.
        "none (known: llama-3.1-8b, qwen2.5-32b, qwen3-8b, mistral-small-24b, gemma-3-27b, \
         phi-3.5-mini, gpt-oss-20b, ...)"
            .to_owned()
    } else {
        close.join(", ")
    }
}

/// The whole catalog.
pub fn models() -> &'static [ModelSpec] {
    MODELS
}

/// Find a model by name or alias, case-insensitively. `org/Model-Name` ids match on the
/// part after the slash too, and a trailing `-instruct`, `-it` or `-chat` is optional.
///
/// # Errors
///
/// [`CatalogError::Unknown`] with the closest catalog names.
pub fn lookup(name: &str) -> Result<&'static ModelSpec, CatalogError> {
    let candidates = normalised(name);
    for c in &candidates {
        if let Some(m) = MODELS
            .iter()
            .find(|m| m.name == c.as_str() || m.aliases.contains(&c.as_str()))
        {
            return Ok(m);
        }
    }
    Err(CatalogError::Unknown {
        name: name.to_owned(),
        close: close_names(&candidates),
    })
}

/// The forms of `name` tried in order: as given (lower case), without an `org/` prefix, and
/// each of those without an `-instruct`/`-it`/`-chat` suffix.
fn normalised(name: &str) -> Vec<String> {
    let lower = name.trim().to_ascii_lowercase();
    let mut forms = vec![lower.clone()];
    if let Some((_, tail)) = lower.rsplit_once('/') {
        forms.push(tail.to_owned());
    }
    let mut stripped = Vec::new();
    for f in &forms {
        for suffix in ["-instruct", "-it", "-chat"] {
            if let Some(s) = f.strip_suffix(suffix) {
                stripped.push(s.to_owned());
            }
        }
    }
    forms.extend(stripped);
    forms
}

/// Up to five catalog names closest to any form of the query: names it begins first, then
/// names containing it (or contained in it), then by edit distance (within a third of the
/// query's length).
fn close_names(forms: &[String]) -> Vec<&'static str> {
    let mut scored: Vec<(usize, &'static str)> = Vec::new();
    for m in MODELS {
        let mut best = usize::MAX;
        for form in forms {
            if form.is_empty() {
                continue;
            }
            for known in std::iter::once(&m.name).chain(m.aliases.iter()) {
                let score = if known.starts_with(form.as_str()) {
                    0
                } else if known.contains(form.as_str()) || form.contains(known) {
                    1
                } else {
                    let d = levenshtein(form, known);
                    if d <= form.len().max(3) / 3 {
                        d + 1
                    } else {
                        usize::MAX
                    }
                };
                best = best.min(score);
            }
        }
        if best != usize::MAX {
            scored.push((best, m.name));
        }
    }
    scored.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(b.1)));
    scored.into_iter().take(5).map(|(_, n)| n).collect()
}

/// Edit distance (insertions, deletions, substitutions) between two strings, by characters.
fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

const BILLION: u64 = 1_000_000_000;
const MILLION: u64 = 1_000_000;

// `ENGINES.md` §3 config sources, spelled out once (macros so `concat!` can use them).
macro_rules! mlc_llm_source {
    () => {
        "mlc-ai/mlc-llm python/mlc_llm/model/model_preset.py (verbatim HF config.json)"
    };
}
macro_rules! llm_prof_source {
    () => {
        "citsjtu2020/LLM-Prof sglang/Model_Config.md (HF config.json)"
    };
}
macro_rules! qwen_cards_source {
    () => {
        "Qwen model cards (ZHUI/paddlenlp_model_readme Qwen/Qwen2.5-*/index.md)"
    };
}

/// The catalog. Parameter counts are rounded to three significant figures; context is the
/// `max_position_embeddings` of the model's `config.json`.
static MODELS: &[ModelSpec] = &[
    ModelSpec {
        name: "llama-3.1-8b",
        aliases: &[
            "llama-3.1-8b-instruct",
            "meta-llama/llama-3.1-8b-instruct",
            "meta-llama/meta-llama-3.1-8b-instruct",
            "meta-llama-3.1-8b-instruct",
            "llama-3-8b",
            "llama3.1:8b",
            "llama3.1",
        ],
        layers: 32,
        kv_heads: 8,
        head_dim: 128,
        attention: Attention::Full,
        params: 8_030 * MILLION,
        max_context: 131_072,
        source: concat!(
            "shape: ",
            mlc_llm_source!(),
            " and ",
            llm_prof_source!(),
            " agree (verified); params 8.03B and context 131072: model card / config.json"
        ),
    },
    ModelSpec {
        name: "llama-3.1-70b",
        aliases: &[
            "llama-3.1-70b-instruct",
            "meta-llama/llama-3.1-70b-instruct",
            "meta-llama/meta-llama-3.1-70b-instruct",
            "llama3.1:70b",
        ],
        layers: 80,
        kv_heads: 8,
        head_dim: 128,
        attention: Attention::Full,
        params: 70_600 * MILLION,
        max_context: 131_072,
        source: concat!(
            "shape: ",
            mlc_llm_source!(),
            " (verified); params 70.6B: model card"
        ),
    },
    ModelSpec {
        name: "llama-3.3-70b",
        aliases: &[
            "llama-3.3-70b-instruct",
            "meta-llama/llama-3.3-70b-instruct",
            "llama3.3:70b",
            "llama3.3",
        ],
        layers: 80,
        kv_heads: 8,
        head_dim: 128,
        attention: Attention::Full,
        params: 70_600 * MILLION,
        max_context: 131_072,
        source: "shape: same architecture as Llama-3.1-70B (Meta model card; not separately verified); params 70.6B: model card",
    },
    ModelSpec {
        name: "llama-3.2-3b",
        aliases: &[
            "llama-3.2-3b-instruct",
            "meta-llama/llama-3.2-3b-instruct",
            "llama3.2:3b",
            "llama3.2",
        ],
        layers: 28,
        kv_heads: 8,
        head_dim: 128,
        attention: Attention::Full,
        params: 3_210 * MILLION,
        max_context: 131_072,
        source: concat!(
            "shape: ",
            mlc_llm_source!(),
            " and ",
            llm_prof_source!(),
            " agree (verified); params 3.21B: model card"
        ),
    },
    ModelSpec {
        name: "qwen2.5-7b",
        aliases: &[
            "qwen2.5-7b-instruct",
            "qwen/qwen2.5-7b-instruct",
            "qwen2.5:7b",
        ],
        layers: 28,
        kv_heads: 4,
        head_dim: 128,
        attention: Attention::Full,
        params: 7_620 * MILLION,
        max_context: 32_768,
        source: concat!(
            "shape: ",
            llm_prof_source!(),
            " (verified); params 7.62B: model card; context 32768 = config.json (131072 only with YaRN rope_scaling)"
        ),
    },
    ModelSpec {
        name: "qwen2.5-coder-7b",
        aliases: &[
            "qwen2.5-coder-7b-instruct",
            "qwen/qwen2.5-coder-7b-instruct",
            "qwen2.5-coder:7b",
        ],
        layers: 28,
        kv_heads: 4,
        head_dim: 128,
        attention: Attention::Full,
        params: 7_620 * MILLION,
        max_context: 32_768,
        source: "shape: same as Qwen2.5-7B (Qwen2.5-Coder model card: 28 layers, 28 Q / 4 KV heads; not separately verified); params 7.62B; context 32768 = config.json (YaRN for more)",
    },
    ModelSpec {
        name: "qwen2.5-14b",
        aliases: &[
            "qwen2.5-14b-instruct",
            "qwen/qwen2.5-14b-instruct",
            "qwen2.5:14b",
        ],
        layers: 48,
        kv_heads: 8,
        head_dim: 128,
        attention: Attention::Full,
        params: 14_700 * MILLION,
        max_context: 32_768,
        source: concat!(
            "shape: ",
            llm_prof_source!(),
            " and ",
            qwen_cards_source!(),
            " agree (verified); params 14.7B; context 32768 = config.json (YaRN for more)"
        ),
    },
    ModelSpec {
        name: "qwen2.5-32b",
        aliases: &[
            "qwen2.5-32b-instruct",
            "qwen/qwen2.5-32b-instruct",
            "qwen2.5:32b",
        ],
        layers: 64,
        kv_heads: 8,
        head_dim: 128,
        attention: Attention::Full,
        params: 32_500 * MILLION,
        max_context: 32_768,
        source: concat!(
            "shape: ",
            llm_prof_source!(),
            " and ",
            qwen_cards_source!(),
            " agree (verified); params 32.5B: model card; context 32768 = config.json (YaRN for more)"
        ),
    },
    ModelSpec {
        name: "qwen2.5-coder-32b",
        aliases: &[
            "qwen2.5-coder-32b-instruct",
            "qwen/qwen2.5-coder-32b-instruct",
            "qwen2.5-coder:32b",
            "qwen2.5-coder",
        ],
        layers: 64,
        kv_heads: 8,
        head_dim: 128,
        attention: Attention::Full,
        params: 32_500 * MILLION,
        max_context: 32_768,
        source: "shape: same as Qwen2.5-32B (Qwen2.5-Coder-32B model card: 64 layers, 40 Q / 8 KV heads; not separately verified against config.json); params 32.5B; context 32768 = config.json (YaRN for more)",
    },
    ModelSpec {
        name: "qwen2.5-72b",
        aliases: &[
            "qwen2.5-72b-instruct",
            "qwen/qwen2.5-72b-instruct",
            "qwen2.5:72b",
        ],
        layers: 80,
        kv_heads: 8,
        head_dim: 128,
        attention: Attention::Full,
        params: 72_700 * MILLION,
        max_context: 32_768,
        source: concat!(
            "shape: ",
            qwen_cards_source!(),
            " (80 layers, 64 Q / 8 KV heads; model card, not config.json); params 72.7B; context 32768 = config.json (YaRN for more)"
        ),
    },
    ModelSpec {
        name: "qwen3-8b",
        aliases: &["qwen/qwen3-8b", "qwen3:8b", "qwen3"],
        layers: 36,
        kv_heads: 8,
        head_dim: 128,
        attention: Attention::Full,
        params: 8_200 * MILLION,
        max_context: 40_960,
        source: concat!(
            "shape: ",
            mlc_llm_source!(),
            " and ",
            llm_prof_source!(),
            " agree, and a verbatim copy of Qwen/Qwen3-8B config.json confirms 36 layers, 8 KV \
             heads, head_dim 128, max_position_embeddings 40960 (verified); params 8.2B: model \
             card (Ollama lists 8.19B); context 40960 = config.json max_position_embeddings"
        ),
    },
    ModelSpec {
        name: "qwen3-32b",
        aliases: &["qwen/qwen3-32b", "qwen3:32b"],
        layers: 64,
        kv_heads: 8,
        head_dim: 128,
        attention: Attention::Full,
        params: 32_800 * MILLION,
        max_context: 40_960,
        source: concat!(
            "shape: ",
            llm_prof_source!(),
            " (verified); params 32.8B: model card; context 40960 = config.json max_position_embeddings"
        ),
    },
    ModelSpec {
        name: "mistral-7b-v0.3",
        aliases: &[
            "mistral-7b-instruct-v0.3",
            "mistralai/mistral-7b-instruct-v0.3",
            "mistral-7b",
            "mistral:7b",
            "mistral",
        ],
        layers: 32,
        kv_heads: 8,
        head_dim: 128,
        attention: Attention::Full,
        params: 7_250 * MILLION,
        max_context: 32_768,
        source: concat!(
            "shape: ",
            mlc_llm_source!(),
            " (verified); params 7.25B: model card; context 32768"
        ),
    },
    ModelSpec {
        name: "mistral-small-24b",
        aliases: &[
            "mistral-small-24b-instruct-2501",
            "mistralai/mistral-small-24b-instruct-2501",
            "mistral-small-24b-2501",
            "mistral-small-3",
            "mistral-small:24b",
            "mistral-small",
        ],
        layers: 40,
        kv_heads: 8,
        head_dim: 128,
        attention: Attention::Full,
        params: 23_600 * MILLION,
        max_context: 32_768,
        source: "shape and context: config.json of mistralai/Mistral-Small-24B-Instruct-2501 as copied in unsloth/Mistral-Small-24B-Instruct-2501-GGUF (40 layers, 32 Q / 8 KV heads, head_dim 128, hidden 5120, max_position_embeddings 32768, no sliding window; verified, and Mistral-Small-24B-Base-2501 copies agree); params 23.6B: model card",
    },
    ModelSpec {
        name: "mistral-small-3.2-24b",
        aliases: &[
            "mistral-small-3.2-24b-instruct-2506",
            "mistralai/mistral-small-3.2-24b-instruct-2506",
            "mistral-small-3.1-24b",
            "mistral-small-3.1-24b-instruct-2503",
            "mistralai/mistral-small-3.1-24b-instruct-2503",
            "mistral-small3.2",
            "mistral-small3.1",
        ],
        layers: 40,
        kv_heads: 8,
        head_dim: 128,
        attention: Attention::Full,
        params: 24_000 * MILLION,
        max_context: 131_072,
        source: "shape: text_config as Mistral-Small-24B-2501 (40 layers, 8 KV heads, head_dim 128; ENGINES.md source D, the 3.1/3.2 config itself not verified); params 24B incl. vision encoder: model card; context 131072: model card",
    },
    ModelSpec {
        name: "gemma-2-9b",
        aliases: &[
            "gemma-2-9b-it",
            "google/gemma-2-9b-it",
            "google/gemma-2-9b",
            "gemma2:9b",
            "gemma2",
        ],
        layers: 42,
        kv_heads: 8,
        head_dim: 256,
        attention: Attention::Sliding {
            window: 4096,
            global_layers: 21,
        },
        params: 9_240 * MILLION,
        max_context: 8_192,
        source: concat!(
            "shape: ",
            mlc_llm_source!(),
            " (verified); alternating local(4096)/global layers: 21 global; params 9.24B: model card; context 8192"
        ),
    },
    ModelSpec {
        name: "gemma-3-27b",
        aliases: &[
            "gemma-3-27b-it",
            "google/gemma-3-27b-it",
            "gemma3:27b",
            "gemma3",
        ],
        layers: 62,
        kv_heads: 16,
        head_dim: 128,
        attention: Attention::Sliding {
            window: 1024,
            global_layers: 10,
        },
        params: 27_400 * MILLION,
        max_context: 131_072,
        source: "shape: text_config 62 layers, 32 Q / 16 KV heads, head_dim 128, hidden 5376, sliding_window 1024, sliding_window_pattern 6 (ENGINES.md source E); heads, head_dim, hidden and pattern agree with a GEMMA3_27B_CONFIG test fixture (layers trimmed), and layers 62 and window 1024 with a gemma_3_27b SimpleNamespace config, both in public code: verified against two third-party copies, not google/gemma-3-27b-it itself; global layers 5, 11, ..., 59 = 10; params 27.4B incl. vision: model card; context 131072: model card",
    },
    ModelSpec {
        name: "phi-3.5-mini",
        aliases: &[
            "phi-3.5-mini-instruct",
            "microsoft/phi-3.5-mini-instruct",
            "phi3.5:3.8b",
            "phi3.5",
        ],
        layers: 32,
        kv_heads: 32,
        head_dim: 96,
        attention: Attention::Full,
        params: 3_820 * MILLION,
        max_context: 131_072,
        source: concat!(
            "shape: ",
            mlc_llm_source!(),
            " (verified; MHA, head_dim 3072/32); params 3.82B: model card; context 131072"
        ),
    },
    ModelSpec {
        name: "phi-4-mini",
        aliases: &[
            "phi-4-mini-instruct",
            "microsoft/phi-4-mini-instruct",
            "phi4-mini:3.8b",
            "phi4-mini",
        ],
        layers: 32,
        kv_heads: 8,
        head_dim: 128,
        attention: Attention::Full,
        params: 3_840 * MILLION,
        max_context: 131_072,
        source: concat!(
            "shape: ",
            mlc_llm_source!(),
            " (verified); params 3.84B: model card; context 131072"
        ),
    },
    ModelSpec {
        name: "deepseek-r1-distill-qwen-7b",
        aliases: &[
            "deepseek-ai/deepseek-r1-distill-qwen-7b",
            "r1-distill-qwen-7b",
            "deepseek-r1:7b",
        ],
        layers: 28,
        kv_heads: 4,
        head_dim: 128,
        attention: Attention::Full,
        params: 7_620 * MILLION,
        max_context: 131_072,
        source: "shape: same as Qwen2.5-7B (deepseek-ai/DeepSeek-R1 README: based on Qwen2.5-Math-7B); params 7.62B; context 131072 = its config.json max_position_embeddings",
    },
    ModelSpec {
        name: "deepseek-r1-distill-qwen-32b",
        aliases: &[
            "deepseek-ai/deepseek-r1-distill-qwen-32b",
            "r1-distill-qwen-32b",
            "deepseek-r1:32b",
        ],
        layers: 64,
        kv_heads: 8,
        head_dim: 128,
        attention: Attention::Full,
        params: 32_500 * MILLION,
        max_context: 131_072,
        source: "shape: same as Qwen2.5-32B (deepseek-ai/DeepSeek-R1 README: based on Qwen2.5-32B); params 32.5B; context 131072 = its config.json max_position_embeddings",
    },
    ModelSpec {
        name: "gpt-oss-20b",
        aliases: &["openai/gpt-oss-20b", "gpt-oss:20b", "gpt-oss"],
        layers: 24,
        kv_heads: 8,
        head_dim: 64,
        attention: Attention::Sliding {
            window: 128,
            global_layers: 12,
        },
        params: 21 * BILLION,
        max_context: 131_072,
        source: "shape: ollama/ollama gptoss config-parsing test (24 layers, 64 Q / 8 KV heads, head_dim 64, sliding_window 128, alternating sliding/full: 12 full; verified in code, ENGINES.md source G); params 21B total (3.6B active) and MXFP4 checkpoint ~13 GB: model card (bf16 weight bytes here are for a dequantized load); context 131072",
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    fn m(name: &str) -> &'static ModelSpec {
        match lookup(name) {
            Ok(m) => m,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn kv_bytes_per_token_matches_hand_computed_values() {
        // 2 × layers × kv_heads × head_dim × 2 bytes (ENGINES.md §3 table).
        assert_eq!(
            m("llama-3.1-8b").kv_bytes_per_token(KvDtype::F16),
            2 * 32 * 8 * 128 * 2
        );
        assert_eq!(m("llama-3.1-8b").kv_bytes_per_token(KvDtype::F16), 131_072);
        assert_eq!(m("qwen2.5-7b").kv_bytes_per_token(KvDtype::F16), 57_344);
        assert_eq!(m("qwen2.5-32b").kv_bytes_per_token(KvDtype::Bf16), 262_144);
        assert_eq!(m("phi-3.5-mini").kv_bytes_per_token(KvDtype::F16), 393_216);
        assert_eq!(m("gpt-oss-20b").kv_bytes_per_token(KvDtype::F16), 49_152);
        assert_eq!(m("gemma-3-27b").kv_bytes_per_token(KvDtype::F16), 507_904);
        assert_eq!(m("gemma-2-9b").kv_bytes_per_token(KvDtype::F16), 344_064);
        assert_eq!(m("qwen3-8b").kv_bytes_per_token(KvDtype::F16), 147_456);
        assert_eq!(
            m("mistral-small-24b").kv_bytes_per_token(KvDtype::F16),
            163_840
        );
        assert_eq!(m("llama-3.1-70b").kv_bytes_per_token(KvDtype::F16), 327_680);
    }

    #[test]
    fn quantized_kv_dtypes_scale_bytes_per_element() {
        let llama = m("llama-3.1-8b");
        assert_eq!(llama.kv_bytes_per_token(KvDtype::Fp8), 65_536);
        // 65,536 elements in blocks of 32: 2,048 blocks × 34 bytes and × 18 bytes.
        assert_eq!(llama.kv_bytes_per_token(KvDtype::Q8_0), 2_048 * 34);
        assert_eq!(llama.kv_bytes_per_token(KvDtype::Q4_0), 2_048 * 18);
        // Phi-3.5: 2 × 32 × 32 × 96 = 196,608 elements = 6,144 blocks.
        assert_eq!(
            m("phi-3.5-mini").kv_bytes_per_token(KvDtype::Q8_0),
            6_144 * 34
        );
    }

    #[test]
    fn every_model_costs_the_same_per_token_at_any_length_when_full_attention() {
        for model in models() {
            let per_token = model.kv_bytes_per_token(KvDtype::F16);
            for honour in [false, true] {
                let at_8k = model.kv_bytes_for_context(8_192, KvDtype::F16, honour);
                if honour && matches!(model.attention, Attention::Sliding { .. }) {
                    assert!(at_8k < per_token * 8_192, "{}", model.name);
                } else {
                    assert_eq!(at_8k, per_token * 8_192, "{}", model.name);
                }
            }
        }
    }

    #[test]
    fn sliding_window_models_match_the_engines_md_figures() {
        let gemma3 = m("gemma-3-27b");
        // 10 global layers × 8 KiB/token + 52 local layers × 1,024 tokens × 8 KiB.
        let fixed = 52 * 1_024 * 8_192;
        assert_eq!(fixed, 416 * 1024 * 1024);
        assert_eq!(
            gemma3.kv_bytes_for_context(8_192, KvDtype::F16, true),
            10 * 8_192 * 8_192 + fixed
        );
        assert_eq!(
            gemma3.kv_bytes_for_context(32_768, KvDtype::F16, true),
            3_120_562_176 // 2.91 GiB
        );
        assert_eq!(
            gemma3.kv_bytes_for_context(32_768, KvDtype::F16, false),
            507_904 * 32_768 // 15.5 GiB
        );
        // Shorter than the window: every layer holds every token.
        assert_eq!(
            gemma3.kv_bytes_for_context(512, KvDtype::F16, true),
            507_904 * 512
        );
        // gpt-oss-20b: 12 full layers × 2 KiB/token + 12 sliding layers × 128 tokens.
        assert_eq!(
            m("gpt-oss-20b").kv_bytes_for_context(32_768, KvDtype::F16, true),
            12 * 32_768 * 2_048 + 12 * 128 * 2_048
        );
        // Gemma-2-9B at 8k: 1.97 GiB instead of 2.62.
        assert_eq!(
            m("gemma-2-9b").kv_bytes_for_context(8_192, KvDtype::F16, true),
            2_113_929_216
        );
    }

    #[test]
    fn weight_bytes_are_params_times_bits_per_weight() {
        let llama = m("llama-3.1-8b");
        assert_eq!(llama.weight_bytes(WeightFormat::Bf16), 16_060_000_000);
        assert_eq!(llama.weight_bytes(WeightFormat::Fp8), 8_030_000_000);
        // 8.03e9 × 8.5 / 8 and × 4.85 / 8.
        assert_eq!(llama.weight_bytes(WeightFormat::Q8_0), 8_531_875_000);
        assert_eq!(llama.weight_bytes(WeightFormat::Q4KM), 4_868_187_500);
        assert_eq!(
            m("qwen2.5-32b").weight_bytes(WeightFormat::Bf16),
            65_000_000_000
        );
    }

    #[test]
    fn lookup_finds_models_by_alias_case_insensitively() {
        for (given, expected) in [
            ("llama-3.1-8b-instruct", "llama-3.1-8b"),
            ("llama-3.1-8b", "llama-3.1-8b"),
            ("meta-llama/Llama-3.1-8B-Instruct", "llama-3.1-8b"),
            ("LLAMA3.1:8B", "llama-3.1-8b"),
            ("qwen2.5-32b-instruct", "qwen2.5-32b"),
            ("Qwen/Qwen2.5-32B-Instruct", "qwen2.5-32b"),
            ("qwen2.5-coder-32b-instruct", "qwen2.5-coder-32b"),
            (
                "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B",
                "deepseek-r1-distill-qwen-32b",
            ),
            ("google/gemma-3-27b-it", "gemma-3-27b"),
            ("someorg/qwen3-8b", "qwen3-8b"),
            (" gpt-oss-20b ", "gpt-oss-20b"),
        ] {
            assert_eq!(m(given).name, expected, "{given}");
        }
    }

    #[test]
    fn qwen_coder_has_the_shape_of_qwen_32b() {
        let coder = m("qwen2.5-coder-32b-instruct");
        let base = m("qwen2.5-32b-instruct");
        assert_eq!(
            coder.kv_bytes_per_token(KvDtype::F16),
            base.kv_bytes_per_token(KvDtype::F16)
        );
        assert_eq!(coder.max_context, base.max_context);
    }

    #[test]
    fn unknown_name_lists_close_names_and_the_fix() {
        let err = lookup("llama-3.1-9b").unwrap_err();
        let CatalogError::Unknown { name, close } = &err;
        assert_eq!(name, "llama-3.1-9b");
        assert!(close.contains(&"llama-3.1-8b"), "{close:?}");
        assert_eq!(close[0], "llama-3.1-8b", "{close:?}");
        let msg = err.to_string();
        assert!(
            msg.starts_with("unknown model 'llama-3.1-9b'; close names: "),
            "{msg}"
        );
        assert!(msg.ends_with("; use one of them, or give kv_bytes_per_token directly"));

        let CatalogError::Unknown { close, .. } = lookup("qwen").unwrap_err();
        assert!(close.iter().all(|n| n.contains("qwen")), "{close:?}");
        assert!(close[0].starts_with("qwen"), "{close:?}");
        assert!(!close.is_empty());

        let CatalogError::Unknown { close, .. } = lookup("zzzzzzzzzzzz").unwrap_err();
        assert!(close.is_empty());
    }

    #[test]
    fn every_name_and_alias_is_lower_case_unique_and_found() {
        let mut seen = std::collections::HashSet::new();
        for model in models() {
            for n in std::iter::once(&model.name).chain(model.aliases.iter()) {
                assert_eq!(*n, n.to_ascii_lowercase());
                assert!(seen.insert(*n), "{n} appears twice");
                assert_eq!(m(n).name, model.name);
            }
            assert!(!model.source.is_empty());
            assert!(model.params > 0 && model.max_context > 0);
        }
        assert!(models().len() >= 18);
    }

    #[test]
    fn dtype_and_format_names_parse_and_round_trip() {
        for d in KvDtype::ALL {
            assert_eq!(d.name().parse::<KvDtype>(), Ok(d));
            let json = serde_json::to_string(&d).unwrap();
            assert_eq!(json, format!("\"{}\"", d.name()));
        }
        for w in WeightFormat::ALL {
            assert_eq!(w.name().parse::<WeightFormat>(), Ok(w));
            let json = serde_json::to_string(&w).unwrap();
            assert_eq!(json, format!("\"{}\"", w.name()));
        }
        let err = "int4".parse::<KvDtype>().unwrap_err().to_string();
        assert_eq!(
            err,
            "unknown KV cache dtype 'int4'; use one of f16, bf16, fp8, q8_0, q4_0"
        );
        assert!("q5".parse::<WeightFormat>().is_err());
    }

    #[test]
    fn levenshtein_counts_edits() {
        assert_eq!(levenshtein("kitten", "sitting"), 3);
        assert_eq!(levenshtein("", "abc"), 3);
        assert_eq!(levenshtein("same", "same"), 0);
    }
}
