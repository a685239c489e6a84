//! Empty library target: `agent` has a build-dependency on this crate so
//! cargo rebuilds the agent (and so the embedded BPF object) when it changes.
#![no_std]
