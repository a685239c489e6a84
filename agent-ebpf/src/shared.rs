//! Helpers both BPF objects (`nodeward-sklookup`, `nodeward-egress`) use:
//! address words, the panic handler and the licence section. Included by
//! each bin root as `mod shared;`.

// Not `expect`: each bin uses a different subset, so the lint fires in one
// and not the other.
#![allow(dead_code, reason = "each BPF bin uses a subset of these helpers")]

/// 127.0.0.0/8 (as v4-mapped) or ::1.
pub fn is_loopback(addr: [u32; 4]) -> bool {
    match addr {
        [0, 0, mapped, v4] if mapped == u32::to_be(0xffff) => v4.to_ne_bytes()[0] == 127,
        [0, 0, 0, last] => last == u32::to_be(1),
        _ => false,
    }
}

/// `::ffff:a.b.c.d`.
pub fn is_v4_mapped(addr: [u32; 4]) -> bool {
    addr[0] == 0 && addr[1] == 0 && addr[2] == u32::to_be(0xffff)
}

/// An IPv4 address word (network order) as v4-mapped words.
pub const fn v4_mapped(ip4: u32) -> [u32; 4] {
    [0, 0, u32::to_be(0xffff), ip4]
}

/// The words' bytes in memory order, i.e. the address in network order.
pub const fn bytes(w: [u32; 4]) -> [u8; 16] {
    let [a, b, c, d] = [
        w[0].to_ne_bytes(),
        w[1].to_ne_bytes(),
        w[2].to_ne_bytes(),
        w[3].to_ne_bytes(),
    ];
    [
        a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0], d[1], d[2], d[3],
    ]
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a verified program: the verifier rejects code that could
    // get here (and a loop would not pass it), so tell the compiler so.
    #[expect(unsafe_code, reason = "panic handler of a no_std program")]
    // SAFETY: no panicking path survives optimisation in these programs; if
    // one did, the verifier would reject the program at load time.
    unsafe {
        core::hint::unreachable_unchecked()
    }
}

/// The kernel refuses some helpers to programs without a GPL-compatible
/// licence; these programs use none of them.
#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
#[expect(unsafe_code, reason = "the kernel reads the licence from this section")]
static LICENSE: [u8; 11] = *b"Apache-2.0\0";
