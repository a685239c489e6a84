//! Rebuild the object when the BPF linker changes (a new LLVM can change the
//! generated code); aya-build does the actual build from agent/build.rs.
use which::which;

fn main() {
    match which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(err) => println!("cargo:warning=bpf-linker not found on PATH ({err}); run scripts/bpf-toolchain.sh"),
    }
}
