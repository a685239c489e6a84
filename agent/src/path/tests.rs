//! The normalisation, case by case: each spelling an attacker or a client
//! library might send, what nodeward forwards and what rules see, and the
//! options that change the refusals.

use super::*;

fn norm(raw: &str) -> Result<(String, String), PathError> {
    normalize(raw, &PathOptions::default()).map(|n| (n.forward, n.matched))
}

fn with(o: PathOptions, raw: &str) -> Result<(String, String), PathError> {
    normalize(raw, &o).map(|n| (n.forward, n.matched))
}

fn ok(raw: &str, forward: &str, matched: &str) {
    assert_eq!(
        norm(raw),
        Ok((forward.to_string(), matched.to_string())),
        "normalising {raw:?}"
    );
}

#[test]
fn spellings_of_one_path_become_one_path() {
    #[rustfmt::skip]
    let cases = [
        ("/", "/", "/"),
        ("/admin/x", "/admin/x", "/admin/x"),
        ("//admin/x", "/admin/x", "/admin/x"),
        ("/admin//x", "/admin/x", "/admin/x"),
        ("/./admin/x", "/admin/x", "/admin/x"),
        ("/x/../admin/x", "/admin/x", "/admin/x"),
        ("/public/../admin/secret.txt", "/admin/secret.txt", "/admin/secret.txt"),
        ("/public/%2e%2e/admin/x", "/admin/x", "/admin/x"),
        ("/public/%2E%2E/admin/x", "/admin/x", "/admin/x"),
        ("/public/.%2e/admin/x", "/admin/x", "/admin/x"),
        ("/%61dmin/x", "/admin/x", "/admin/x"),
        ("/%7Euser", "/~user", "/~user"),
        ("/../../admin", "/admin", "/admin"),
        ("/admin/.", "/admin/", "/admin"),
        ("/admin/..", "/", "/"),
        ("/admin/", "/admin/", "/admin"),
        ("/a/b/../../..", "/", "/"),
        ("/a%20b/c", "/a%20b/c", "/a b/c"),
    ];
    for (raw, forward, matched) in cases {
        ok(raw, forward, matched);
    }
    // Escapes that stay are written upper-case: one spelling.
    ok("/a%3fb", "/a%3Fb", "/a?b");
    ok("/caf%C3%A9", "/caf%C3%A9", "/café");
    ok("/%25", "/%25", "/%");
    ok("/%252e%252e/admin", "/%252e%252e/admin", "/%2e%2e/admin");
}

#[test]
fn ambiguous_spellings_are_refused_by_default() {
    #[rustfmt::skip]
    let cases = [
        ("/admin%2Fx", PathError::EscapedSlash),
        ("/admin%2fx", PathError::EscapedSlash),
        ("/public/..%2Fadmin/x", PathError::EscapedSlash),
        ("/admin%5Cx", PathError::EscapedSlash),
        ("/admin\\x", PathError::Backslash),
        ("/admin;jsessionid=1/x", PathError::Parameter),
        ("/admin%3Bx/y", PathError::Parameter),
        ("/a%00b", PathError::EncodedNul),
        ("/a%zz", PathError::BadEscape(2)),
        ("/a%4", PathError::BadEscape(2)),
        ("/a%", PathError::BadEscape(2)),
        ("*", PathError::NotAPath),
        ("admin", PathError::NotAPath),
        ("", PathError::NotAPath),
        ("/caf%FF", PathError::NotUtf8),
    ];
    for (raw, want) in cases {
        assert_eq!(norm(raw), Err(want.clone()), "{raw:?}");
    }
}

