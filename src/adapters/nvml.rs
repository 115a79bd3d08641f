//! `telemetry = "nvml"`: GPU memory through NVML (nvml-wrapper 0.13, which dlopens
//! `libnvidia-ml.so.1` at run time: the binary starts without a driver and only
//! [`NvmlTelemetry::open`] fails).
//!
//! Memory info v2 (`total = reserved + used + free`) per GPU, summed over the pool's GPUs
//! (a tensor-parallel engine spans several); whole GPUs by index or UUID, MIG instances by
//! `(gpu, instance)` or their `MIG-...` UUID. Per-process usage tells the inference server
//! from other tenants ([`NvmlTelemetry::read_processes`]). Headroom comes from `free`, never
//! `total − used`.
//!
//! Errors: a library that cannot be loaded, a driver that is not running or a GPU that does not
//! exist is [`NvmlUnavailable`] (a usage error, exit 2, naming `telemetry = "static"` and
//! `{ replay = ... }` as the fix). A call failing mid-run is [`NvmlSampleError`]: the caller
//! holds, nothing crashes. Device handles are fetched again on every read (they borrow the
//! library handle, and a GPU can fall off the bus). Blocking FFI: call from `spawn_blocking`.

use std::fmt;
use std::path::{Path, PathBuf};

use nvml_wrapper::Nvml;
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::error::NvmlError;
use thiserror::Error;

use crate::governor::{Bytes, GpuSample, Millis};
use crate::ports::{GpuTelemetry, PortError};

/// The fix every [`NvmlUnavailable`] names.
const FIX: &str = "install or load the NVIDIA driver, or set gpu.telemetry = \"static\" (with \
                   gpu.memory_total) or gpu.telemetry = { replay = \"samples.jsonl\" }";

/// NVML cannot serve this pool: no library, no driver, no such GPU. A usage error (exit 2):
/// [`crate::error::exit_code`] recognises it.
#[derive(Debug, Error)]
#[error("nvml: {what}; {FIX}")]
pub struct NvmlUnavailable {
    /// What failed, with the library path or GPU it concerns.
    pub what: String,
    /// NVML's error, when there was one.
    #[source]
    pub source: Option<NvmlError>,
}

/// One NVML call failed while reading (a sample error: the caller holds).
#[derive(Debug, Error)]
#[error("nvml: {call} on GPU {gpu} failed: {source}")]
pub struct NvmlSampleError {
    /// The GPU, as configured.
    pub gpu: String,
    /// The NVML call.
    pub call: &'static str,
    /// NVML's error.
    #[source]
    pub source: NvmlError,
}

/// Which GPU (or MIG instance) a pool uses (config `gpu.index`, `gpu.uuid`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum GpuSelector {
    /// A whole GPU by NVML index (the order of `nvidia-smi`, not `CUDA_VISIBLE_DEVICES`).
    Index(u32),
    /// A GPU (`GPU-...`) or MIG instance (`MIG-...`) by UUID.
    Uuid(String),
    /// MIG instance `instance` of GPU `gpu`.
    Mig {
        /// The parent GPU's index.
        gpu: u32,
        /// The MIG device index on that GPU.
        instance: u32,
    },
}

impl fmt::Display for GpuSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GpuSelector::Index(i) => write!(f, "{i}"),
            GpuSelector::Uuid(u) => write!(f, "{u}"),
            GpuSelector::Mig { gpu, instance } => write!(f, "{gpu} MIG {instance}"),
        }
    }
}

/// A GPU or MIG instance as NVML names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// How the config chose it.
    pub selector: GpuSelector,
    /// NVML index (of the parent GPU for a MIG instance).
    pub index: Option<u32>,
    /// UUID.
    pub uuid: String,
    /// Product name.
    pub name: String,
}

/// Memory of one GPU or MIG instance (NVML memory info v2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceMemory {
    /// The device.
    pub gpu: GpuSelector,
    /// Total.
    pub total: Bytes,
    /// Reserved by the driver and firmware.
    pub reserved: Bytes,
    /// Allocated.
    pub used: Bytes,
    /// Free: what can still be allocated.
    pub free: Bytes,
}

