//! NVML (placeholder while being written).
