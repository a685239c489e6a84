//! Token sources: reading, stripping and placing agree with each other.

use http::{HeaderMap, HeaderValue};

use super::*;
use crate::config::TokenSource;

fn sources(list: &[TokenSource]) -> Sources {
    Sources::compile(list)
}

fn header(prefix: &str) -> TokenSource {
    TokenSource::Header {
        header: "authorization".into(),
        prefix: prefix.into(),
    }
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
            HeaderValue::from_str(v).expect("value"),
        );
    }
    h
}

#[test]
fn sources_are_tried_in_order() {
    let s = sources(&[
        header("Bearer"),
        TokenSource::Cookie {
            cookie: "session".into(),
        },
        TokenSource::Query {
            query: "access_token".into(),
        },
    ]);
    let h = headers(&[("cookie", "a=1; session=c.o.k")]);
    let found = s
        .find(&h, Some("access_token=q.u.e"))
        .expect("a token")
        .expect("usable");
    assert_eq!((found.token.as_ref(), found.source), ("c.o.k", 1));
    let none = HeaderMap::new();
    let found = s
        .find(&none, Some("x=1&access_token=q%2Eu.e"))
        .expect("a token")
        .expect("usable");
    assert_eq!((found.token.as_ref(), found.source), ("q.u.e", 2));
    let h = headers(&[("authorization", "bearer h.e.a"), ("cookie", "session=c.o.k")]);
    assert_eq!(s.find(&h, None).expect("a token").expect("usable").token, "h.e.a");
    // Another scheme is not a token; `Bearerx` is another scheme.
    assert!(s.find(&headers(&[("authorization", "Basic dXNlcg==")]), None).is_none());
    assert!(s.find(&headers(&[("authorization", "Bearerx a.b.c")]), None).is_none());
}

#[test]
fn two_tokens_in_one_source_are_refused() {
    let s = sources(&[
        header("Bearer"),
        TokenSource::Cookie { cookie: "s".into() },
        TokenSource::Query { query: "t".into() },
    ]);
    let two = headers(&[("authorization", "Bearer a.b.c"), ("authorization", "Bearer d.e.f")]);
    assert_eq!(s.find(&two, None), Some(Err("several token headers")));
    let two = headers(&[("cookie", "s=a.b.c"), ("cookie", "s=d.e.f")]);
    assert_eq!(s.find(&two, None), Some(Err("several token cookies")));
    assert_eq!(
        s.find(&HeaderMap::new(), Some("t=a&t=b")),
        Some(Err("several token query parameters"))
    );
    assert_eq!(
        s.find(&headers(&[("authorization", "Bearer  ")]), None),
        Some(Err("empty token"))
    );
    let bare = sources(&[TokenSource::Header {
        header: "x-token".into(),
        prefix: String::new(),
    }]);
    let two = headers(&[("x-token", "a.b.c"), ("x-token", "other")]);
    assert_eq!(bare.find(&two, None), Some(Err("several token headers")));
}

#[test]
fn strip_removes_every_token_and_nothing_else() {
    let s = sources(&[
        header("Bearer"),
        TokenSource::Cookie { cookie: "s".into() },
        TokenSource::Query { query: "t".into() },
    ]);
    let mut h = headers(&[
        ("authorization", "Bearer a.b.c"),
        ("authorization", "Basic dXNlcg=="),
        ("cookie", "x=1; s=d.e.f; y=2"),
    ]);
    let q = s.strip(&mut h, Some("a=1&t=g.h.i&b=%20"), None);
    assert_eq!(q.as_deref(), Some("a=1&b=%20"), "other parameters byte for byte");
    let auth: Vec<&HeaderValue> = h.get_all("authorization").iter().collect();
    assert_eq!(auth, ["Basic dXNlcg=="]);
    assert_eq!(h.get("cookie").expect("cookie"), "x=1; y=2");
    assert!(s.find(&h, q.as_deref()).is_none());
    // Only a token: the query goes away entirely.
    assert_eq!(s.strip(&mut HeaderMap::new(), Some("t=x"), None), None);
    // The verified source is kept when the policy forwards the token.
    let mut h = headers(&[("authorization", "Bearer a.b.c"), ("cookie", "s=d.e.f")]);
    s.strip(&mut h, None, Some(0));
    assert_eq!(h.get("authorization").expect("kept"), "Bearer a.b.c");
    assert!(h.get("cookie").is_none());
}

#[test]
fn place_writes_what_find_reads() {
    for list in [
        vec![header("Bearer")],
        vec![TokenSource::Header {
            header: "x-token".into(),
            prefix: String::new(),
        }],
        vec![TokenSource::Cookie { cookie: "s".into() }],
        vec![TokenSource::Query { query: "t".into() }],
    ] {
        let s = sources(&list);
        let mut h = HeaderMap::new();
        let q = s.place(&mut h, Some("a=1"), "x.y.z").expect("placed");
        let found = s.find(&h, q.as_deref()).expect("found").expect("usable");
        assert_eq!((found.token.as_ref(), found.source), ("x.y.z", 0), "{list:?}");
    }
}
