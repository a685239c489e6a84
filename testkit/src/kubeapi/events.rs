//! Events written by clients: `events.k8s.io/v1` (what kube-rs's `Recorder`
//! uses) and legacy core `v1`, created by POST and updated by merge PATCH,
//! with the apiserver's checks on what a create must carry.

use std::collections::{BTreeMap, VecDeque};

use serde_json::{Map, Value};

use super::status::ApiError;
use super::store::{new_uid, now_seconds};

/// Event objects kept for PATCH, and writes kept for `events()`.
const EVENTS: usize = 4096;

/// Which events API a request went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum EventApi {
    /// `/apis/events.k8s.io/v1/...`
    EventsV1,
    /// `/api/v1/...`
    CoreV1,
}

impl EventApi {
    fn api_version(self) -> &'static str {
        match self {
            Self::EventsV1 => "events.k8s.io/v1",
            Self::CoreV1 => "v1",
        }
    }

    /// The resource as the apiserver names it in messages.
    fn resource(self) -> &'static str {
        match self {
            Self::EventsV1 => "events.events.k8s.io",
            Self::CoreV1 => "events",
        }
    }
}

#[derive(Default)]
pub(crate) struct EventStore {
    objects: BTreeMap<(EventApi, String, String), Value>,
    log: VecDeque<Value>,
}

impl EventStore {
    pub fn log(&self) -> Vec<Value> {
        self.log.iter().cloned().collect()
    }

    pub fn get(&self, api: EventApi, namespace: &str, name: &str) -> Result<Value, ApiError> {
        self.objects
            .get(&(api, namespace.to_string(), name.to_string()))
            .cloned()
            .ok_or_else(|| ApiError::not_found(api.resource(), name))
    }

    pub fn create(&mut self, api: EventApi, namespace: &str, body: &[u8], rv: u64) -> Result<Value, ApiError> {
        let mut event: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("the object provided is unrecognized: {e}")))?;
        let Some(obj) = event.as_object_mut() else {
            return Err(ApiError::bad_request(
                "the object provided is unrecognized (not a JSON object)",
            ));
        };
        check_type(api, obj)?;
        let meta = obj
            .entry("metadata")
            .or_insert_with(|| Value::Object(Map::new()))
            .as_object_mut()
            .ok_or_else(|| ApiError::bad_request("metadata must be an object"))?;
        match meta.get("namespace").and_then(Value::as_str) {
            Some(ns) if ns != namespace => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            _ => {}
        }
        let name = match (
            meta.get("name").and_then(Value::as_str),
            meta.get("generateName").and_then(Value::as_str),
        ) {
            (Some(name), _) if !name.is_empty() => name.to_string(),
            (_, Some(prefix)) if !prefix.is_empty() => format!("{prefix}{}", &new_uid()[..5]),
            _ => {
                return Err(invalid(
                    api,
                    "",
                    "metadata.name: Required value: name or generateName is required",
                ));
            }
        };
        let key = (api, namespace.to_string(), name.clone());
        if self.objects.contains_key(&key) {
            return Err(ApiError {
                details: Some(serde_json::json!({ "name": name, "group": group(api), "kind": "events" })),
                ..ApiError::new(
                    409,
                    "AlreadyExists",
                    format!("{} \"{name}\" already exists", api.resource()),
                )
            });
        }
        meta.insert("name".into(), Value::String(name.clone()));
        meta.insert("namespace".into(), Value::String(namespace.to_string()));
        meta.insert("uid".into(), Value::String(new_uid()));
        meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
        meta.insert(
            "creationTimestamp".into(),
            serde_json::to_value(now_seconds()).unwrap_or(Value::Null),
        );
        if api == EventApi::EventsV1 {
            validate_events_v1(obj, &name)?;
        }
        obj.insert("apiVersion".into(), Value::String(api.api_version().into()));
        obj.insert("kind".into(), Value::String("Event".into()));
        self.store(key, event.clone());
        Ok(event)
    }

    /// Applies a JSON merge patch (RFC 7386); the apiserver treats a
    /// strategic merge patch of an Event (no list merge keys in play for the
    /// fields clients patch) the same way.
    pub fn patch(
        &mut self,
        api: EventApi,
        namespace: &str,
        name: &str,
        content_type: &str,
        body: &[u8],
        rv: u64,
    ) -> Result<Value, ApiError> {
        let media = content_type.split(';').next().unwrap_or("").trim();
        if media != "application/merge-patch+json" && media != "application/strategic-merge-patch+json" {
            return Err(ApiError::new(
                415,
                "UnsupportedMediaType",
                format!(
                    "the body of the request was in an unknown format - accepted media types (by this fake) \
                     include: application/merge-patch+json, application/strategic-merge-patch+json; got {media:?}"
                ),
            ));
        }
        let patch: Value =
            serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
        let key = (api, namespace.to_string(), name.to_string());
        let mut event = self
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(api.resource(), name))?;
        merge_patch(&mut event, &patch);
        let meta = &event["metadata"];
        if meta["name"] != name || meta["namespace"] != namespace {
            return Err(invalid(
                api,
                name,
                "metadata.name: Invalid value: the name or namespace may not change",
            ));
        }
        if let Some(obj) = event.as_object_mut() {
            check_type(api, obj)?;
            if api == EventApi::EventsV1 {
                validate_events_v1(obj, name)?;
            }
        }
        event["metadata"]["resourceVersion"] = Value::String(rv.to_string());
        self.store(key, event.clone());
        Ok(event)
    }

    fn store(&mut self, key: (EventApi, String, String), event: Value) {
        if self.objects.len() >= EVENTS && !self.objects.contains_key(&key) {
            // Drop the oldest write (lowest resourceVersion), like the
            // apiserver's event TTL would.
            let oldest = self
                .objects
                .iter()
                .min_by_key(|(_, v)| {
                    v["metadata"]["resourceVersion"]
                        .as_str()
                        .and_then(|r| r.parse::<u64>().ok())
                })
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                self.objects.remove(&oldest);
            }
        }
        self.objects.insert(key, event.clone());
        if self.log.len() == EVENTS {
            self.log.pop_front();
        }
        self.log.push_back(event);
    }
}

