//! Lets the `seerscale` binary (and the root tests and benches) find libtorch
//! at run time without LD_LIBRARY_PATH, and keeps libtorch_cuda linked so CUDA
//! is visible on GPU machines (the linker drops it as "unused" otherwise).
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    let Some(dir) = std::env::var_os("LIBTORCH").map(PathBuf::from) else { return };
    let lib = dir.join("lib");
    let lib = lib.canonicalize().unwrap_or(lib);
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-search=native={}", lib.display());
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
