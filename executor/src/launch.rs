//! Starting ranks: the local launcher (torchrun-like: N children of the same
//! program with RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT)
//! and reading those variables (or SLURM's) inside a rank.
//!
//! The launcher forwards each child's stdout prefixed with `[rank r]`; on a
//! terminal rank 0's stderr is passed through untouched so its progress bar
//! draws there, other ranks' stderr (and rank 0's elsewhere) is prefixed
//! too. When a child fails, the others get `grace` to stop on their own (their collectives fail fast when
//! a peer's socket closes, or time out), then are killed. The launcher
//! reports the rank that failed first with that rank's own error: each
//! child writes its one-line error to the file named by [`ERROR_FILE_VAR`],
//! and the earliest written wins (a peer's "disconnected" comes later).

use std::ffi::OsString;
use std::io::{BufRead, BufReader, IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A child that fails writes its one-line error to the file this names.
pub const ERROR_FILE_VAR: &str = "SEERSCALE_ERROR_FILE";

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("environment variable {var}={value:?}: {reason}")]
    BadEnv { var: &'static str, value: String, reason: String },
    #[error("{var} is set but {missing} is not: set both (torchrun style) or neither")]
    IncompleteEnv { var: &'static str, missing: &'static str },
    #[error("cannot start rank {rank} ({program}): {source}")]
    Spawn { rank: usize, program: PathBuf, source: std::io::Error },
    #[error("rank {rank} failed ({status}); the other ranks were stopped{detail}")]
    RankFailed { rank: usize, status: String, detail: String },
    #[error("cannot create a temporary folder for the ranks' errors: {0}")]
    ErrorDir(std::io::Error),
    #[error("ranks did not finish within {0:?}; all were killed")]
    Deadline(Duration),
    #[error("--nproc-per-node must be >= 1")]
    NoRanks,
    #[error("no free port for the rendezvous: {0}")]
    Port(std::io::Error),
}

/// Where this process sits in the job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RankEnv {
    pub rank: usize,
    pub world_size: usize,
    pub local_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
}

impl RankEnv {
    /// A single-process job on this machine.
    pub fn single(master_port: u16) -> RankEnv {
        RankEnv { rank: 0, world_size: 1, local_rank: 0, master_addr: "127.0.0.1".into(), master_port }
    }

    /// Reads torchrun's variables, else SLURM's (`SLURM_PROCID`,
    /// `SLURM_NTASKS`, `SLURM_LOCALID`, with `MASTER_ADDR` and `MASTER_PORT`
    /// defaulting to 127.0.0.1:29500 only for one-node jobs), else None.
    pub fn from_env() -> Result<Option<RankEnv>, LaunchError> {
        Self::from_lookup(&|k| std::env::var(k).ok())
    }

    /// As [`RankEnv::from_env`] with an explicit lookup (testable).
    pub fn from_lookup(get: &dyn Fn(&str) -> Option<String>) -> Result<Option<RankEnv>, LaunchError> {
        fn num(get: &dyn Fn(&str) -> Option<String>, var: &'static str) -> Result<Option<usize>, LaunchError> {
            match get(var) {
                None => Ok(None),
                Some(v) => v.trim().parse::<usize>().map(Some).map_err(|e| LaunchError::BadEnv { var, value: v, reason: e.to_string() }),
            }
        }
        let port = |default: Option<u16>| -> Result<u16, LaunchError> {
            match get("MASTER_PORT") {
                Some(v) => v.trim().parse::<u16>().map_err(|e| LaunchError::BadEnv { var: "MASTER_PORT", value: v, reason: e.to_string() }),
                None => default.ok_or(LaunchError::IncompleteEnv { var: "RANK", missing: "MASTER_PORT" }),
            }
        };
        let (rank, world, local, addr, mport) = if let Some(rank) = num(get, "RANK")? {
            let world = num(get, "WORLD_SIZE")?.ok_or(LaunchError::IncompleteEnv { var: "RANK", missing: "WORLD_SIZE" })?;
            let local = num(get, "LOCAL_RANK")?.unwrap_or(rank);
            let addr = get("MASTER_ADDR").ok_or(LaunchError::IncompleteEnv { var: "RANK", missing: "MASTER_ADDR" })?;
            (rank, world, local, addr, port(None)?)
        } else if let Some(rank) = num(get, "SLURM_PROCID")? {
            let world = num(get, "SLURM_NTASKS")?.ok_or(LaunchError::IncompleteEnv { var: "SLURM_PROCID", missing: "SLURM_NTASKS" })?;
            let local = num(get, "SLURM_LOCALID")?.unwrap_or(0);
            let nodes = num(get, "SLURM_NNODES")?.unwrap_or(1);
            let addr = match get("MASTER_ADDR") {
                Some(a) => a,
                None if nodes <= 1 => "127.0.0.1".to_string(),
                None => return Err(LaunchError::IncompleteEnv { var: "SLURM_PROCID", missing: "MASTER_ADDR (multi-node SLURM job)" }),
            };
            (rank, world, local, addr, port(Some(29500))?)
        } else {
            return Ok(None);
        };
        if world == 0 || rank >= world {
            return Err(LaunchError::BadEnv { var: "RANK", value: rank.to_string(), reason: format!("not below WORLD_SIZE={world}") });
        }
        Ok(Some(RankEnv { rank, world_size: world, local_rank: local, master_addr: addr, master_port: mport }))
    }

