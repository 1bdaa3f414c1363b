//! Compiles the c10d shim (`csrc/`) against the libtorch that tch uses, and
//! makes the executor's own binaries/tests find it without LD_LIBRARY_PATH.
//!
//! The GPU half (`csrc/cuda.cpp`: ProcessGroupNCCL + CUDA allocator stats) is
//! compiled only when libtorch has CUDA and a complete set of CUDA runtime and
//! NCCL headers is found (see [`cuda_headers`]); it sets the cfg
//! `seerscale_cuda`. `SEERSCALE_NO_CUDA=1` turns it off (faster CPU builds).
//! Either way the crate gets `SEERSCALE_CUDA_SHIM` (`env!`): `on`, or `off-…:
//! why`, so a test can tell "no headers" from "turned off".
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rustc-check-cfg=cfg(seerscale_cuda)");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    println!("cargo:rerun-if-env-changed=SEERSCALE_NO_CUDA");
    println!("cargo:rerun-if-env-changed=SEERSCALE_CUDA_HEADERS");
    for f in ["csrc/shim.h", "csrc/common.h", "csrc/shim.cpp", "csrc/sync_bn.cpp", "csrc/op_count.cpp", "csrc/cuda.cpp"] {
        println!("cargo:rerun-if-changed={f}");
    }
    let Some(libtorch) = std::env::var_os("LIBTORCH").map(PathBuf::from) else {
        panic!("LIBTORCH is not set: run scripts/setup (it makes .libtorch) and build from the workspace");
    };
    let libtorch = libtorch.canonicalize().unwrap_or(libtorch);
    let include = libtorch.join("include");
    let lib = libtorch.join("lib");

    let mut build = cc::Build::new();
    build
        .cpp(true)
        .flag("-std=c++17")
        .define("USE_C10D_GLOO", None)
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag_if_supported("-Wno-unused-parameter")
        .flag_if_supported("-Wno-deprecated-declarations")
        .warnings(false)
        .file("csrc/shim.cpp")
        .file("csrc/sync_bn.cpp")
        .file("csrc/op_count.cpp");

    // The missing toolkit pieces that `scripts/setup` fetches (.cargo/config.toml
    // points SEERSCALE_CUDA_HEADERS at `.cuda-headers`). Watched only once it
    // exists: a missing watched path would rerun this script on every build.
    let fetched = std::env::var_os("SEERSCALE_CUDA_HEADERS").map(|d| PathBuf::from(d).join("include"));
    if let Some(d) = fetched.as_ref().filter(|d| d.is_dir()) {
        println!("cargo:rerun-if-changed={}", d.display());
    }

    let has_cuda_lib = lib.join("libtorch_cuda.so").exists();
    let cuda = if std::env::var("SEERSCALE_NO_CUDA").is_ok_and(|v| v == "1") {
        Err("off-disabled: SEERSCALE_NO_CUDA=1".to_string())
    } else if !has_cuda_lib || !include.join("c10/cuda/CUDAFunctions.h").exists() {
        Err(format!("off-cpu-libtorch: {} has no libtorch_cuda", libtorch.display()))
    } else {
        cuda_headers(&libtorch, fetched.as_deref())
    };
    match &cuda {
        Ok(dirs) => {
            for d in dirs {
                build.include(d);
            }
            build
                .define("SSC_WITH_CUDA", None)
                .define("USE_C10D_NCCL", None)
                // c10/cuda/CUDAEvent.h aligns to std::hardware_destructive_interference_size;
                // GCC warns that it may vary with -mtune. On x86-64 it is 64 bytes,
                // as in the GCC-built libtorch, and no such type crosses our calls.
                .flag_if_supported("-Wno-interference-size")
                .file("csrc/cuda.cpp");
            println!("cargo:rustc-cfg=seerscale_cuda");
            println!("cargo:rustc-env=SEERSCALE_CUDA_SHIM=on");
        }
        Err(why) => {
            if !why.starts_with("off-disabled") {
                println!("cargo:warning=seerscale: building the CPU (Gloo) shim only: {why}");
            }
            println!("cargo:rustc-env=SEERSCALE_CUDA_SHIM={why}");
        }
    }
    build.compile("seerscale_c10d");

    println!("cargo:rustc-link-search=native={}", lib.display());
    for l in ["torch", "torch_cpu", "c10"] {
        println!("cargo:rustc-link-lib=dylib={l}");
    }
    if cuda.is_ok() {
        // cuda.cpp calls into these. As link-lib (not link-arg) they also reach
        // every binary that links the executor (the root `seerscale`), after
        // the shim's static library so its references resolve.
        println!("cargo:rustc-link-lib=dylib=torch_cuda");
        println!("cargo:rustc-link-lib=dylib=c10_cuda");
    }
    if has_cuda_lib {
        // With --as-needed the linker drops libtorch_cuda from binaries whose
        // code never names it (CPU builds of the shim); keep it, so libtorch's
        // CUDA backend registers and CUDA is visible on GPU machines.
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
}

