//! Compiles the c10d shim (`csrc/`) against the libtorch that tch uses, and
//! makes the executor's own binaries/tests find it without LD_LIBRARY_PATH.
//!
//! The GPU half (`csrc/cuda.cpp`: ProcessGroupNCCL + CUDA allocator stats) is
//! compiled only when the CUDA runtime and NCCL headers are found (CUDA_HOME,
//! /usr/local/cuda, or the `nvidia/*` wheels next to torch); it sets the cfg
//! `seerscale_cuda`. `SEERSCALE_NO_CUDA=1` turns it off (faster CPU builds).
use std::path::{Path, PathBuf};

fn find_header(dirs: &[PathBuf], name: &str) -> Option<PathBuf> {
    dirs.iter().find(|d| d.join(name).exists()).cloned()
}

fn main() {
    println!("cargo:rustc-check-cfg=cfg(seerscale_cuda)");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    println!("cargo:rerun-if-env-changed=SEERSCALE_NO_CUDA");
    for f in ["csrc/shim.h", "csrc/common.h", "csrc/shim.cpp", "csrc/sync_bn.cpp", "csrc/cuda.cpp"] {
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
        .file("csrc/sync_bn.cpp");

    let cuda = cuda_headers(&libtorch);
    let has_cuda_lib = lib.join("libtorch_cuda.so").exists();
    if let (Some(dirs), true) = (&cuda, has_cuda_lib) {
        for d in dirs {
            build.include(d);
        }
        build.define("SSC_WITH_CUDA", None).define("USE_C10D_NCCL", None).file("csrc/cuda.cpp");
        println!("cargo:rustc-cfg=seerscale_cuda");
    } else {
        println!("cargo:warning=seerscale: CUDA/NCCL headers not found, building the CPU (Gloo) shim only");
    }
    build.compile("seerscale_c10d");

    println!("cargo:rustc-link-search=native={}", lib.display());
    for l in ["torch", "torch_cpu", "c10"] {
        println!("cargo:rustc-link-lib=dylib={l}");
    }
    if has_cuda_lib {
        // The linker would drop these as unused on CPU-only code paths; keep
        // them so CUDA (and NCCL symbols of cuda.cpp) resolve at run time.
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        if cuda.is_some() {
            println!("cargo:rustc-link-arg=-lc10_cuda");
        }
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
}

/// Include directories holding a complete CUDA runtime toolkit and `nccl.h`.
fn cuda_headers(libtorch: &Path) -> Option<Vec<PathBuf>> {
    if std::env::var("SEERSCALE_NO_CUDA").is_ok_and(|v| v == "1") {
        return None;
    }
    if !libtorch.join("include/c10/cuda/CUDAFunctions.h").exists() {
        return None;
    }
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(h) = std::env::var_os("CUDA_HOME") {
        dirs.push(PathBuf::from(h).join("include"));
    }
    dirs.push(PathBuf::from("/usr/local/cuda/include"));
    dirs.push(PathBuf::from("/usr/include"));
    // pip wheels: site-packages/nvidia/{cu13,cuda_runtime,nccl}/include
    if let Some(site) = libtorch.parent() {
        if let Ok(rd) = std::fs::read_dir(site.join("nvidia")) {
            for e in rd.flatten() {
                dirs.push(e.path().join("include"));
            }
        }
    }
    // A usable toolkit, not just the runtime wheel's partial headers (the
    // pip `nvidia/cu13` wheel lacks crt/host_config.h and nv/target).
    let rt = dirs
        .iter()
        .find(|d| ["cuda_runtime_api.h", "crt/host_config.h", "nv/target"].iter().all(|f| d.join(f).exists()))
        .cloned()?;
    let nccl = find_header(&dirs, "nccl.h")?;
    let mut out = vec![rt, nccl];
    out.dedup();
    Some(out)
}
