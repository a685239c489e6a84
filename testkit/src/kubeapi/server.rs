//! HTTP/1.1 front of the fake: records the request, waits the configured
//! latency, answers the configured outage, authenticates the caller, then
//! routes to the store.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::RequestRecord;
use super::collection::ListQuery;
use super::events::EventApi;
use super::resource::ResourceType;
use super::rest::{At, Target, parse_object, present};
use super::selector::{FieldSelector, LabelSelector};
use super::status::ApiError;
use super::store::Store;
use super::tokenreview::Verdict;
use super::watch::{Filter, WatchBody, WatchCut};

pub(super) type ResponseBody = UnsyncBoxBody<Bytes, WatchCut>;

/// What the request handlers share with the test-facing handle.
pub(super) struct Shared {
    pub store: Mutex<Store>,
    pub token: String,
    /// `http://127.0.0.1:PORT`, for the discovery document's `jwks_uri`.
    pub url: String,
}

impl Shared {
    pub fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The apiserver's default watch length when the client sets no
/// `timeoutSeconds` (its `--min-request-timeout`).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);
/// Largest body accepted (the apiserver's limit is 3 MiB).
const MAX_BODY: usize = 3 * 1024 * 1024;

/// Who is calling, from the bearer token.
enum Caller {
    /// The fake's kubeconfig token: may do anything.
    Admin,
    /// A valid service-account token the fake issued.
    ServiceAccount(String),
    Anonymous,
}

/// The service-account issuer discovery paths.
fn is_discovery(path: &str) -> bool {
    path == "/.well-known/openid-configuration" || path == "/openid/v1/jwks"
}

pub(super) async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<ResponseBody>, WatchCut> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query: Vec<(String, String)> = url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
        .into_owned()
        .collect();
    let latency = {
        let mut store = shared.store();
        store.record(RequestRecord {
            method: method.to_string(),
            path: path.clone(),
            query: query.clone(),
        });
        store.latency_for(&path)
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if let Some(code) = shared.store().failing_for(&path) {
        return Ok(error(&ApiError::from_code(code)));
    }
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let caller = match bearer {
        Some(t) if t == shared.token => Caller::Admin,
        Some(t) => match shared.store().authenticate(&t, None, &shared.token) {
            Verdict::Authenticated(user) => Caller::ServiceAccount(user.username),
            _ => return Ok(error(&ApiError::from_code(401))),
        },
        None => Caller::Anonymous,
    };
    if method == Method::GET && is_discovery(&path) {
        // The apiserver's default policy lets every service account read
        // issuer discovery; anonymous callers only with the knob on.
        let allowed = !matches!(caller, Caller::Anonymous) || shared.store().identity.anonymous_discovery;
        return Ok(if allowed {
            discovery(&shared, &path)
        } else {
            error(&ApiError::from_code(401))
        });
    }
    match caller {
        Caller::Admin => {}
        Caller::Anonymous => return Ok(error(&ApiError::from_code(401))),
        Caller::ServiceAccount(user) => {
            // The fake does not authorize its own API: only the admin token
            // may use it. Refuse as RBAC would refuse an unbound account.
            return Ok(error(&ApiError::new(
                403,
                "Forbidden",
                format!("{method} {path} is forbidden: User \"{user}\" cannot use this fake apiserver's API"),
            )));
        }
    }
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = match http_body_util::Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => return Ok(error(&ApiError::new(413, "RequestEntityTooLarge", e.to_string()))),
    };
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let post = |f: &dyn Fn(&mut Store) -> Result<Value, ApiError>| -> Result<Response<ResponseBody>, ApiError> {
        if method != Method::POST {
            return Err(method_not_allowed());
        }
        let mut store = shared.store();
        f(&mut store).map(|v| json_response(StatusCode::CREATED, &v))
    };
    let result = match segments.as_slice() {
        ["version"] => only_get(&method).map(|()| json_response(StatusCode::OK, &version())),
        ["api", "v1", "namespaces", ns, "serviceaccounts", name, "token"] => {
            post(&|s: &mut Store| s.token_request(ns, name, &body))
        }
        ["apis", "authentication.k8s.io", "v1", "tokenreviews"] => {
            post(&|s: &mut Store| s.token_review(&body, &shared.token))
        }
        ["apis", "authorization.k8s.io", "v1", "subjectaccessreviews"] => {
            post(&|s: &mut Store| s.subject_access_review(&body))
        }
        ["apis", "events.k8s.io", "v1", "namespaces", ns, "events", rest @ ..] => {
            events(&shared, EventApi::EventsV1, &method, ns, rest, &content_type, &body)
        }
        ["api", "v1", "namespaces", ns, "events", rest @ ..] => {
            events(&shared, EventApi::CoreV1, &method, ns, rest, &content_type, &body)
        }
        ["api", "v1", rest @ ..] => resource(&shared, &method, "", "v1", rest, &query, &content_type, &body),
        ["apis", group, version, rest @ ..] => {
            resource(&shared, &method, group, version, rest, &query, &content_type, &body)
        }
        _ => Err(ApiError::no_route()),
    };
    Ok(result.unwrap_or_else(|e| error(&e)))
}

