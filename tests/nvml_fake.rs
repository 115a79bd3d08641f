//! The real nvml-wrapper code path against the fake `libnvidia-ml.so` built from
//! `tests/fixtures/fake_nvml.c` (scripts/test builds it into `target/fake-nvml/` and exports
//! `KG_FAKE_NVML`; this test builds it with gcc when it is missing or older than the source).
//!
//! The fake reads the state file named by `FAKE_NVML_STATE` on every call. That variable is
//! process-wide, so every test here holds one lock while it sets it and calls NVML.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};

use kanban_governor::adapters::nvml::{GpuSelector, NvmlTelemetry, NvmlUnavailable};
use kanban_governor::governor::{Bytes, Millis};
use kanban_governor::ports::GpuTelemetry;

fn fake_lib() -> PathBuf {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let src = root.join("tests/fixtures/fake_nvml.c");
        if let Ok(p) = std::env::var("KG_FAKE_NVML") {
            let p = PathBuf::from(p);
            assert!(
                p.is_file(),
                "KG_FAKE_NVML={} is missing; run scripts/test",
                p.display()
            );
            return p;
        }
        let lib = root.join("target/fake-nvml/libnvidia-ml.so");
        let stale = match (lib.metadata(), src.metadata()) {
            (Ok(l), Ok(s)) => l.modified().unwrap() < s.modified().unwrap(),
            _ => true,
        };
        if stale {
            std::fs::create_dir_all(lib.parent().unwrap()).unwrap();
            let status = std::process::Command::new("gcc")
                .args(["-shared", "-fPIC", "-O1", "-o"])
                .arg(&lib)
                .arg(&src)
                .status();
            assert!(
                matches!(status, Ok(s) if s.success()),
                "building the fake NVML library with gcc failed ({status:?}); run scripts/test"
            );
        }
        lib
    })
    .clone()
}

/// Holds the env lock and the state file for one test.
struct Fake {
    _lock: MutexGuard<'static, ()>,
    _dir: tempfile::TempDir,
    state: PathBuf,
}

impl Fake {
    fn new(state: &str) -> Fake {
        static LOCK: Mutex<()> = Mutex::new(());
        let lock = LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nvml.state");
        std::fs::write(&path, state).unwrap();
        // SAFETY: every test that touches the environment or calls NVML holds LOCK, so no
        // other thread reads the environment while it changes.
        unsafe { std::env::set_var("FAKE_NVML_STATE", &path) };
        Fake {
            _lock: lock,
            _dir: dir,
            state: path,
        }
    }

    fn write(&self, state: &str) {
        std::fs::write(&self.state, state).unwrap();
    }
}

const GIB: u64 = 1 << 30;

#[test]
fn reads_the_numbers_the_state_file_holds_and_sees_them_change() {
    let fake = Fake::new(&format!(
        "device 0 uuid=GPU-aaa name=FakeA100 total={} used={} reserved={}\n",
        80 * GIB,
        30 * GIB,
        GIB / 2
    ));
    let mut t = NvmlTelemetry::open(Some(&fake_lib()), &[GpuSelector::Index(0)]).unwrap();
    assert_eq!(t.devices()[0].uuid, "GPU-aaa");
    assert_eq!(t.devices()[0].name, "FakeA100");
    let s = t.read_gpu(Millis(42)).unwrap();
    assert_eq!(s.at, Millis(42));
    assert_eq!(s.total, Bytes(80 * GIB));
    assert_eq!(s.used, Bytes(30 * GIB));
    assert_eq!(s.free, Bytes(80 * GIB - 30 * GIB - GIB / 2));
    let m = t.read_memory(Millis(43)).unwrap();
    assert_eq!(m.reserved, Bytes(GIB / 2));
    assert_eq!(
        m.total,
        m.used.saturating_add(m.reserved).saturating_add(m.free)
    );

    fake.write(&format!(
        "device 0 uuid=GPU-aaa total={} used={} reserved=0\n",
        80 * GIB,
        70 * GIB
    ));
    let s = t.read_gpu(Millis(44)).unwrap();
    assert_eq!(s.used, Bytes(70 * GIB));
    assert_eq!(s.free, Bytes(10 * GIB));
    assert_eq!(t.driver_version().unwrap(), "550.54.15");
}