    /// The variables a child needs (torchrun names).
    pub fn vars(&self) -> Vec<(&'static str, String)> {
        vec![
            ("RANK", self.rank.to_string()),
            ("WORLD_SIZE", self.world_size.to_string()),
            ("LOCAL_RANK", self.local_rank.to_string()),
            ("LOCAL_WORLD_SIZE", self.world_size.to_string()),
            ("MASTER_ADDR", self.master_addr.clone()),
            ("MASTER_PORT", self.master_port.to_string()),
        ]
    }
}

#[derive(Clone, Debug)]
pub struct LaunchOptions {
    pub nproc: usize,
    /// None: pick a free port on 127.0.0.1.
    pub master_port: Option<u16>,
    /// How long survivors get to exit after a rank fails.
    pub grace: Duration,
    /// Kill everything after this long (None: no limit).
    pub deadline: Option<Duration>,
    /// Extra environment for every child.
    pub env: Vec<(String, String)>,
}

impl LaunchOptions {
    pub fn local(nproc: usize) -> LaunchOptions {
        LaunchOptions { nproc, master_port: None, grace: Duration::from_secs(30), deadline: None, env: Vec::new() }
    }
}

fn describe(status: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(sig) = status.signal() {
        let name = match sig {
            6 => " (SIGABRT)",
            9 => " (SIGKILL)",
            11 => " (SIGSEGV)",
            15 => " (SIGTERM)",
            _ => "",
        };
        format!("killed by signal {sig}{name}")
    } else {
        format!("exit code {}", status.code().unwrap_or(-1))
    }
}

/// Copies lines from a child pipe to our stdout/stderr with a prefix; keeps
/// the last lines so a failure can be reported with its cause.
fn forward(src: impl Read + Send + 'static, prefix: String, to_stderr: bool) -> std::thread::JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let mut tail: Vec<String> = Vec::new();
        for line in BufReader::new(src).lines() {
            let Ok(line) = line else { break };
            // The print macros, not raw handles: a test harness that
            // captures this thread's output then captures the ranks' too.
            if to_stderr {
                eprintln!("{prefix}{line}");
            } else {
                println!("{prefix}{line}");
            }
            tail.push(line);
            if tail.len() > 5 {
                tail.remove(0);
            }
        }
        tail
    })
}