#[test]
fn options_keep_or_unescape_what_the_upstream_reads_as_data() {
    let o = PathOptions {
        escaped_slashes: EscapedSlashes::Keep,
        ..PathOptions::default()
    };
    assert_eq!(
        with(o, "/files/a%2fb"),
        Ok(("/files/a%2Fb".into(), "/files/a%2Fb".into()))
    );
    let o = PathOptions {
        escaped_slashes: EscapedSlashes::Unescape,
        ..PathOptions::default()
    };
    assert_eq!(with(o, "/admin%2Fx"), Ok(("/admin/x".into(), "/admin/x".into())));
    assert_eq!(with(o, "/public/..%2Fadmin"), Ok(("/admin".into(), "/admin".into())));
    // An unescaped `%5C` is a backslash, still refused unless backslashes are allowed too.
    assert_eq!(with(o, "/a%5Cb"), Err(PathError::Backslash));
    let o = PathOptions {
        escaped_slashes: EscapedSlashes::Unescape,
        backslashes: Backslashes::AsSlash,
        ..PathOptions::default()
    };
    assert_eq!(with(o, "/public\\..\\admin"), Ok(("/admin".into(), "/admin".into())));
    assert_eq!(with(o, "/a%5Cb"), Ok(("/a/b".into(), "/a/b".into())));
    let o = PathOptions {
        backslashes: Backslashes::Keep,
        ..PathOptions::default()
    };
    assert_eq!(with(o, "/a\\b"), Ok(("/a\\b".into(), "/a\\b".into())));
    let o = PathOptions {
        parameters: Parameters::Keep,
        ..PathOptions::default()
    };
    assert_eq!(with(o, "/a;v=1/b"), Ok(("/a;v=1/b".into(), "/a;v=1/b".into())));
    assert_eq!(with(o, "/a%3bv/b"), Ok(("/a%3Bv/b".into(), "/a;v/b".into())));
    // `..;` is `..` to Tomcat: never a plain segment.
    assert_eq!(with(o, "/x/..;/admin"), Err(PathError::DotSegmentWithParameter));
    assert_eq!(with(o, "/x/.;a/admin"), Err(PathError::DotSegmentWithParameter));
    let o = PathOptions {
        encoded_nul: EncodedNul::Keep,
        ..PathOptions::default()
    };
    assert_eq!(with(o, "/a%00b"), Ok(("/a%00b".into(), "/a%00b".into())));
}

#[test]
fn normalisation_is_idempotent() {
    let all = [
        PathOptions::default(),
        PathOptions {
            escaped_slashes: EscapedSlashes::Unescape,
            backslashes: Backslashes::AsSlash,
            ..PathOptions::default()
        },
        PathOptions {
            escaped_slashes: EscapedSlashes::Keep,
            backslashes: Backslashes::Keep,
            parameters: Parameters::Keep,
            encoded_nul: EncodedNul::Keep,
            case_insensitive: false,
        },
    ];
    let samples = [
        "/",
        "//a//b/",
        "/a/./b/../c",
        "/%2e%2E/x",
        "/a%20b",
        "/caf%c3%a9/",
        "/%25%32%66",
        "/a%2Fb",
        "/a\\b/..",
        "/a;b=c/d",
        "/x/%7e",
        "/a/b/%2e",
        "/.../x",
        "/..../",
    ];
    for o in all {
        for raw in samples {
            let Ok(once) = normalize(raw, &o) else { continue };
            let twice = normalize(&once.forward, &o).expect("a normalised path normalises");
            assert_eq!(twice, once, "{raw:?} with {o:?}");
        }
    }
}

#[test]
fn glob_patterns_are_read_like_paths() {
    assert_eq!(glob_pattern("/admin/**"), Ok("/admin/**".into()));
    assert_eq!(glob_pattern("/admin/"), Ok("/admin".into()));
    assert_eq!(glob_pattern("/"), Ok("/".into()));
    assert_eq!(glob_pattern("/a%20b/*"), Ok("/a b/*".into()));
    for bad in ["/a//b", "/a/../b", "/./a", "/a%2Fb", "/a%zz"] {
        assert!(glob_pattern(bad).is_err(), "{bad:?}");
    }
}
