//! `metav1.Status` errors, with the reasons and messages the apiserver uses.

use std::fmt;

use serde_json::{Value, json};

use super::resource::ResourceType;

/// One apimachinery `field.Error`: `spec.user: Invalid value: "": why`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct FieldError {
    pub field: String,
    pub reason: &'static str,
    /// What follows `field: ` (`Invalid value: "x": detail`, `Required value: …`).
    pub body: String,
}

impl FieldError {
    /// `Invalid value: <value>: <detail>`, the value as Go prints it (`%#v`
    /// of a string quotes it; `null` for nothing).
    pub fn invalid(field: &str, value: &Value, detail: &str) -> Self {
        let shown = match value {
            Value::String(s) => format!("{s:?}"),
            other => other.to_string(),
        };
        Self {
            field: field.to_string(),
            reason: "FieldValueInvalid",
            body: format!("Invalid value: {shown}: {detail}"),
        }
    }

    pub fn required(field: &str, detail: &str) -> Self {
        let body = if detail.is_empty() {
            "Required value".to_string()
        } else {
            format!("Required value: {detail}")
        };
        Self {
            field: field.to_string(),
            reason: "FieldValueRequired",
            body,
        }
    }

    pub fn forbidden(field: &str, detail: &str) -> Self {
        Self {
            field: field.to_string(),
            reason: "FieldValueForbidden",
            body: format!("Forbidden: {detail}"),
        }
    }

    pub fn unsupported(field: &str, value: &str, supported: &[&str]) -> Self {
        let list = supported
            .iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        Self {
            field: field.to_string(),
            reason: "FieldValueNotSupported",
            body: format!("Unsupported value: {value:?}: supported values: {list}"),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.body)
    }
}

/// An API error the fake answers with (HTTP status = `code`, body = Status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// What the apiserver answers when list/watch options fail validation.
    pub fn invalid_options(message: impl Into<String>) -> Self {
        let message = message.into();
        Self {
            details: Some(json!({ "kind": "ListOptions", "group": "meta.k8s.io", "causes": [{ "message": message }] })),
            ..Self::new(
                422,
                "Invalid",
                format!("ListOptions.meta.k8s.io \"\" is invalid: {message}"),
            )
        }
    }

    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    pub fn not_found(kind: &str, name: &str) -> Self {
        Self {
            details: Some(json!({ "name": name, "kind": kind })),
            ..Self::new(404, "NotFound", format!("{kind} \"{name}\" not found"))
        }
    }

    /// NotFound for an object of a resource (`roles.rbac.authorization.k8s.io "x" not found`).
    pub fn not_found_in(rtype: &ResourceType, name: &str) -> Self {
        Self {
            details: Some(rtype.details(name)),
            ..Self::new(404, "NotFound", format!("{} \"{name}\" not found", rtype.qualified()))
        }
    }

    /// apimachinery `NewConflict`: a stale write.
    pub fn conflict(rtype: &ResourceType, name: &str, why: &str) -> Self {
        Self {
            details: Some(rtype.details(name)),
            ..Self::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} \"{name}\": {why}",
                    rtype.qualified()
                ),
            )
        }
    }

    /// The Conflict of an update against a newer resourceVersion.
    pub fn stale(rtype: &ResourceType, name: &str) -> Self {
        Self::conflict(
            rtype,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    pub fn already_exists(rtype: &ResourceType, name: &str) -> Self {
        Self {
            details: Some(rtype.details(name)),
            ..Self::new(
                409,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", rtype.qualified()),
            )
        }
    }

    /// apimachinery `NewInvalid`: `Kind.group "name" is invalid: <errors>`,
    /// one error as is, several as `[a, b]`, each also a cause.
    pub fn invalid(qualified_kind: &str, group: &str, kind: &str, name: &str, errors: &[FieldError]) -> Self {
        let joined = errors.iter().map(FieldError::to_string).collect::<Vec<_>>();
        let aggregate = match joined.as_slice() {
            [one] => one.clone(),
            many => format!("[{}]", many.join(", ")),
        };
        let causes: Vec<Value> = errors
            .iter()
            .map(|e| json!({ "reason": e.reason, "message": e.body, "field": e.field }))
            .collect();
        Self {
            details: Some(json!({ "name": name, "group": group, "kind": kind, "causes": causes })),
            ..Self::new(
                422,
                "Invalid",
                format!("{qualified_kind} \"{name}\" is invalid: {aggregate}"),
            )
        }
    }

    /// Invalid for an object of a served resource type.
    pub fn invalid_object(rtype: &ResourceType, name: &str, errors: &[FieldError]) -> Self {
        Self::invalid(&rtype.qualified_kind(), &rtype.group, &rtype.kind, name, errors)
    }

    pub fn unsupported_media(accepted: &str, got: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: {accepted}; got {got:?}"
            ),
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        let message = message.into();
        Self {
            details: Some(json!({ "causes": [{ "message": message }] })),
            ..Self::new(500, "InternalError", format!("Internal error occurred: {message}"))
        }
    }

    pub fn no_route() -> Self {
        Self {
            details: Some(json!({})),
            ..Self::new(404, "NotFound", "the server could not find the requested resource")
        }
    }

    pub fn too_large_rv(asked: u64, current: u64) -> Self {
        Self {
            details: Some(
                json!({ "causes": [{ "reason": "ResourceVersionTooLarge", "message": "Too large resource version" }], "retryAfterSeconds": 1 }),
            ),
            ..Self::new(
                504,
                "Timeout",
                format!("Timeout: Too large resource version: {asked}, current: {current}"),
            )
        }
    }

    /// The Status an outage answers with, for `set_failing`.
    pub fn from_code(code: u16) -> Self {
        let (reason, message) = match code {
            400 => ("BadRequest", "the server rejected our request for an unknown reason"),
            401 => ("Unauthorized", "Unauthorized"),
            403 => (
                "Forbidden",
                "forbidden: the server does not allow access to the requested resource",
            ),
            404 => ("NotFound", "the server could not find the requested resource"),
            409 => ("Conflict", "the server reported a conflict"),
            410 => ("Expired", "the resource has expired"),
            429 => (
                "TooManyRequests",
                "the server has received too many requests and has asked us to try again later",
            ),
            500 => (
                "InternalError",
                "an error on the server has prevented the request from succeeding",
            ),
            503 => (
                "ServiceUnavailable",
                "the server is currently unable to handle the request",
            ),
            504 => (
                "Timeout",
                "the server was unable to return a response in the time allotted",
            ),
            _ => (
                "Unknown",
                "an error on the server has prevented the request from succeeding",
            ),
        };
        Self::new(code, reason, message)
    }

    pub fn to_json(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        status
    }
}
