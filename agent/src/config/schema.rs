//! JSON Schemas of the policy types whose YAML shape is not their Rust shape
//! (custom `Deserialize`): what the IdentityPolicy CRD (`k8s/crd.rs`) tells
//! the API server and `kubectl explain`. Each describes the shape the parser
//! accepts, as a Kubernetes *structural* schema (a type on every node; any
//! JSON value only where a claim value can be anything), with CEL rules
//! (`x-kubernetes-validations`) for the "exactly one of" choices, so the API
//! server refuses those mistakes at `kubectl apply` time. The agent still
//! parses every spec with the same code as `nodeward check`: the schema is a
//! first line, never the only one.

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};

use super::claim_path::ClaimPath;
use super::egress::{ClientCredentials, EgressToken, HostPattern, ServiceAccountToken, TokenExchange};
use super::policy::{ClaimCondition, ForwardClaim, MethodName, Mode, PathGlob, Requirement, RuleConfig};

/// Any JSON value: a claim can be a string, number, boolean, array or object.
fn any_value(description: &str) -> Schema {
    json_schema!({
        "description": description,
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

impl JsonSchema for ClaimPath {
    fn schema_name() -> Cow<'static, str> {
        "ClaimPath".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "minLength": 1,
            "description": "A claim: dotted (`email`, `realm_access.roles`, `[\"kubernetes.io\"].namespace`) or a JSON Pointer (`/kubernetes.io/namespace`).",
        })
    }
}

impl JsonSchema for PathGlob {
    fn schema_name() -> Cow<'static, str> {
        "PathGlob".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "minLength": 1,
            "description": "A glob over the normalised path: `*` within a segment, `**` across (`/admin/**` also matches `/admin`); `*` or `**` alone: every path.",
            "x-kubernetes-validations": [{
                "rule": "self == '*' || self == '**' || self.startsWith('/')",
                "message": "a path glob must start with '/' (or be * or ** for every path)",
            }],
        })
    }
}

impl JsonSchema for MethodName {
    fn schema_name() -> Cow<'static, str> {
        "MethodName".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "minLength": 1,
            "pattern": "^[A-Z0-9!#$%&'*+.^_`|~-]+$",
            "description": "An upper-case HTTP method (GET also covers HEAD).",
        })
    }
}

impl JsonSchema for ClaimCondition {
    fn schema_name() -> Cow<'static, str> {
        "ClaimCondition".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let list = |what: &str| {
            json_schema!({
                "type": "array",
                "minItems": 1,
                "description": what,
                "items": any_value("a claim value"),
            })
        };
        json_schema!({
            "type": "object",
            "description": "What the claim must be: exactly one of equals, any_of, all_of, present. Arrays and space-separated scope/scp strings count as lists.",
            "properties": {
                "equals": any_value("The claim equals this value (a list claim: contains it)."),
                "any_of": list("The claim (or one of its elements) is one of these."),
                "all_of": list("The claim is a list holding all of these."),
                "present": {"type": "boolean", "description": "true: the claim is there and not null; false: absent."},
            },
            "additionalProperties": false,
            "x-kubernetes-validations": [{
                "rule": "[has(self.equals), has(self.any_of), has(self.all_of), has(self.present)].filter(x, x).size() == 1",
                "message": "set exactly one of equals, any_of, all_of, present",
            }],
        })
    }
}

impl JsonSchema for ForwardClaim {
    fn schema_name() -> Cow<'static, str> {
        "ForwardClaim".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        // A string or an object: a structural schema cannot type a union,
        // so the node is untyped and the agent's parser decides.
        any_value("A claim path (`email`), or {claim: PATH, encoding: plain|json}.")
    }
}

impl JsonSchema for RuleConfig {
    fn schema_name() -> Cow<'static, str> {
        "Rule".into()
    }

    fn json_schema(g: &mut SchemaGenerator) -> Schema {
        let paths = g.subschema_for::<Vec<PathGlob>>();
        let methods = g.subschema_for::<Vec<MethodName>>();
        let require = g.subschema_for::<Requirement>();
        let mode = g.subschema_for::<Mode>();
        json_schema!({
            "type": "object",
            "description": "One rule: which requests it matches (paths, methods) and exactly one action: `allow: anonymous`, `require: {...}` or `deny: true`. The first matching rule decides.",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "minLength": 1},
                "paths": paths,
                "methods": methods,
                "allow": {"type": "string", "enum": ["anonymous"], "description": "No token needed."},
                "require": require,
                "deny": {"type": "boolean", "description": "true: every request the rule matches is refused."},
                "mode": mode,
            },
            "additionalProperties": false,
            "x-kubernetes-validations": [{
                "rule": "[has(self.allow), has(self.require), has(self.deny) && self.deny].filter(x, x).size() == 1",
                "message": "set exactly one of `allow: anonymous`, `require`, `deny: true`",
            }],
        })
    }
}

impl JsonSchema for HostPattern {
    fn schema_name() -> Cow<'static, str> {
        "HostPattern".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "minLength": 1,
            "maxLength": 255,
            "pattern": "^(\\*\\.)?[a-z0-9_.:-]+$",
            "description": "A host name as the application writes it, lower case, without port: exact (`payments.shop`) or `*.` for every name below a domain.",
        })
    }
}

impl JsonSchema for EgressToken {
    fn schema_name() -> Cow<'static, str> {
        "EgressToken".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(g: &mut SchemaGenerator) -> Schema {
        let sa = g.subschema_for::<ServiceAccountToken>();
        let cc = g.subschema_for::<ClientCredentials>();
        let ex = g.subschema_for::<TokenExchange>();
        json_schema!({
            "type": "object",
            "description": "Which token the calls carry: exactly one of service_account (TokenRequest for the calling pod's service account, bound to the pod), client_credentials, exchange (RFC 8693). IdentityPolicies may use service_account only: the others name secret files on the node.",
            "properties": {
                "service_account": sa,
                "client_credentials": cc,
                "exchange": ex,
            },
            "additionalProperties": false,
            "x-kubernetes-validations": [{
                "rule": "[has(self.service_account), has(self.client_credentials), has(self.exchange)].filter(x, x).size() == 1",
                "message": "set exactly one of service_account, client_credentials, exchange",
            }],
        })
    }
}
