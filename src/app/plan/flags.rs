//! The flags of `plan`.

use super::Engine;
use std::path::PathBuf;

/// Flags of this command (boxed: they are many, and `cli::Command` holds every command's
/// flags inline).
#[derive(Debug, Default, clap::Args)]
pub struct PlanArgs {
    /// The flags.
    #[command(flatten)]
    pub flags: Box<PlanFlags>,
}

impl std::ops::Deref for PlanArgs {
    type Target = PlanFlags;

    fn deref(&self) -> &PlanFlags {
        &self.flags
    }
}

impl std::ops::DerefMut for PlanArgs {
    fn deref_mut(&mut self) -> &mut PlanFlags {
        &mut self.flags
    }
}

/// The flags of `plan`.
#[derive(Debug, Default, clap::Args)]
pub struct PlanFlags {
    /// Plan every pool of this governor config, with its profiles, capacities and caps
    /// (instead of the profile flags).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// GPU memory, as an IEC size (`80GiB`, `24GiB`). Default 80GiB.
    #[arg(long, value_name = "SIZE")]
    pub gpu_memory: Option<String>,
    /// The inference engine: vllm, sglang, llamacpp, ollama or openai (unknown
    /// OpenAI-compatible server). Default vllm for flags, llamacpp for the ready profiles.
    #[arg(long, value_enum)]
    pub engine: Option<Engine>,
    /// The model (a catalog name, Hugging Face id or Ollama tag).
    #[arg(long)]
    pub model: Option<String>,
    /// KV bytes per token, for a model not in the catalog (instead of --model).
    #[arg(long, value_name = "BYTES")]
    pub kv_bytes_per_token: Option<u64>,
    /// The largest context one request of a task reaches, in tokens.
    #[arg(long, value_name = "TOKENS")]
    pub max_context: Option<u64>,
    /// LLM requests a task can have in flight at once (sub-agents). Default 1.
    #[arg(long, value_name = "N")]
    pub requests_per_task: Option<u32>,
    /// GPU memory a task uses outside the engine, as an IEC size. Default 0.
    #[arg(long, value_name = "SIZE")]
    pub extra_bytes: Option<String>,
    /// The profile's name in the report. Default `plan`.
    #[arg(long)]
    pub name: Option<String>,
    /// Fraction of GPU memory the governor may fill, in (0, 1]. Default 0.85.
    #[arg(long)]
    pub headroom: Option<f64>,
    /// GPU memory always kept free, as an IEC size. Default 1GiB.
    #[arg(long, value_name = "SIZE")]
    pub reserve: Option<String>,
    /// Weight format: bf16, fp8, q8_0, q4_k_m. Default bf16 for vllm/sglang/openai,
    /// q4_k_m for llamacpp/ollama.
    #[arg(long, value_name = "FORMAT")]
    pub weights: Option<String>,
    /// Memory the loaded weights take, as an IEC size: overrides the catalog's estimate
    /// (params × bits per weight), and is how weights are counted with --kv-bytes-per-token.
    #[arg(long, value_name = "SIZE")]
    pub weight_memory: Option<String>,
    /// KV cache dtype: f16, bf16, fp8, q8_0, q4_0. Default f16.
    #[arg(long, value_name = "DTYPE")]
    pub kv_dtype: Option<String>,
    /// Activation / compute-buffer allowance per loaded model, as an IEC size (default:
    /// 4GiB for vllm/sglang/openai, 1GiB for llamacpp/ollama).
    #[arg(long, value_name = "SIZE")]
    pub overhead: Option<String>,
    /// vLLM/SGLang: the `--max-model-len` the server already runs with (longer contexts never fit).
    #[arg(long, value_name = "TOKENS")]
    pub max_model_len: Option<u64>,
    /// llama.cpp: the `-c` the server already runs with (needs --parallel).
    #[arg(long, value_name = "TOKENS", requires = "parallel")]
    pub ctx_size: Option<u64>,
    /// llama.cpp/Ollama: the `-np` / `OLLAMA_NUM_PARALLEL` the server already runs with.
    #[arg(long, value_name = "N")]
    pub parallel: Option<u32>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}