#[test]
fn sums_memory_over_the_pool_gpus_chosen_by_index_and_uuid() {
    let _fake = Fake::new(&format!(
        "device 0 uuid=GPU-a total={t} used={} reserved=0\n\
         device 1 uuid=GPU-b total={t} used={} reserved=0\n\
         device 2 uuid=GPU-c total={t} used={} reserved=0\n",
        GIB,
        2 * GIB,
        4 * GIB,
        t = 24 * GIB
    ));
    let t = NvmlTelemetry::open(
        Some(&fake_lib()),
        &[GpuSelector::Index(0), GpuSelector::Uuid("GPU-c".into())],
    )
    .unwrap();
    assert_eq!(t.devices()[1].index, Some(2));
    let m = t.read_memory(Millis(1)).unwrap();
    assert_eq!(m.devices.len(), 2);
    assert_eq!(m.total, Bytes(48 * GIB));
    assert_eq!(m.used, Bytes(5 * GIB));
    assert_eq!(m.free, Bytes(43 * GIB));
}

#[test]
fn reads_a_mig_instance_by_index_and_by_uuid() {
    let _fake = Fake::new(&format!(
        "device 0 uuid=GPU-p total={} used={} mig=1\n\
         mig 0 0 total={} used={}\n\
         mig 0 1 uuid=MIG-one total={} used={} reserved={}\n\
         process 0/1 4242 {}\n\
         process 0 77 {}\n",
        80 * GIB,
        3 * GIB,
        10 * GIB,
        GIB,
        20 * GIB,
        5 * GIB,
        GIB,
        5 * GIB,
        GIB
    ));
    let t = NvmlTelemetry::open(
        Some(&fake_lib()),
        &[GpuSelector::Mig {
            gpu: 0,
            instance: 1,
        }],
    )
    .unwrap();
    assert_eq!(t.devices()[0].uuid, "MIG-one");
    let m = t.read_memory(Millis(1)).unwrap();
    assert_eq!(
        (m.total, m.used, m.free),
        (Bytes(20 * GIB), Bytes(5 * GIB), Bytes(14 * GIB))
    );
    let ps = t.read_processes().unwrap();
    assert_eq!(ps.len(), 1);
    assert_eq!(ps[0].pid, 4242);
    assert_eq!(ps[0].gpu_instance_id, Some(1));

    let by_uuid =
        NvmlTelemetry::open(Some(&fake_lib()), &[GpuSelector::Uuid("MIG-one".into())]).unwrap();
    assert_eq!(
        by_uuid.read_memory(Millis(1)).unwrap().total,
        Bytes(20 * GIB)
    );
    let parent = NvmlTelemetry::open(Some(&fake_lib()), &[GpuSelector::Index(0)]).unwrap();
    assert_eq!(parent.mig_enabled(0), Some(true));
}

#[test]
fn per_process_usage_tells_the_server_from_other_tenants() {
    let fake = Fake::new(&format!(
        "device 0 total={} used={}\nprocess 0 1000 {}\nprocess 0 2000 {}\nprocess 0 3000 na\n",
        24 * GIB,
        20 * GIB,
        18 * GIB,
        2 * GIB
    ));
    let t = NvmlTelemetry::open(Some(&fake_lib()), &[]).unwrap();
    let ps = t.read_processes().unwrap();
    let by_pid: Vec<(u32, Option<Bytes>)> = ps.iter().map(|p| (p.pid, p.used)).collect();
    assert_eq!(
        by_pid,
        vec![
            (1000, Some(Bytes(18 * GIB))),
            (2000, Some(Bytes(2 * GIB))),
            (3000, None)
        ]
    );
    // A process appears when the state file says so (a fake engine publishing its use).
    fake.write(&format!(
        "device 0 total={} used=0\nprocess 0 5 {}\n",
        24 * GIB,
        GIB
    ));
    assert_eq!(t.read_processes().unwrap()[0].pid, 5);
    fake.write(&format!("device 0 total={} used=0\n", 24 * GIB));
    assert!(t.read_processes().unwrap().is_empty());
}

