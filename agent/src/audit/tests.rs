use std::collections::HashSet;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::format::{decimal, socket_addr};
use super::*;

fn fields() -> Fields<'static> {
    Fields {
        request_id: "0a1b2c3d-000000000001",
        trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736"),
        workload: "orders",
        method: "GET",
        path: "/orders",
        decision: "allow",
        reason: "rule_matched",
        detail: Some("claim groups lacks admins"),
        rule: Some("admin"),
        iss: Some("https://idp.example"),
        sub: Some("alice"),
        email: Some("alice@example.com"),
        client_id: Some("mcp-agent"),
        act: Some("agent-b>agent-a".into()),
        k8s_user: Some("oidc:alice@example.com"),
        k8s_groups: Some("oidc:admins,system:authenticated".into()),
        client: "127.0.0.1:40000".parse().expect("addr"),
        latency_us: 1234,
    }
}

fn line(f: &Fields<'_>) -> (String, Value) {
    let mut out = b"previous line\n".to_vec();
    format_line(&mut out, f, UNIX_EPOCH + Duration::from_micros(1_780_000_000_123_456));
    let text = String::from_utf8(out).expect("utf8");
    let text = text.strip_prefix("previous line\n").expect("appended").to_string();
    assert!(text.ends_with('\n'), "one line, newline-terminated: {text}");
    assert_eq!(text.matches('\n').count(), 1, "exactly one line: {text}");
    let v = serde_json::from_str(&text).expect("a JSON object");
    (text, v)
}

#[test]
fn every_field_is_written_with_its_type() {
    let (_, v) = line(&fields());
    assert_eq!(
        v,
        json!({
            "timestamp": "2026-05-28T20:26:40.123456Z",
            "level": "INFO",
            "target": "audit",
            "request_id": "0a1b2c3d-000000000001",
            "workload": "orders",
            "method": "GET",
            "path": "/orders",
            "decision": "allow",
            "reason": "rule_matched",
            "detail": "claim groups lacks admins",
            "rule": "admin",
            "iss": "https://idp.example",
            "sub": "alice",
            "email": "alice@example.com",
            "client_id": "mcp-agent",
            "act": "agent-b>agent-a",
            "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
            "k8s_user": "oidc:alice@example.com",
            "k8s_groups": "oidc:admins,system:authenticated",
            "client": "127.0.0.1:40000",
            "latency_us": 1234,
        })
    );
}

#[test]
fn absent_optional_fields_are_left_out() {
    let f = Fields {
        trace_id: None,
        detail: None,
        rule: None,
        iss: None,
        sub: None,
        email: None,
        client_id: None,
        act: None,
        k8s_user: None,
        k8s_groups: None,
        client: "[::1]:8080".parse().expect("addr"),
        latency_us: u64::MAX,
        ..fields()
    };
    let (_, v) = line(&f);
    let obj = v.as_object().expect("object");
    for absent in [
        "trace_id",
        "detail",
        "rule",
        "iss",
        "sub",
        "email",
        "client_id",
        "act",
        "k8s_user",
        "k8s_groups",
    ] {
        assert!(!obj.contains_key(absent), "{absent} is left out: {v}");
    }
    assert_eq!(v["client"], "[::1]:8080");
    assert_eq!(v["latency_us"], u64::MAX);
    assert_eq!(obj.len(), 11);
}

#[test]
fn hostile_values_are_escaped_and_round_trip() {
    let control: String = (0u8..0x20).map(char::from).collect();
    let long_path = format!("/{}", "a\"b\\c/".repeat(20_000));
    let hostile = [
        "\"},\"decision\":\"allow\",\"x\":{\"",
        "back\\slash\\",
        control.as_str(),
        "line\nbreak\r\n{\"target\":\"audit\"}",
        "\u{7f}\u{2028}\u{2029}\u{feff}é漢🦀",
        "",
        long_path.as_str(),
    ];
    for h in hostile {
        let f = Fields {
            request_id: h,
            workload: h,
            method: h,
            path: h,
            decision: h,
            reason: h,
            detail: Some(h),
            rule: Some(h),
            iss: Some(h),
            sub: Some(h),
            email: Some(h),
            client_id: Some(h),
            act: Some(h.to_string()),
            ..fields()
        };
        let (text, v) = line(&f);
        for name in [
            "request_id",
            "workload",
            "method",
            "path",
            "decision",
            "reason",
            "detail",
            "rule",
            "iss",
            "sub",
            "email",
            "client_id",
            "act",
        ] {
            assert_eq!(v[name], h, "{name} round-trips");
        }
        assert_eq!(v["target"], "audit", "no value can override the target");
        assert!(
            !text[..text.len() - 1].bytes().any(|b| b < 0x20),
            "no raw control character in the line"
        );
    }
}

/// An output that records each write and can be slowed down.
#[derive(Clone, Default)]
struct Out {
    writes: Arc<Mutex<Vec<Vec<u8>>>>,
    delay: Duration,
}

