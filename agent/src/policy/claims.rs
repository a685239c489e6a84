//! Checking claim conditions (equals, any_of, all_of, present) over string
//! or array claims found by a claim path (`config::ClaimPath`).
//! Space-separated `scope`/`scp` strings count as lists (RFC 8693 §4.2).
//! Every failure explains itself in one line.

use serde_json::{Map, Value};

use crate::config::{ClaimCondition, ClaimPath};

/// The claim's values as a list: arrays as they are, a scope string split on
/// spaces, any other scalar as a one-element list.
enum Values<'a> {
    List(&'a [Value]),
    Words(&'a str),
    One(&'a Value),
}

impl<'a> Values<'a> {
    fn of(path: &ClaimPath, v: &'a Value) -> Self {
        match v {
            Value::Array(a) => Self::List(a),
            Value::String(s) if path.is_scope() => Self::Words(s),
            other => Self::One(other),
        }
    }

    fn contains(&self, want: &Value) -> bool {
        match self {
            Self::List(a) => a.iter().any(|v| v == want),
            Self::Words(s) => want.as_str().is_some_and(|w| s.split(' ').any(|x| x == w)),
            Self::One(v) => *v == want,
        }
    }
}

impl ClaimCondition {
    /// `Ok` when the claims satisfy the condition, else the reason in words.
    pub fn check(&self, path: &ClaimPath, claims: &Map<String, Value>) -> Result<(), String> {
        let name = path.as_str();
        let found = path.lookup(claims).filter(|v| !v.is_null());
        match (self, found) {
            (Self::Present(true), Some(_)) | (Self::Present(false), None) => Ok(()),
            (Self::Present(true), None) => Err(format!("claim {name} is missing")),
            (Self::Present(false), Some(_)) => Err(format!("claim {name} must be absent")),
            (_, None) => Err(format!("claim {name} is missing")),
            (Self::Equals(want), Some(v)) => {
                if v == want {
                    Ok(())
                } else {
                    Err(format!("claim {name} is {}, expected {}", show(v), show(want)))
                }
            }
            (Self::AnyOf(wants), Some(v)) => {
                let values = Values::of(path, v);
                if wants.iter().any(|w| values.contains(w)) {
                    Ok(())
                } else if let [only] = wants.as_slice() {
                    Err(format!("claim {name} lacks {}", show(only)))
                } else {
                    Err(format!("claim {name} lacks any of {}", list(wants)))
                }
            }
            (Self::AllOf(wants), Some(v)) => {
                let values = Values::of(path, v);
                match wants.iter().find(|w| !values.contains(w)) {
                    None => Ok(()),
                    Some(missing) => Err(format!("claim {name} lacks {}", show(missing))),
                }
            }
        }
    }
}

/// Short rendering of a claim value for a human; long values are cut.
fn show(v: &Value) -> String {
    let s = v.to_string();
    if s.len() <= 80 {
        return s;
    }
    let mut end = 80;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

fn list(vs: &[Value]) -> String {
    let items: Vec<String> = vs.iter().map(show).collect();
    format!("[{}]", items.join(", "))
}