/// Include directories for cuda.cpp: CUDA runtime API, `crt/host_config.h`
/// and `nv/target` (which cuda_runtime.h / cuda_fp16.h include), and
/// `nccl.h`; or why they are not all there.
///
/// The CUDA headers are looked for, as one set, in (first complete set wins):
/// 1. the `nvidia/*` wheels next to a pip torch, completed by `fetched`
///    (`.cuda-headers/include`: scripts/setup downloads the pieces those
///    wheels lack, at the versions torch's `cuda-toolkit` pins). First
///    because libtorch_cuda loads exactly these libraries (its RPATH), so
///    their headers match what runs;
/// 2. `$CUDA_HOME/include`, 3. `/usr/local/cuda/include` (CUDA 13 keeps
///    `nv/` under `include/cccl`, so that is searched too).
///
/// `nccl.h` likewise prefers the wheel's: ProcessGroupNCCL::Options, which
/// cuda.cpp allocates, embeds `ncclConfig_t`, whose layout must be that of
/// the NCCL libtorch_cuda was built against and loads.
fn cuda_headers(libtorch: &Path, fetched: Option<&Path>) -> Result<Vec<PathBuf>, String> {
    let with_cccl = |d: PathBuf| [d.clone(), d.join("cccl")];
    let mut wheels: Vec<PathBuf> = Vec::new();
    if let Some(site) = libtorch.parent() {
        if let Ok(rd) = std::fs::read_dir(site.join("nvidia")) {
            wheels = rd.flatten().map(|e| e.path().join("include")).filter(|d| d.is_dir()).collect();
            wheels.sort();
        }
    }
    let mut sets: Vec<Vec<PathBuf>> = Vec::new();
    sets.push(wheels.iter().cloned().chain(fetched.map(Path::to_path_buf)).collect());
    if let Some(h) = std::env::var_os("CUDA_HOME") {
        sets.push(with_cccl(PathBuf::from(h).join("include")).to_vec());
    }
    sets.push(with_cccl(PathBuf::from("/usr/local/cuda/include")).to_vec());

    const NEEDED: [&str; 3] = ["cuda_runtime_api.h", "crt/host_config.h", "nv/target"];
    let find = |dirs: &[PathBuf], f: &str| dirs.iter().find(|d| d.join(f).exists()).cloned();
    let mut missing = Vec::new();
    let mut cuda = None;
    for set in &sets {
        let found: Vec<Option<PathBuf>> = NEEDED.iter().map(|f| find(set, f)).collect();
        if found.iter().all(Option::is_some) {
            cuda = Some((found.into_iter().flatten().collect::<Vec<_>>(), set));
            break;
        }
        let lacks: Vec<&str> = NEEDED.iter().zip(&found).filter(|(_, d)| d.is_none()).map(|(f, _)| *f).collect();
        missing.push(format!("{} lacks {}", describe(set), lacks.join(", ")));
    }
    let Some((mut dirs, set)) = cuda else {
        return Err(format!("off-no-headers: no complete CUDA toolkit headers ({}); run scripts/setup", missing.join("; ")));
    };
    let nccl_dirs: Vec<PathBuf> = wheels.iter().chain(set).cloned().chain([PathBuf::from("/usr/include")]).collect();
    let Some(nccl) = find(&nccl_dirs, "nccl.h") else {
        return Err(format!("off-no-headers: nccl.h not found in {}", describe(&nccl_dirs)));
    };
    // /usr/include is already a system directory (GCC ignores it as -I).
    if nccl != Path::new("/usr/include") {
        dirs.push(nccl);
    }
    let mut seen = std::collections::HashSet::new();
    dirs.retain(|d| seen.insert(d.clone()));
    Ok(dirs)
}

fn describe(dirs: &[PathBuf]) -> String {
    let v: Vec<String> = dirs.iter().filter(|d| d.is_dir()).map(|d| d.display().to_string()).collect();
    if v.is_empty() {
        format!("{} (none exist)", dirs.first().map_or(String::new(), |d| d.display().to_string()))
    } else {
        v.join(", ")
    }
}