impl Write for Out {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        std::thread::sleep(self.delay);
        self.writes.lock().expect("writes").push(buf.to_vec());
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Out {
    fn all(&self) -> (Vec<u8>, Vec<usize>) {
        let writes = self.writes.lock().expect("writes");
        (writes.concat(), writes.iter().map(Vec::len).collect())
    }
}

fn numbered(t: usize, i: usize, pad: usize) -> Vec<u8> {
    format!("{{\"t\":{t},\"i\":{i},\"pad\":\"{}\"}}\n", "x".repeat(pad)).into_bytes()
}

/// Every line arrives once, whole and in each producer's order.
fn check_lines(all: &[u8], threads: usize, per_thread: usize) {
    let text = std::str::from_utf8(all).expect("utf8");
    let mut next = vec![0u64; threads];
    let mut seen = HashSet::new();
    for l in text.lines() {
        let v: Value = serde_json::from_str(l).expect("every line is whole JSON");
        let (t, i) = (v["t"].as_u64().expect("t"), v["i"].as_u64().expect("i"));
        let t = usize::try_from(t).expect("t");
        assert_eq!(i, next[t], "producer {t}'s lines stay in order");
        next[t] += 1;
        assert!(seen.insert((t, i)), "no line twice");
    }
    assert_eq!(seen.len(), threads * per_thread, "no line lost");
}

#[test]
fn batches_lines_from_many_threads_without_loss_or_interleaving() {
    let out = Out::default();
    let limits = Limits {
        batch: 4096,
        cap: 64 * 1024,
        tick: Duration::from_millis(2),
    };
    let sink = Arc::new(Sink::new(Box::new(out.clone()), limits));
    let guard = Guard::start(sink.clone()).expect("writer thread");
    let (threads, per_thread) = (4, 2000);
    std::thread::scope(|s| {
        for t in 0..threads {
            let sink = &sink;
            s.spawn(move || {
                for i in 0..per_thread {
                    sink.push(&numbered(t, i, i % 300));
                }
            });
        }
    });
    drop(guard);
    let (all, writes) = out.all();
    check_lines(&all, threads, per_thread);
    assert!(
        writes.len() < threads * per_thread / 4,
        "lines are written in batches: {} writes for {} lines",
        writes.len(),
        threads * per_thread
    );
}

#[test]
fn a_slow_output_holds_producers_back_at_the_cap_and_loses_nothing() {
    let out = Out {
        delay: Duration::from_millis(20),
        ..Out::default()
    };
    let limits = Limits {
        batch: 256,
        cap: 1024,
        tick: Duration::from_millis(1),
    };
    let sink = Arc::new(Sink::new(Box::new(out.clone()), limits));
    let guard = Guard::start(sink.clone()).expect("writer thread");
    let (threads, per_thread) = (3, 60);
    std::thread::scope(|s| {
        for t in 0..threads {
            let sink = &sink;
            s.spawn(move || {
                for i in 0..per_thread {
                    sink.push(&numbered(t, i, 40));
                }
            });
        }
    });
    drop(guard);
    let (all, writes) = out.all();
    check_lines(&all, threads, per_thread);
    let longest = numbered(9, 99, 40).len();
    assert!(
        writes.iter().all(|&w| w <= limits.cap + longest),
        "no batch grew past the cap: {writes:?}"
    );
    // ~11 KB through a 1 KiB cap at one 20 ms write per batch: producers waited.
    let stats = sink.stats();
    assert!(stats.waits > 0, "the waits are counted: {stats:?}");
    assert!(
        stats.waits <= (threads * per_thread) as u64,
        "at most one wait per line pushed: {stats:?}"
    );
    assert_eq!(stats.buffered, 0, "everything was written on shutdown");
}

#[test]
fn a_fast_output_never_makes_a_producer_wait() {
    let out = Out::default();
    let sink = Arc::new(Sink::new(Box::new(out.clone()), Limits::default()));
    let guard = Guard::start(sink.clone()).expect("writer thread");
    for i in 0..1000 {
        sink.push(&numbered(0, i, 40));
    }
    drop(guard);
    assert_eq!(sink.stats().waits, 0, "4 MiB of room for 60 KB of lines");
}

#[test]
fn metrics_follow_the_sink_without_counting_a_wait_twice() {
    let registry = Registry::new();
    let m = AuditMetrics::register(&registry).expect("register");
    m.observe_stats(Stats {
        buffered: 4096,
        waits: 3,
    });
    m.observe_stats(Stats { buffered: 0, waits: 3 });
    m.observe_stats(Stats { buffered: 10, waits: 5 });
    let text = {
        let mut out = Vec::new();
        prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &registry.gather(), &mut out).expect("encode");
        String::from_utf8(out).expect("utf8")
    };
    assert!(text.contains("nodeward_audit_buffered_bytes 10\n"), "{text}");
    assert!(text.contains("nodeward_audit_backpressure_waits_total 5\n"), "{text}");
    assert!(
        text.contains("# TYPE nodeward_audit_backpressure_waits_total counter"),
        "{text}"
    );
}