fn group(api: EventApi) -> &'static str {
    match api {
        EventApi::EventsV1 => "events.k8s.io",
        EventApi::CoreV1 => "",
    }
}

fn invalid(api: EventApi, name: &str, message: &str) -> ApiError {
    ApiError {
        details: Some(
            serde_json::json!({ "name": name, "group": group(api), "kind": "Event", "causes": [{ "message": message }] }),
        ),
        ..ApiError::new(
            422,
            "Invalid",
            format!("Event.{} \"{name}\" is invalid: {message}", api.resource()),
        )
    }
}

/// Rejects a body whose apiVersion or kind belongs to another resource.
fn check_type(api: EventApi, obj: &Map<String, Value>) -> Result<(), ApiError> {
    if let Some(v) = obj.get("apiVersion").and_then(Value::as_str)
        && v != api.api_version()
    {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({v}) does not match the expected API version ({})",
            api.api_version()
        )));
    }
    if let Some(k) = obj.get("kind").and_then(Value::as_str)
        && k != "Event"
    {
        return Err(ApiError::bad_request(format!(
            "the kind in the data ({k}) does not match Event"
        )));
    }
    Ok(())
}

/// The fields the apiserver requires of an `events.k8s.io/v1` Event
/// (pkg/apis/core/validation `ValidateEventCreate` for the new API).
fn validate_events_v1(obj: &Map<String, Value>, name: &str) -> Result<(), ApiError> {
    let present = |k: &str| obj.get(k).and_then(Value::as_str).is_some_and(|s| !s.is_empty());
    for field in [
        "eventTime",
        "reportingController",
        "reportingInstance",
        "action",
        "reason",
    ] {
        if !present(field) {
            return Err(invalid(EventApi::EventsV1, name, &format!("{field}: Required value")));
        }
    }
    match obj.get("type").and_then(Value::as_str) {
        Some("Normal" | "Warning") => Ok(()),
        other => Err(invalid(
            EventApi::EventsV1,
            name,
            &format!("type: Unsupported value: {other:?}: supported values: \"Normal\", \"Warning\""),
        )),
    }
}

/// RFC 7386 JSON merge patch.
pub(super) fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(map) = target {
        for (k, v) in patch {
            if v.is_null() {
                map.remove(k);
            } else {
                merge_patch(map.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let mut doc = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(&mut doc, &json!({"a": "z", "c": {"f": null}, "n": [1]}));
        assert_eq!(doc, json!({"a": "z", "c": {"d": "e"}, "n": [1]}));
    }

    #[test]
    fn events_v1_create_requires_the_new_api_fields() {
        let mut store = EventStore::default();
        let body = json!({"metadata": {"name": "e1"}, "reason": "Started"}).to_string();
        let err = store
            .create(EventApi::EventsV1, "ns", body.as_bytes(), 5)
            .expect_err("missing fields");
        assert_eq!((err.code, err.reason), (422, "Invalid"));
        // Legacy core events are lenient.
        let created = store
            .create(EventApi::CoreV1, "ns", body.as_bytes(), 6)
            .expect("core event");
        assert_eq!(created["metadata"]["resourceVersion"], "6");
        assert_eq!(store.log().len(), 1);
    }
}
