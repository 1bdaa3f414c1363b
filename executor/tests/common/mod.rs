//! Multi-process test harness: a test re-executes its own test binary as N
//! ranks, each running one `#[ignore]`d worker test selected with
//! `--ignored --exact`, with torchrun-style variables (RANK, WORLD_SIZE,
//! MASTER_ADDR, MASTER_PORT on a fresh 127.0.0.1 port) plus `SSC_TEST_DIR`
//! for the workers' results. Ignored workers never run on their own.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A fresh directory under the system temp dir.
pub fn temp_dir(tag: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let d = std::env::temp_dir().join(format!("seerscale-{tag}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn free_port() -> u16 {
    executor::dist::free_port().unwrap()
}

/// Runs worker test `worker` as `world` ranks and waits (at most
/// `deadline`, then kills them). Returns each rank's output.
pub fn run_ranks(worker: &str, world: usize, dir: &Path, env: &[(&str, String)], deadline: Duration) -> Vec<Output> {
    let exe = std::env::current_exe().unwrap();
    let port = free_port();
    let mut children = Vec::new();
    for rank in 0..world {
        let mut cmd = Command::new(&exe);
        cmd.args(["--ignored", "--exact", worker, "--nocapture", "--test-threads=1"])
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", world.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .env("SSC_TEST_DIR", dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        children.push(cmd.spawn().unwrap());
    }
    let start = Instant::now();
    loop {
        if children.iter_mut().all(|c| c.try_wait().ok().flatten().is_some()) {
            break;
        }
        if start.elapsed() > deadline {
            for c in children.iter_mut() {
                let _ = c.kill();
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    children.into_iter().map(|c| c.wait_with_output().unwrap()).collect()
}

/// Asserts every rank succeeded, printing their output otherwise.
pub fn assert_all_ok(outs: &[Output]) {
    for (r, o) in outs.iter().enumerate() {
        assert!(
            o.status.success(),
            "rank {r} failed ({}):\nstdout:\n{}\nstderr:\n{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

/// Worker side: `(rank, world, port, dir)` or None when run outside a test harness spawn.
pub fn worker_env() -> (usize, usize, u16, PathBuf) {
    let get = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("worker tests are run by their parent test ({k} unset)"));
    (get("RANK").parse().unwrap(), get("WORLD_SIZE").parse().unwrap(), get("MASTER_PORT").parse().unwrap(), PathBuf::from(get("SSC_TEST_DIR")))
}

pub fn group(backend_timeout: Duration) -> executor::dist::ProcessGroup {
    let (rank, world, port, _) = worker_env();
    executor::dist::ProcessGroup::new(&executor::dist::GroupConfig {
        master_addr: "127.0.0.1".into(),
        master_port: port,
        rank,
        world_size: world,
        backend: executor::dist::Backend::Gloo,
        timeout: backend_timeout,
    })
    .unwrap()
}