/// Runs `program args` as `nproc` local ranks and waits for all of them.
/// Ok only if every rank exits 0.
pub fn launch_local(program: &Path, args: &[OsString], opts: &LaunchOptions) -> Result<(), LaunchError> {
    if opts.nproc == 0 {
        return Err(LaunchError::NoRanks);
    }
    let port = match opts.master_port {
        Some(p) => p,
        None => crate::dist::free_port().map_err(LaunchError::Port)?,
    };
    let errors = tempfile::Builder::new().prefix("seerscale-errors").tempdir().map_err(LaunchError::ErrorDir)?;
    let error_file = |rank: usize| errors.path().join(format!("rank{rank}"));
    let mut children: Vec<Option<Child>> = Vec::with_capacity(opts.nproc);
    let mut pipes = Vec::new();
    for rank in 0..opts.nproc {
        let env = RankEnv { rank, world_size: opts.nproc, local_rank: rank, master_addr: "127.0.0.1".into(), master_port: port };
        let mut cmd = Command::new(program);
        cmd.args(args)
            .envs(env.vars())
            .env(ERROR_FILE_VAR, error_file(rank))
            .envs(opts.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        // Rank 0 draws its progress bar on a terminal; anywhere else (a log,
        // a test harness) its stderr is forwarded like the others'.
        cmd.stderr(if rank == 0 && std::io::stderr().is_terminal() { Stdio::inherit() } else { Stdio::piped() });
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(source) => {
                kill_all(&mut children);
                return Err(LaunchError::Spawn { rank, program: program.to_path_buf(), source });
            }
        };
        let prefix = format!("[rank {rank}] ");
        if let Some(out) = child.stdout.take() {
            pipes.push((rank, forward(out, prefix.clone(), false)));
        }
        if let Some(err) = child.stderr.take() {
            pipes.push((rank, forward(err, prefix, true)));
        }
        children.push(Some(child));
    }

    let start = Instant::now();
    let mut first_failure: Option<(usize, String)> = None;
    let mut failed: Vec<Option<String>> = vec![None; opts.nproc];
    let mut failed_at: Option<Instant> = None;
    let mut running = opts.nproc;
    while running > 0 {
        for (rank, slot) in children.iter_mut().enumerate() {
            let Some(child) = slot else { continue };
            if let Ok(Some(status)) = child.try_wait() {
                *slot = None;
                running -= 1;
                if !status.success() {
                    failed[rank] = Some(describe(&status));
                    if first_failure.is_none() {
                        first_failure = Some((rank, describe(&status)));
                        failed_at = Some(Instant::now());
                    }
                }
            }
        }
        if running == 0 {
            break;
        }
        if failed_at.is_some_and(|t| t.elapsed() > opts.grace) {
            kill_all(&mut children);
            break;
        }
        if opts.deadline.is_some_and(|d| start.elapsed() > d) {
            kill_all(&mut children);
            return Err(LaunchError::Deadline(opts.deadline.unwrap_or_default()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // A grandchild may still hold a pipe open: give the forwarders a moment
    // to drain, but never wait on them indefinitely.
    let drain = Instant::now();
    while pipes.iter().any(|(_, h)| !h.is_finished()) && drain.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut tails: Vec<(usize, Vec<String>)> = Vec::new();
    for (rank, h) in pipes {
        if h.is_finished() {
            if let Ok(t) = h.join() {
                tails.push((rank, t));
            }
        }
    }
    // A rank killed by a signal (a crash, the OOM killer) said nothing and
    // is the cause; otherwise the error written first is.
    let killed = (0..opts.nproc).find(|&r| failed[r].as_deref().is_some_and(|s| s.starts_with("killed")) && !error_file(r).exists());
    if let Some((rank, line)) = first_failure.as_ref().filter(|_| killed.is_none()).and_then(|_| earliest_error(&failed, error_file)) {
        let status = failed[rank].clone().unwrap_or_default();
        return Err(LaunchError::RankFailed { rank, status, detail: format!(": {line}") });
    }
    if let Some(rank) = killed {
        first_failure = failed[rank].clone().map(|status| (rank, status));
    }
    match first_failure {
        None => Ok(()),
        Some((rank, status)) => {
            // The failed rank's last error line, if it printed one.
            let detail = tails
                .iter()
                .filter(|(r, _)| *r == rank)
                .flat_map(|(_, t)| t.iter())
                .rev()
                .find(|l| l.to_lowercase().contains("error"))
                .map(|l| format!(": {l}"))
                .unwrap_or_default();
            Err(LaunchError::RankFailed { rank, status, detail })
        }
    }
}

/// The failed rank whose error file was written first, and its error.
fn earliest_error(failed: &[Option<String>], file: impl Fn(usize) -> PathBuf) -> Option<(usize, String)> {
    let written = |rank: usize| {
        let f = file(rank);
        let when = std::fs::metadata(&f).and_then(|m| m.modified()).ok()?;
        let line = std::fs::read_to_string(&f).ok()?.trim().to_string();
        (!line.is_empty()).then_some((when, rank, line))
    };
    (0..failed.len()).filter(|&r| failed[r].is_some()).filter_map(written).min_by_key(|(when, rank, _)| (*when, *rank)).map(|(_, rank, line)| (rank, line))
}

fn kill_all(children: &mut [Option<Child>]) {
    for c in children.iter_mut().flatten() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn reads_torchrun_and_slurm_variables() {
        let e = RankEnv::from_lookup(&env(&[("RANK", "3"), ("WORLD_SIZE", "8"), ("LOCAL_RANK", "1"), ("MASTER_ADDR", "node0"), ("MASTER_PORT", "1234")]))
            .unwrap()
            .unwrap();
        assert_eq!(e, RankEnv { rank: 3, world_size: 8, local_rank: 1, master_addr: "node0".into(), master_port: 1234 });
        let s =
            RankEnv::from_lookup(&env(&[("SLURM_PROCID", "5"), ("SLURM_NTASKS", "16"), ("SLURM_LOCALID", "5"), ("SLURM_NNODES", "2"), ("MASTER_ADDR", "n1")]))
                .unwrap()
                .unwrap();
        assert_eq!((s.rank, s.world_size, s.local_rank, s.master_port), (5, 16, 5, 29500));
        assert!(RankEnv::from_lookup(&env(&[])).unwrap().is_none());
        let err = RankEnv::from_lookup(&env(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "16"), ("SLURM_NNODES", "2")])).unwrap_err();
        assert!(err.to_string().contains("MASTER_ADDR"), "{err}");
        let err = RankEnv::from_lookup(&env(&[("RANK", "x"), ("WORLD_SIZE", "2")])).unwrap_err();
        assert!(err.to_string().contains("RANK"), "{err}");
        let err = RankEnv::from_lookup(&env(&[("RANK", "2"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "a"), ("MASTER_PORT", "1")])).unwrap_err();
        assert!(err.to_string().contains("WORLD_SIZE=2"), "{err}");
    }

    #[test]
    fn launcher_reports_the_failing_rank() {
        // `sh -c` as the "program": rank 1 fails, rank 0 would sleep for a
        // minute; the launcher must kill it after the grace period.
        let args: Vec<OsString> =
            vec!["-c".into(), "if [ \"$RANK\" = 1 ]; then echo 'boom' > \"$SEERSCALE_ERROR_FILE\"; exit 3; else exec sleep 60; fi".into()];
        let opts = LaunchOptions { grace: Duration::from_millis(500), ..LaunchOptions::local(2) };
        let t = Instant::now();
        let err = launch_local(Path::new("/bin/sh"), &args, &opts).unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(20));
        match err {
            LaunchError::RankFailed { rank, status, detail } => {
                assert_eq!(rank, 1);
                assert!(status.contains("exit code 3"), "{status}");
                assert!(detail.contains("boom"), "{detail}");
            }
            e => panic!("unexpected {e}"),
        }
        // Rank 1 fails first but exits last; rank 0's error is a consequence
        // written later: the headline is rank 1's own error.
        let args: Vec<OsString> = vec![
            "-c".into(),
            "if [ \"$RANK\" = 1 ]; then echo 'cause' > \"$SEERSCALE_ERROR_FILE\"; sleep 0.5; exit 3; else sleep 0.2; echo 'peer died' > \"$SEERSCALE_ERROR_FILE\"; exit 1; fi".into(),
        ];
        match launch_local(Path::new("/bin/sh"), &args, &LaunchOptions::local(2)).unwrap_err() {
            LaunchError::RankFailed { rank, status, detail } => {
                assert_eq!((rank, status.as_str(), detail.as_str()), (1, "exit code 3", ": cause"));
            }
            e => panic!("unexpected {e}"),
        }
        // A rank that crashed (a signal, no error of its own) is the cause.
        let args: Vec<OsString> =
            vec!["-c".into(), "if [ \"$RANK\" = 1 ]; then kill -ABRT $$; else echo 'peer died' > \"$SEERSCALE_ERROR_FILE\"; exit 1; fi".into()];
        match launch_local(Path::new("/bin/sh"), &args, &LaunchOptions::local(2)).unwrap_err() {
            LaunchError::RankFailed { rank, status, .. } => assert_eq!((rank, status.as_str()), (1, "killed by signal 6 (SIGABRT)")),
            e => panic!("unexpected {e}"),
        }
        let ok: Vec<OsString> = vec!["-c".into(), "test \"$WORLD_SIZE\" = 2".into()];
        launch_local(Path::new("/bin/sh"), &ok, &LaunchOptions::local(2)).unwrap();
    }
}