/// Memory of a pool: each device and the sums.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolMemory {
    /// When it was read.
    pub at: Millis,
    /// Per device, in configured order.
    pub devices: Vec<DeviceMemory>,
    /// Σ total.
    pub total: Bytes,
    /// Σ reserved.
    pub reserved: Bytes,
    /// Σ used.
    pub used: Bytes,
    /// Σ free.
    pub free: Bytes,
}

impl PoolMemory {
    /// The summed sample the decision uses.
    pub fn sample(&self) -> GpuSample {
        GpuSample {
            at: self.at,
            total: self.total,
            used: self.used,
            free: self.free,
        }
    }
}

/// A process with a compute context on one of the pool's devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuProcess {
    /// The device.
    pub gpu: GpuSelector,
    /// Host PID (NVML is not PID-namespace aware).
    pub pid: u32,
    /// GPU memory it uses; `None` when NVML cannot say.
    pub used: Option<Bytes>,
    /// MIG GPU instance, if any.
    pub gpu_instance_id: Option<u32>,
}

/// GPU memory split between the inference server and everything else on the pool's GPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TenantSplit {
    /// Memory of the server's processes.
    pub server: Bytes,
    /// Memory of every other process (other tenants: agent tools, notebooks, a second model).
    pub others: Bytes,
    /// Processes whose memory NVML could not report.
    pub unknown: usize,
}

/// Split `processes` into the server's (`server_pids`) and the others'. PIDs are host PIDs:
/// inside a container without `--pid=host` they will not match the container's own.
pub fn split_tenants(processes: &[GpuProcess], server_pids: &[u32]) -> TenantSplit {
    let mut out = TenantSplit::default();
    for p in processes {
        match p.used {
            None => out.unknown += 1,
            Some(b) if server_pids.contains(&p.pid) => out.server = out.server.saturating_add(b),
            Some(b) => out.others = out.others.saturating_add(b),
        }
    }
    out
}

/// NVML memory of one pool's GPUs.
pub struct NvmlTelemetry {
    nvml: Nvml,
    devices: Vec<DeviceInfo>,
}

impl fmt::Debug for NvmlTelemetry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NvmlTelemetry")
            .field("devices", &self.devices)
            .finish_non_exhaustive()
    }
}

fn unavailable(what: String, source: Option<NvmlError>) -> NvmlUnavailable {
    NvmlUnavailable { what, source }
}

fn device_of<'n>(nvml: &'n Nvml, sel: &GpuSelector) -> Result<nvml_wrapper::Device<'n>, NvmlError> {
    match sel {
        GpuSelector::Index(i) => nvml.device_by_index(*i),
        GpuSelector::Uuid(u) => nvml.device_by_uuid(u.as_str()),
        GpuSelector::Mig { gpu, instance } => {
            nvml.device_by_index(*gpu)?.mig_device_by_index(*instance)
        }
    }
}