#[test]
fn an_error_injected_mid_run_is_a_sample_error_and_reading_recovers() {
    let fake = Fake::new(&format!("device 0 total={} used={}\n", 24 * GIB, GIB));
    let mut t = NvmlTelemetry::open(Some(&fake_lib()), &[]).unwrap();
    assert!(t.read_gpu(Millis(1)).is_ok());
    fake.write(&format!(
        "device 0 total={} used={}\nerror memory_info 15\n",
        24 * GIB,
        GIB
    ));
    let err = t.read_memory(Millis(2)).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("nvmlDeviceGetMemoryInfo_v2"), "{msg}");
    assert!(msg.contains("GPU 0"), "{msg}");
    assert!(t.read_gpu(Millis(2)).is_err());
    fake.write(&format!(
        "device 0 total={} used={}\nerror processes 999\n",
        24 * GIB,
        GIB
    ));
    assert!(t.read_gpu(Millis(3)).is_ok());
    assert!(t.read_processes().is_err());
    fake.write(&format!("device 0 total={} used={}\n", 24 * GIB, 2 * GIB));
    assert_eq!(t.read_gpu(Millis(4)).unwrap().used, Bytes(2 * GIB));
}

fn assert_names_the_fix(err: &NvmlUnavailable) {
    let msg = err.to_string();
    assert!(msg.contains("telemetry = \"static\""), "{msg}");
    assert!(msg.contains("replay"), "{msg}");
}

#[test]
fn a_missing_library_is_a_usage_error_naming_the_fix() {
    let _fake = Fake::new("device 0 total=1 used=0\n");
    let err =
        NvmlTelemetry::open(Some(Path::new("/nonexistent/libnvidia-ml.so.1")), &[]).unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/libnvidia-ml.so.1"),
        "{err}"
    );
    assert_names_the_fix(&err);
    let chain = anyhow::Error::new(err).context("starting telemetry for pool default");
    assert_eq!(kanban_governor::error::exit_code(&chain), 2);
}

#[test]
fn a_driver_that_is_not_loaded_or_a_host_without_gpus_is_a_usage_error() {
    let fake = Fake::new("init_error 9\n");
    let err = NvmlTelemetry::open(Some(&fake_lib()), &[]).unwrap_err();
    assert!(err.to_string().contains("driver is not loaded"), "{err}");
    assert_names_the_fix(&err);
    fake.write("# no devices\n");
    let err = NvmlTelemetry::open(Some(&fake_lib()), &[]).unwrap_err();
    assert!(err.to_string().contains("no GPU"), "{err}");
    assert_names_the_fix(&err);
}

#[test]
fn a_gpu_that_does_not_exist_is_named_with_the_gpus_there_are() {
    let _fake = Fake::new("device 0 uuid=GPU-only name=Solo total=100 used=0\n");
    let err = NvmlTelemetry::open(Some(&fake_lib()), &[GpuSelector::Index(3)]).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("GPU 3 not found"), "{msg}");
    assert!(msg.contains("GPU-only"), "{msg}");
    assert!(msg.contains("gpu.index"), "{msg}");
    let err = NvmlTelemetry::open(Some(&fake_lib()), &[GpuSelector::Uuid("GPU-nope".into())])
        .unwrap_err();
    assert!(err.to_string().contains("GPU-nope"), "{err}");
}

/// On a machine with an NVIDIA GPU: `cargo test --test nvml_fake -- --ignored`.
#[test]
#[ignore = "needs a real NVIDIA GPU and driver"]
fn real_gpu_memory_adds_up() {
    let t = NvmlTelemetry::open(None, &[GpuSelector::Index(0)]).unwrap();
    let m = t.read_memory(Millis(0)).unwrap();
    assert!(m.total.get() > 0);
    assert_eq!(
        m.total,
        m.used.saturating_add(m.reserved).saturating_add(m.free),
        "{m:?}"
    );
    t.read_processes().unwrap();
    eprintln!("{:?} {m:?}", t.devices());
}
