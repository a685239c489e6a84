//! Builds the BPF objects (`agent-ebpf`, bins `nodeward-sklookup` and
//! `nodeward-egress`) for the BPF target with the nightly toolchain and
//! bpf-linker (see scripts/bpf-toolchain.sh), leaving them in OUT_DIR for
//! `src/ebpf.rs` and `src/ebpf/egress.rs` to embed. `AYA_BUILD_SKIP=1` skips
//! it (the embedded objects are then empty and loading fails loudly).

use std::path::Path;

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let root = Path::new(&manifest_dir)
        .parent()
        .context("agent/ has a parent")?
        .join("agent-ebpf");
    let root = root.to_str().context("the workspace path is UTF-8")?;
    let skip = std::env::var_os("AYA_BUILD_SKIP").is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        // Keep include_bytes! compiling; Steering::load_or_adopt reports the
        // empty object.
        let out = std::env::var("OUT_DIR").context("OUT_DIR")?;
        for object in ["nodeward-sklookup", "nodeward-egress"] {
            std::fs::write(Path::new(&out).join(object), []).context("writing an empty object")?;
        }
    }
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "nodeward-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context("building the BPF program (needs nightly with rust-src and bpf-linker: scripts/bpf-toolchain.sh)")
}