impl NvmlTelemetry {
    /// Load NVML (from `lib_path`, else the system's `libnvidia-ml.so.1`) and resolve `gpus`
    /// (GPU 0 when empty).
    ///
    /// # Errors
    ///
    /// [`NvmlUnavailable`]: the library cannot be loaded or initialised, the host has no GPU,
    /// or a selected GPU does not exist (the message lists the GPUs there are).
    pub fn open(
        lib_path: Option<&Path>,
        gpus: &[GpuSelector],
    ) -> Result<NvmlTelemetry, NvmlUnavailable> {
        let lib_name = lib_path.map_or_else(
            || "libnvidia-ml.so.1".to_string(),
            |p| p.display().to_string(),
        );
        let nvml = match lib_path {
            Some(p) => Nvml::builder().lib_path(p.as_os_str()).init(),
            None => Nvml::init(),
        }
        .map_err(|e| {
            let what = match &e {
                NvmlError::LibloadingError(_) => format!("cannot load {lib_name} ({e})"),
                NvmlError::FailedToLoadSymbol(_) => {
                    format!("{lib_name} is too old or not NVML ({e})")
                }
                NvmlError::DriverNotLoaded => "the NVIDIA driver is not loaded".to_string(),
                NvmlError::NoPermission => "no permission to talk to the NVIDIA driver".to_string(),
                _ => format!("initialising {lib_name} failed: {e}"),
            };
            unavailable(what, Some(e))
        })?;
        let count = nvml
            .device_count()
            .map_err(|e| unavailable(format!("counting GPUs failed: {e}"), Some(e)))?;
        if count == 0 {
            return Err(unavailable(
                format!("{lib_name} loaded but the host has no GPU"),
                None,
            ));
        }
        let wanted: Vec<GpuSelector> = if gpus.is_empty() {
            vec![GpuSelector::Index(0)]
        } else {
            gpus.to_vec()
        };
        let mut devices = Vec::with_capacity(wanted.len());
        for sel in wanted {
            let info = device_of(&nvml, &sel)
                .and_then(|d| {
                    Ok(DeviceInfo {
                        index: d.index().ok().or(match &sel {
                            GpuSelector::Index(i) | GpuSelector::Mig { gpu: i, .. } => Some(*i),
                            GpuSelector::Uuid(_) => None,
                        }),
                        uuid: d.uuid()?,
                        name: d.name().unwrap_or_default(),
                        selector: sel.clone(),
                    })
                })
                .map_err(|e| {
                    let there = list_gpus(&nvml);
                    unavailable(
                        format!(
                            "GPU {sel} not found ({e}); this host has {count} GPU(s): {there}; \
                             set gpu.index or gpu.uuid to one of them"
                        ),
                        Some(e),
                    )
                })?;
            devices.push(info);
        }
        Ok(NvmlTelemetry { nvml, devices })
    }

    /// The pool's devices, as resolved at open.
    pub fn devices(&self) -> &[DeviceInfo] {
        &self.devices
    }

    /// The driver version.
    ///
    /// # Errors
    ///
    /// The call failed.
    pub fn driver_version(&self) -> Result<String, NvmlSampleError> {
        self.nvml
            .sys_driver_version()
            .map_err(|source| NvmlSampleError {
                gpu: "-".into(),
                call: "nvmlSystemGetDriverVersion",
                source,
            })
    }

    /// Is MIG mode on for this pool's device `i`? `None` when the GPU does not support MIG
    /// (or `i` is a MIG instance).
    pub fn mig_enabled(&self, i: usize) -> Option<bool> {
        let sel = &self.devices.get(i)?.selector;
        let d = device_of(&self.nvml, sel).ok()?;
        d.mig_mode().ok().map(|m| m.current == 1)
    }

    fn err<'a>(
        sel: &'a GpuSelector,
        call: &'static str,
    ) -> impl Fn(NvmlError) -> NvmlSampleError + 'a {
        move |source| NvmlSampleError {
            gpu: sel.to_string(),
            call,
            source,
        }
    }

    /// Memory of every device of the pool and the sums, stamped `now`.
    ///
    /// # Errors
    ///
    /// Any device's handle or memory call failed (the sample is unknown as a whole).
    pub fn read_memory(&self, now: Millis) -> Result<PoolMemory, NvmlSampleError> {
        let mut out = PoolMemory {
            at: now,
            devices: Vec::with_capacity(self.devices.len()),
            total: Bytes(0),
            reserved: Bytes(0),
            used: Bytes(0),
            free: Bytes(0),
        };
        for dev in &self.devices {
            let sel = &dev.selector;
            let d = device_of(&self.nvml, sel).map_err(Self::err(sel, "nvmlDeviceGetHandle"))?;
            let m = d
                .memory_info()
                .map_err(Self::err(sel, "nvmlDeviceGetMemoryInfo_v2"))?;
            let dm = DeviceMemory {
                gpu: sel.clone(),
                total: Bytes(m.total),
                reserved: Bytes(m.reserved),
                used: Bytes(m.used),
                free: Bytes(m.free),
            };
            out.total = out.total.saturating_add(dm.total);
            out.reserved = out.reserved.saturating_add(dm.reserved);
            out.used = out.used.saturating_add(dm.used);
            out.free = out.free.saturating_add(dm.free);
            out.devices.push(dm);
        }
        Ok(out)
    }

    /// Processes with a compute context on the pool's devices and the memory each uses.
    ///
    /// # Errors
    ///
    /// Any device's handle or process call failed.
    pub fn read_processes(&self) -> Result<Vec<GpuProcess>, NvmlSampleError> {
        let mut out = Vec::new();
        for dev in &self.devices {
            let sel = &dev.selector;
            let d = device_of(&self.nvml, sel).map_err(Self::err(sel, "nvmlDeviceGetHandle"))?;
            let ps = d
                .running_compute_processes()
                .map_err(Self::err(sel, "nvmlDeviceGetComputeRunningProcesses_v3"))?;
            out.extend(ps.into_iter().map(|p| GpuProcess {
                gpu: sel.clone(),
                pid: p.pid,
                used: match p.used_gpu_memory {
                    // Some R570 drivers report u64::MAX for "unknown".
                    UsedGpuMemory::Used(b) if b != u64::MAX => Some(Bytes(b)),
                    _ => None,
                },
                gpu_instance_id: p.gpu_instance_id,
            }));
        }
        Ok(out)
    }
}