fn discovery(shared: &Shared, path: &str) -> Response<ResponseBody> {
    let mut store = shared.store();
    let (value, content_type) = if path == "/openid/v1/jwks" {
        (store.identity.jwks(), "application/jwk-set+json")
    } else {
        (store.identity.discovery(&shared.url), "application/json")
    };
    let mut response = json_response(StatusCode::OK, &value);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    // openidmetadata.go: max-age from the keys' cache age (3600 s).
    headers.insert(
        header::CACHE_CONTROL,
        http::HeaderValue::from_static("public, max-age=3600"),
    );
    response
}

fn only_get(method: &Method) -> Result<(), ApiError> {
    if method == Method::GET {
        Ok(())
    } else {
        Err(method_not_allowed())
    }
}

fn method_not_allowed() -> ApiError {
    ApiError::new(
        405,
        "MethodNotAllowed",
        "the server does not allow this method on the requested resource",
    )
}

/// Where in a resource's URL space a request is.
enum Place<'a> {
    Collection,
    Object(&'a str),
    Status(&'a str),
}

/// `/api/v1/...` and `/apis/{group}/{version}/...` for every served type.
#[expect(clippy::too_many_arguments, reason = "the parts of one request")]
fn resource(
    shared: &Shared,
    method: &Method,
    group: &str,
    version: &str,
    rest: &[&str],
    query: &[(String, String)],
    content_type: &str,
    body: &[u8],
) -> Result<Response<ResponseBody>, ApiError> {
    let (namespace, plural, place) = match rest {
        ["namespaces", ns, plural, tail @ ..] => (Some(*ns), *plural, tail),
        [plural, tail @ ..] if *plural != "namespaces" => (None, *plural, tail),
        _ => return Err(ApiError::no_route()),
    };
    let place = match place {
        [] => Place::Collection,
        [name] => Place::Object(name),
        [name, "status"] => Place::Status(name),
        _ => return Err(ApiError::no_route()),
    };
    let rtype = shared.store().resolve(group, version, plural)?;
    let wrong_scope = match (&place, namespace) {
        // A namespaced collection may be listed across namespaces.
        (Place::Collection, None) => false,
        (_, Some(_)) => !rtype.namespaced,
        (_, None) => rtype.namespaced,
    };
    if wrong_scope || (matches!(place, Place::Status(_)) && !rtype.status_subresource) {
        return Err(ApiError::no_route());
    }
    if *method != Method::GET && !rtype.writable {
        return Err(method_not_allowed());
    }
    let at = At::new(&rtype, version, namespace);
    let ns = at.namespace;
    let ok = |v: Value| json_response(StatusCode::OK, &v);
    let mut store = shared.store();
    match (method.clone(), place) {
        (Method::GET, Place::Collection) => {
            drop(store);
            list_or_watch(shared, &rtype, version, namespace, query)
        }
        (Method::POST, Place::Collection) if namespace.is_some() || !rtype.namespaced => {
            let object = parse_object(body)?;
            store.create(at, object).map(|v| json_response(StatusCode::CREATED, &v))
        }
        (Method::GET, Place::Object(name) | Place::Status(name)) => store
            .get_object(&rtype.group, &rtype.plural, ns, name)
            .map(|o| ok(present(&rtype, version, o)))
            .ok_or_else(|| ApiError::not_found_in(&rtype, name)),
        (Method::PUT, Place::Object(name)) => {
            let (v, created) = store.replace(at, name, parse_object(body)?, Target::Main)?;
            Ok(json_response(
                if created { StatusCode::CREATED } else { StatusCode::OK },
                &v,
            ))
        }
        (Method::PUT, Place::Status(name)) => store
            .replace(at, name, parse_object(body)?, Target::Status)
            .map(|(v, _)| ok(v)),
        (Method::PATCH, Place::Object(name)) => store.patch(at, name, content_type, body, Target::Main).map(ok),
        (Method::PATCH, Place::Status(name)) => store.patch(at, name, content_type, body, Target::Status).map(ok),
        (Method::DELETE, Place::Object(name)) => store.delete(at, name, body).map(ok),
        _ => Err(method_not_allowed()),
    }
}

fn list_or_watch(
    shared: &Shared,
    rtype: &ResourceType,
    version: &str,
    namespace: Option<&str>,
    query: &[(String, String)],
) -> Result<Response<ResponseBody>, ApiError> {
    let get = |k: &str| query.iter().rev().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
    let flag = |k: &str| get(k).is_some_and(|v| v == "true" || v == "1");
    let labels = LabelSelector::parse(get("labelSelector").unwrap_or(""))
        .map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {e}")))?;
    let fields = FieldSelector::parse(get("fieldSelector").unwrap_or("")).map_err(ApiError::bad_request)?;
    fields.check(&rtype.fields).map_err(ApiError::bad_request)?;
    let number = |k: &str| -> Result<Option<u64>, ApiError> {
        get(k)
            .map(|v| {
                v.parse::<u64>()
                    .map_err(|_| ApiError::bad_request(format!("invalid {k}: {v:?}")))
            })
            .transpose()
    };
    let limit = number("limit")?;
    let timeout = number("timeoutSeconds")?;
    let q = ListQuery {
        filter: Filter {
            namespace: namespace.map(str::to_string),
            labels,
            fields,
            api_version: (version != rtype.storage_version).then(|| rtype.api_version(version)),
        },
        resource_version: get("resourceVersion").map(str::to_string),
        version_match: get("resourceVersionMatch").map(str::to_string),
        limit: limit.map(|l| usize::try_from(l).unwrap_or(usize::MAX)),
        continue_token: get("continue").filter(|c| !c.is_empty()).map(str::to_string),
        bookmarks: flag("allowWatchBookmarks"),
        send_initial_events: flag("sendInitialEvents"),
    };
    if !flag("watch") {
        let list = shared.store().list(rtype, &q)?;
        return Ok(json_response(StatusCode::OK, &list));
    }
    let (initial, rx) = shared.store().watch(rtype, q)?;
    let rx = match rx {
        Some(rx) => rx,
        // The watch ends after its initial lines (an ERROR event).
        None => tokio::sync::mpsc::channel(1).1,
    };
    let timeout = timeout
        .filter(|t| *t > 0)
        .map_or(DEFAULT_WATCH_TIMEOUT, Duration::from_secs);
    let body = WatchBody {
        initial,
        rx,
        deadline: Box::pin(tokio::time::sleep(timeout)),
        done: false,
    };
    let response = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(UnsyncBoxBody::new(body))
        .map_err(|e| ApiError::new(500, "InternalError", e.to_string()))?;
    Ok(response)
}

fn events(
    shared: &Shared,
    api: EventApi,
    method: &Method,
    namespace: &str,
    rest: &[&str],
    content_type: &str,
    body: &[u8],
) -> Result<Response<ResponseBody>, ApiError> {
    let mut store = shared.store();
    match (method, rest) {
        (&Method::POST, []) => {
            let rv = store.next_rv();
            let created = store.events.create(api, namespace, body, rv)?;
            Ok(json_response(StatusCode::CREATED, &created))
        }
        (&Method::PATCH, [name]) => {
            let rv = store.next_rv();
            let patched = store.events.patch(api, namespace, name, content_type, body, rv)?;
            Ok(json_response(StatusCode::OK, &patched))
        }
        (&Method::GET, [name]) => Ok(json_response(StatusCode::OK, &store.events.get(api, namespace, name)?)),
        (_, [] | [_]) => Err(method_not_allowed()),
        _ => Err(ApiError::no_route()),
    }
}

fn version() -> Value {
    json!({
        "major": "1",
        "minor": "34",
        "gitVersion": "v1.34.0-nodeward-fake",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.24.0",
        "compiler": "gc",
        "platform": "linux/amd64"
    })
}

pub(super) fn json_response(status: StatusCode, value: &Value) -> Response<ResponseBody> {
    let body = Full::new(Bytes::from(serde_json::to_vec(value).unwrap_or_default()))
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    response
}

fn error(e: &ApiError) -> Response<ResponseBody> {
    let status = StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = json_response(status, &e.to_json());
    // The apiserver sets Retry-After on its 429 (max-in-flight) answers;
    // kube-rs honours it when it retries.
    if e.code == 429 {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, http::HeaderValue::from_static("1"));
    }
    response
}