#[test]
fn lines_are_flushed_on_shutdown_and_written_directly_afterwards() {
    let out = Out::default();
    // A tick far longer than the test: only shutdown can write the line.
    let limits = Limits {
        batch: 1 << 20,
        cap: 1 << 22,
        tick: Duration::from_secs(3600),
    };
    let sink = Arc::new(Sink::new(Box::new(out.clone()), limits));
    let guard = Guard::start(sink.clone()).expect("writer thread");
    sink.push(&numbered(0, 0, 1));
    drop(guard);
    assert_eq!(out.all().0, numbered(0, 0, 1), "flushed when the guard drops");
    sink.push(&numbered(0, 1, 1));
    check_lines(&out.all().0, 1, 2);
}

#[test]
fn a_quiet_writer_is_woken_by_the_first_line() {
    let out = Out::default();
    let limits = Limits {
        batch: 1 << 20,
        cap: 1 << 22,
        tick: Duration::from_millis(1),
    };
    let sink = Arc::new(Sink::new(Box::new(out.clone()), limits));
    let _guard = Guard::start(sink.clone()).expect("writer thread");
    // Let the writer park, then send one line: it must show up without a full batch or shutdown.
    std::thread::sleep(Duration::from_millis(20));
    sink.push(&numbered(0, 0, 1));
    let mut written = false;
    for _ in 0..500 {
        if !out.all().0.is_empty() {
            written = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(written, "the parked writer wrote the line within 5 s");
}

#[test]
fn the_timestamp_has_microseconds_in_utc() {
    let now = SystemTime::now();
    let (_, v) = line(&Fields { ..fields() });
    let ts = v["timestamp"].as_str().expect("string");
    assert!(
        ts.ends_with('Z') && ts.len() == "2026-05-28T20:26:40.123456Z".len(),
        "{ts}"
    );
    let mut out = Vec::new();
    format_line(&mut out, &fields(), now);
    let v: Value = serde_json::from_slice(&out).expect("json");
    let parsed = humantime::parse_rfc3339(v["timestamp"].as_str().expect("string")).expect("RFC 3339");
    assert!(now.duration_since(parsed).expect("not later") < Duration::from_micros(1));
}

#[test]
fn cached_seconds_never_stamp_a_line_with_the_wrong_second() {
    // Forwards, backwards (a clock step) and within one second, on one thread.
    let base = UNIX_EPOCH + Duration::from_secs(1_780_000_000);
    for t in [
        base + Duration::from_micros(999_999),
        base + Duration::from_micros(1_000_001),
        base + Duration::from_micros(1_000_002),
        base - Duration::from_micros(1),
        base + Duration::from_secs(86_400 * 366),
    ] {
        let (_, v) = line_at(&fields(), t);
        assert_eq!(v["timestamp"], humantime::format_rfc3339_micros(t).to_string());
    }
}

fn line_at(f: &Fields<'_>, now: SystemTime) -> (String, Value) {
    let mut out = Vec::new();
    format_line(&mut out, f, now);
    let text = String::from_utf8(out).expect("utf8");
    let v = serde_json::from_str(&text).expect("a JSON object");
    (text, v)
}

#[test]
fn addresses_and_numbers_are_written_as_display_writes_them() {
    for addr in [
        "0.0.0.0:0",
        "1.2.3.4:5",
        "10.0.0.1:80",
        "127.0.0.1:40000",
        "255.255.255.255:65535",
        "[::1]:8080",
        "[fe80::1%2]:443",
        "[::ffff:10.0.0.1]:1",
    ] {
        let addr: SocketAddr = addr.parse().expect("addr");
        let mut out = Vec::new();
        socket_addr(&mut out, addr);
        assert_eq!(String::from_utf8(out).expect("utf8"), addr.to_string());
    }
    for n in [0, 1, 9, 10, 99, 100, 1234, u64::from(u32::MAX), u64::MAX] {
        let mut out = Vec::new();
        decimal(&mut out, n);
        assert_eq!(String::from_utf8(out).expect("utf8"), n.to_string());
    }
}

#[test]
fn the_escape_check_finds_every_byte_json_escapes_at_every_position() {
    let naive = |b: &[u8]| b.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\');
    for len in 0..20 {
        for at in 0..len {
            for byte in 0..=255u8 {
                // Neighbours that could mislead a word-at-a-time check:
                // high bytes (UTF-8) and the bytes just above the limits.
                for fill in [b'a', 0x20, b'#', b']', 0x80, 0xff] {
                    let mut v = vec![fill; len];
                    v[at] = byte;
                    assert_eq!(format::needs_escape(&v), naive(&v), "{v:?}");
                }
            }
        }
    }
}