/// "0 'name' uuid, 1 ..." for error messages (best effort).
fn list_gpus(nvml: &Nvml) -> String {
    let n = nvml.device_count().unwrap_or(0);
    let mut parts = Vec::new();
    for i in 0..n {
        if let Ok(d) = nvml.device_by_index(i) {
            parts.push(format!(
                "{i} '{}' {}",
                d.name().unwrap_or_default(),
                d.uuid().unwrap_or_default()
            ));
        }
    }
    if parts.is_empty() {
        "none readable".into()
    } else {
        parts.join(", ")
    }
}

impl GpuTelemetry for NvmlTelemetry {
    fn read_gpu(&mut self, now: Millis) -> Result<GpuSample, PortError> {
        Ok(self.read_memory(now)?.sample())
    }
}

/// Where the NVML library comes from: the system's, or a path (tests, unusual installs).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum NvmlLibrary {
    /// `libnvidia-ml.so.1` from the loader's search path.
    #[default]
    System,
    /// This file.
    Path(PathBuf),
}

impl NvmlLibrary {
    /// The environment variable that points NVML at another library file (tests use the fake
    /// one; unusual installs their own).
    pub const ENV: &'static str = "KANBAN_GOVERNOR_NVML_LIB";

    /// `KANBAN_GOVERNOR_NVML_LIB` when set and not empty, else the system library.
    pub fn from_env() -> NvmlLibrary {
        match std::env::var_os(Self::ENV) {
            Some(p) if !p.is_empty() => NvmlLibrary::Path(PathBuf::from(p)),
            _ => NvmlLibrary::System,
        }
    }

    /// The path, if one was given.
    pub fn path(&self) -> Option<&Path> {
        match self {
            NvmlLibrary::System => None,
            NvmlLibrary::Path(p) => Some(p),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_memory_between_the_server_and_other_tenants() {
        let p = |pid, used: Option<u64>| GpuProcess {
            gpu: GpuSelector::Index(0),
            pid,
            used: used.map(Bytes),
            gpu_instance_id: None,
        };
        let ps = [
            p(10, Some(100)),
            p(11, Some(5)),
            p(20, Some(7)),
            p(30, None),
        ];
        assert_eq!(
            split_tenants(&ps, &[10, 11]),
            TenantSplit {
                server: Bytes(105),
                others: Bytes(7),
                unknown: 1
            }
        );
        assert_eq!(split_tenants(&ps, &[]).others, Bytes(112));
    }

    #[test]
    fn selectors_print_as_the_config_names_them() {
        assert_eq!(GpuSelector::Index(2).to_string(), "2");
        assert_eq!(GpuSelector::Uuid("GPU-x".into()).to_string(), "GPU-x");
        assert_eq!(
            GpuSelector::Mig {
                gpu: 0,
                instance: 3
            }
            .to_string(),
            "0 MIG 3"
        );
    }
}
