//! SubjectAccessReview (`pkg/registry/authorization/subjectaccessreview/
//! rest.go`, validated as `pkg/apis/authorization/validation` does), decided
//! by an authorizer chain like a cluster's `--authorization-mode=RBAC`:
//! members of `system:masters` are allowed first (reason empty), then RBAC
//! over the stored objects (`rbac.rs`). RBAC never denies: no match is
//! `allowed: false` with `denied` and `reason` omitted, as the apiserver
//! omits empty fields. [`FakeKubeApi::set_authorizer_error`] puts an
//! authorizer after RBAC that fails (a webhook down): denied requests then
//! carry `evaluationError`, as the union authorizer reports it.
//!
//! Not modelled: the Node authorizer, webhook and ABAC modes,
//! Local/SelfSubjectAccessReview, SelfSubjectRulesReview, `fieldSelector`
//! and `labelSelector` in `resourceAttributes` (RBAC ignores them).

use std::collections::VecDeque;

use k8s_openapi::api::authorization::v1::SubjectAccessReview;
use serde_json::{Value, json};

use super::FakeKubeApi;
use super::rbac::{self, Attributes};
use super::status::{ApiError, FieldError};
use super::store::Store;
use super::tokenreview::ReviewLog;

/// Reviews kept for `subject_access_reviews()`.
const REVIEWS: usize = 4096;

/// What the review APIs keep: their logs and the failing-authorizer knob.
#[derive(Default)]
pub(super) struct Authorization {
    pub token_reviews: ReviewLog,
    access_reviews: VecDeque<Value>,
    pub evaluation_error: Option<String>,
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or("").to_string()
}

/// `ValidateSubjectAccessReview`.
fn validate(review: &Value) -> Result<(), ApiError> {
    let spec = &review["spec"];
    let present = |k: &str| spec[k].is_object();
    let mut errors = Vec::new();
    if present("resourceAttributes") && present("nonResourceAttributes") {
        errors.push(FieldError::invalid(
            "spec.nonResourceAttributes",
            &spec["nonResourceAttributes"],
            "cannot be specified in combination with resourceAttributes",
        ));
    }
    if !present("resourceAttributes") && !present("nonResourceAttributes") {
        errors.push(FieldError::invalid(
            "spec.resourceAttributes",
            &Value::Null,
            "exactly one of nonResourceAttributes or resourceAttributes must be specified",
        ));
    }
    let groups = spec["groups"].as_array().map_or(0, Vec::len);
    if text(&spec["user"]).is_empty() && groups == 0 {
        errors.push(FieldError::invalid(
            "spec.user",
            &Value::String(String::new()),
            "at least one of user or group must be specified",
        ));
    }
    let meta = &review["metadata"];
    if [
        "name",
        "namespace",
        "generateName",
        "labels",
        "annotations",
        "uid",
        "resourceVersion",
    ]
    .iter()
    .any(|k| meta.get(*k).is_some_and(|v| !v.is_null()))
    {
        errors.push(FieldError::invalid("metadata", meta, "must be empty"));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "SubjectAccessReview.authorization.k8s.io",
            "authorization.k8s.io",
            "SubjectAccessReview",
            "",
            &errors,
        ))
    }
}

/// `AuthorizationAttributesFrom`.
fn attributes(spec: &Value) -> Attributes {
    let groups = spec["groups"]
        .as_array()
        .map(|g| g.iter().filter_map(Value::as_str).map(str::to_string).collect())
        .unwrap_or_default();
    let mut a = Attributes {
        user: text(&spec["user"]),
        groups,
        ..Default::default()
    };
    if let Some(r) = spec["resourceAttributes"].as_object() {
        let get = |k: &str| r.get(k).map(text).unwrap_or_default();
        a.verb = get("verb");
        a.namespace = get("namespace");
        a.api_group = get("group");
        a.resource = get("resource");
        a.subresource = get("subresource");
        a.name = get("name");
    } else {
        let n = &spec["nonResourceAttributes"];
        a.verb = text(&n["verb"]);
        a.path = Some(text(&n["path"]));
    }
    a
}

impl Store {
    /// `POST /apis/authorization.k8s.io/v1/subjectaccessreviews`.
    pub fn subject_access_review(&mut self, body: &[u8]) -> Result<Value, ApiError> {
        let mut review = super::rest::parse_object(body)?;
        if review["apiVersion"]
            .as_str()
            .is_some_and(|v| v != "authorization.k8s.io/v1")
            || review["kind"].as_str().is_some_and(|k| k != "SubjectAccessReview")
        {
            return Err(ApiError::bad_request(
                "the object provided is not an authorization.k8s.io/v1 SubjectAccessReview",
            ));
        }
        validate(&review)?;
        let a = attributes(&review["spec"]);
        let (allowed, reason) = if a.groups.iter().any(|g| g == "system:masters") {
            (true, String::new())
        } else {
            rbac::authorize(self, &a)
        };
        let mut status = json!({ "allowed": allowed });
        if !reason.is_empty() {
            status["reason"] = Value::String(reason);
        }
        if !allowed && let Some(error) = &self.authorization.evaluation_error {
            status["evaluationError"] = Value::String(error.clone());
        }
        review["apiVersion"] = Value::String("authorization.k8s.io/v1".into());
        review["kind"] = Value::String("SubjectAccessReview".into());
        review["metadata"] = json!({ "creationTimestamp": null });
        review["status"] = status;
        let log = &mut self.authorization.access_reviews;
        if log.len() == REVIEWS {
            log.pop_front();
        }
        log.push_back(review.clone());
        Ok(review)
    }
}

impl FakeKubeApi {
    /// Every SubjectAccessReview answered, oldest first (the last 4096):
    /// what was asked (`spec`) and what the fake said (`status`).
    pub fn subject_access_reviews(&self) -> Vec<SubjectAccessReview> {
        let store = self.shared.store();
        store
            .authorization
            .access_reviews
            .iter()
            .filter_map(|r| serde_json::from_value(r.clone()).ok())
            .collect()
    }

    /// `Some(message)`: an authorizer after RBAC fails with `message` (as a
    /// webhook authorizer that cannot reach its backend would), so every
    /// review RBAC does not allow carries it as `status.evaluationError`.
    pub fn set_authorizer_error(&self, message: Option<&str>) {
        self.shared.store().authorization.evaluation_error = message.map(str::to_string);
    }
}
