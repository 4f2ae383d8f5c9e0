//! The schema registry's data: registered endpoints, their services and methods, key rules and
//! descriptor pools. [`Schemas`] is an immutable snapshot; every change builds a new one (pure functions,
//! no IO), which the registry persists and broadcasts to every core.

pub mod descriptor;
pub mod key;
pub mod registry;
pub mod wire;

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine;
use prost_reflect::{DescriptorPool, MessageDescriptor};
use serde::{Deserialize, Serialize};

pub use descriptor::ServiceType;
pub use key::KeyKind;

/// How the runtime talks to an endpoint (chosen by the endpoint at discovery).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProtocolMode {
    /// Full duplex: completions flow while the invocation runs.
    BidiStream,
    /// The request side is closed after the journal: the SDK suspends to wait.
    RequestResponse,
}

/// A registration that cannot be accepted, or a lookup that finds nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("bad endpoint uri {uri:?}: {reason}")]
    BadUri { uri: String, reason: String },
    #[error("the discovery response is not valid protobuf: {0}")]
    BadResponse(String),
    #[error(transparent)]
    Descriptor(#[from] descriptor::Error),
    #[error("unknown protocol_mode {0} in the discovery response")]
    BadProtocolMode(u64),
    #[error("the endpoint announced no services")]
    NoServices,
    #[error("service {0} is announced but not in the descriptor set")]
    ServiceNotInDescriptors(String),
    #[error("service name {0} is reserved (dev.restate.* and grpc.* belong to the runtime)")]
    ReservedName(String),
    #[error("service {0} has no dev.restate.ext.service_type option")]
    MissingServiceType(String),
    #[error("keyed service {0} has no methods")]
    KeyedWithoutMethods(String),
    #[error("keyed service {service}, method {method}: {reason}")]
    KeyField {
        service: String,
        method: String,
        reason: String,
    },
    #[error("endpoint {0} is already registered; set \"force\": true to replace it")]
    EndpointExists(String),
    #[error(
        "the registry holds meta.max_endpoints ({0}) endpoints; delete one \
         (DELETE /endpoints/{{id}}?force=true) or raise the limit"
    )]
    TooManyEndpoints(usize),
    #[error("endpoint {0} not found")]
    EndpointNotFound(String),
    #[error("service {0} not found")]
    ServiceNotFound(String),
    #[error("method {method} of service {service} not found")]
    MethodNotFound { service: String, method: String },
    #[error("stored schemas are unreadable: {0}")]
    Corrupt(String),
}

impl Error {
    /// Registration errors are the caller's; none heals by retrying the same request.
    pub fn is_transient(&self) -> bool {
        false
    }
}

/// A method of a registered service.
#[derive(Debug, Clone)]
pub struct Method {
    pub name: String,
    pub input: MessageDescriptor,
    pub output: MessageDescriptor,
    /// Keyed services: the number of the input's key field.
    pub key_field: Option<u32>,
}

/// A registered service.
#[derive(Debug, Clone)]
pub struct Service {
    /// Fully-qualified name (`counter`, `example.Greeter`).
    pub name: String,
    pub instance_type: ServiceType,
    pub methods: BTreeMap<String, Method>,
    pub endpoint_id: String,
    /// 1 at first registration, +1 at each re-registration.
    pub revision: u32,
    /// Callable through the ingress (other services can always call it).
    pub public: bool,
}

impl Service {
    /// The instance key of a request to `method` (§2.4): the key field (keyed), empty (singleton), or
    /// `None` for unkeyed services, whose every invocation gets a fresh key.
    pub fn extract_key(
        &self,
        method: &Method,
        request: &[u8],
    ) -> Result<Option<Vec<u8>>, wire::Malformed> {
        match (self.instance_type, method.key_field) {
            (ServiceType::Keyed, Some(field)) => {
                key::extract(request, &method.input, field).map(Some)
            }
            (ServiceType::Singleton, _) => Ok(Some(Vec::new())),
            _ => Ok(None),
        }
    }
}

/// A registered endpoint.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// base64url-no-pad of the URI's authority + path: stable across re-registrations.
    pub id: String,
    /// Normalised URI (no trailing slash except the root path).
    pub uri: String,
    pub protocol_mode: ProtocolMode,
    /// Sent with every request to the endpoint.
    pub additional_headers: BTreeMap<String, String>,
    /// Services announced, in the announced order.
    pub services: Vec<String>,
    /// Descriptors of its services: ingress transcoding and reflection use them.
    pub pool: DescriptorPool,
    /// SHA-256 (hex) of the discovery response, which the registry keeps in its own file
    /// (`discovery/<digest>.pb`): it is read back only at start, never held in memory.
    pub discovery_digest: String,
}

/// An immutable snapshot of every registration.
#[derive(Debug, Clone, Default)]
pub struct Schemas {
    /// Bumped by every change.
    pub version: u64,
    pub endpoints: BTreeMap<String, Arc<Endpoint>>,
    pub services: BTreeMap<String, Arc<Service>>,
}

/// An endpoint as discovered, validated, not yet registered.
pub struct Discovered {
    pub protocol_mode: ProtocolMode,
    services: Vec<Service>,
    pool: DescriptorPool,
    digest: String,
}

impl Discovered {
    /// Names of the services announced.
    pub fn service_names(&self) -> Vec<String> {
        self.services.iter().map(|s| s.name.clone()).collect()
    }

    /// SHA-256 (hex) of the discovery response this was decoded from.
    pub fn digest(&self) -> &str {
        &self.digest
    }
}

/// SHA-256 of a discovery response, lower-case hex: the name of the file that holds it.
pub fn digest(raw: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, raw)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Normalises an endpoint URI and derives its id.
pub fn endpoint_id(uri: &str) -> Result<(String, String), Error> {
    // The error names the uri without its credentials, if it has any.
    let bad = |reason: &str| Error::BadUri {
        uri: crate::http::client::redact_userinfo(uri),
        reason: reason.to_owned(),
    };
    let parsed: http::Uri = uri
        .parse()
        .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
    match parsed.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err(bad("the scheme must be http or https")),
    }
    let authority = parsed.authority().ok_or_else(|| bad("no host"))?;
    if authority.as_str().contains('@') {
        return Err(bad(
            "credentials in the uri are not accepted (they would be logged and shown); pass them in \
             additional_headers instead, e.g. {\"authorization\": \"Basic ...\"}",
        ));
    }
    crate::http::client::explicit_port(authority).map_err(|reason| bad(&reason))?;
    if parsed.query().is_some() {
        return Err(bad("a query string is not allowed"));
    }
    let path = match parsed.path() {
        "" | "/" => "/",
        p => p.trim_end_matches('/'),
    };
    let normalised = format!(
        "{}://{}{}",
        parsed.scheme_str().unwrap_or("http"),
        authority,
        if path == "/" { "" } else { path }
    );
    let id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{authority}{path}"));
    Ok((normalised, id))
}

/// Decodes and validates a discovery response (§2.2, §2.4).
pub fn discover(raw: &[u8]) -> Result<Discovered, Error> {
    let bad = |e: wire::Malformed| Error::BadResponse(e.to_string());
    // Field 1 may come in several pieces; protobuf merges them by concatenation.
    let files: Vec<u8> = wire::bytes_fields(raw, 1).map_err(bad)?.concat();
    let names: Vec<String> = wire::bytes_fields(raw, 2)
        .map_err(bad)?
        .into_iter()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .collect();
    let protocol_mode = match wire::varint_field(raw, 5).map_err(bad)?.unwrap_or(0) {
        0 => ProtocolMode::BidiStream,
        1 => ProtocolMode::RequestResponse,
        other => return Err(Error::BadProtocolMode(other)),
    };
    if names.is_empty() {
        return Err(Error::NoServices);
    }
    let parsed = descriptor::parse(&files)?;
    let services = names
        .iter()
        .map(|name| validate_service(name, &parsed))
        .collect::<Result<_, _>>()?;
    Ok(Discovered {
        protocol_mode,
        services,
        pool: parsed.pool,
        digest: digest(raw),
    })
}

fn validate_service(name: &str, parsed: &descriptor::Parsed) -> Result<Service, Error> {
    if name.starts_with("dev.restate.") || name.starts_with("grpc.") {
        return Err(Error::ReservedName(name.to_owned()));
    }
    let descriptor = parsed
        .pool
        .get_service_by_name(name)
        .ok_or_else(|| Error::ServiceNotInDescriptors(name.to_owned()))?;
    let instance_type = *parsed
        .options
        .service_types
        .get(name)
        .ok_or_else(|| Error::MissingServiceType(name.to_owned()))?;
    if instance_type == ServiceType::Keyed && descriptor.methods().len() == 0 {
        return Err(Error::KeyedWithoutMethods(name.to_owned()));
    }
    let mut methods = BTreeMap::new();
    let mut first_kind: Option<(String, KeyKind)> = None;
    for m in descriptor.methods() {
        let input = m.input();
        let key_field = if instance_type == ServiceType::Keyed {
            let key_error = |reason: String| Error::KeyField {
                service: name.to_owned(),
                method: m.name().to_owned(),
                reason,
            };
            let marked: Vec<_> = input
                .fields()
                .filter(|f| {
                    parsed
                        .options
                        .key_fields
                        .contains(&(input.full_name().to_owned(), f.number()))
                })
                .collect();
            let field = match marked.as_slice() {
                [field] => field.clone(),
                [] => {
                    return Err(key_error(format!(
                        "input message {} has no field marked (dev.restate.ext.field) = KEY",
                        input.full_name()
                    )))
                }
                many => {
                    return Err(key_error(format!(
                        "input message {} has {} key fields; exactly one is allowed",
                        input.full_name(),
                        many.len()
                    )))
                }
            };
            if field.is_list() || field.is_map() {
                return Err(key_error(format!(
                    "key field {} is repeated or a map",
                    field.name()
                )));
            }
            let kind = KeyKind::of(&field.kind());
            match &first_kind {
                Some((other, first)) if *first != kind => {
                    return Err(key_error(format!(
                        "key field {} is {kind:?}, but method {other}'s key is {first:?}; all key fields \
                         of a service must have the same type",
                        field.name()
                    )))
                }
                None => first_kind = Some((m.name().to_owned(), kind)),
                _ => {}
            }
            Some(field.number())
        } else {
            None
        };
        methods.insert(
            m.name().to_owned(),
            Method {
                name: m.name().to_owned(),
                input,
                output: m.output(),
                key_field,
            },
        );
    }
    Ok(Service {
        name: name.to_owned(),
        instance_type,
        methods,
        endpoint_id: String::new(),
        revision: 0,
        public: true,
    })
}

/// What a registration did: the services with their new revisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    pub id: String,
    pub services: Vec<(String, u32)>,
}

impl Schemas {
    /// Adds (or, with `force`, replaces) an endpoint. Re-registered services get revision + 1; services
    /// the replaced registration had and the new one lacks are removed. Endpoints left serving no service
    /// are dropped ([`collect_garbage`](Self::collect_garbage)).
    pub fn register(
        &self,
        uri: &str,
        additional_headers: BTreeMap<String, String>,
        discovered: Discovered,
        force: bool,
    ) -> Result<(Schemas, Registered), Error> {
        let (mut next, registered) =
            self.register_keeping(uri, additional_headers, discovered, force)?;
        next.collect_garbage();
        Ok((next, registered))
    }

    /// Drops every endpoint none of whose services points at it any more (superseded by a later
    /// registration of the same services elsewhere).
    ///
    /// Invocations are not pinned to an endpoint yet: an attempt looks the service's endpoint up when it
    /// starts, so nothing in flight holds a superseded record. When invocations get pinned to the
    /// endpoint (revision) they started on, this is the place to keep the records that pinned
    /// invocations still name.
    pub fn collect_garbage(&mut self) {
        let live: std::collections::BTreeSet<&str> = self
            .services
            .values()
            .map(|s| s.endpoint_id.as_str())
            .collect();
        let stale: Vec<String> = self
            .endpoints
            .keys()
            .filter(|id| !live.contains(id.as_str()))
            .cloned()
            .collect();
        for id in stale {
            self.endpoints.remove(&id);
        }
    }

    /// [`register`](Self::register) without the garbage collection (replaying persisted endpoints,
    /// whose services are sorted out afterwards).
    fn register_keeping(
        &self,
        uri: &str,
        additional_headers: BTreeMap<String, String>,
        discovered: Discovered,
        force: bool,
    ) -> Result<(Schemas, Registered), Error> {
        let (uri, id) = endpoint_id(uri)?;
        let mut next = self.clone();
        if let Some(old) = next.endpoints.remove(&id) {
            if !force {
                return Err(Error::EndpointExists(id));
            }
            for name in &old.services {
                if next.services.get(name).is_some_and(|s| s.endpoint_id == id) {
                    next.services.remove(name);
                }
            }
        }
        let mut registered = Vec::new();
        for mut service in discovered.services {
            let previous = self.services.get(&service.name);
            service.revision = previous.map_or(1, |p| p.revision + 1);
            service.public = previous.is_none_or(|p| p.public);
            service.endpoint_id = id.clone();
            registered.push((service.name.clone(), service.revision));
            next.services
                .insert(service.name.clone(), Arc::new(service));
        }
        next.endpoints.insert(
            id.clone(),
            Arc::new(Endpoint {
                id: id.clone(),
                uri,
                protocol_mode: discovered.protocol_mode,
                additional_headers,
                services: registered.iter().map(|(n, _)| n.clone()).collect(),
                pool: discovered.pool,
                discovery_digest: discovered.digest,
            }),
        );
        next.version += 1;
        Ok((
            next,
            Registered {
                id,
                services: registered,
            },
        ))
    }

    /// Removes an endpoint and the services it still serves.
    pub fn remove_endpoint(&self, id: &str) -> Result<Schemas, Error> {
        let mut next = self.clone();
        next.endpoints
            .remove(id)
            .ok_or_else(|| Error::EndpointNotFound(id.to_owned()))?;
        next.services.retain(|_, s| s.endpoint_id != id);
        next.version += 1;
        Ok(next)
    }

    /// Makes a service callable through the ingress, or not.
    pub fn set_public(&self, service: &str, public: bool) -> Result<Schemas, Error> {
        let mut next = self.clone();
        let current = next
            .services
            .get(service)
            .ok_or_else(|| Error::ServiceNotFound(service.to_owned()))?;
        let mut updated = Service::clone(current);
        updated.public = public;
        next.services.insert(service.to_owned(), Arc::new(updated));
        next.version += 1;
        Ok(next)
    }

    /// A service and one of its methods.
    pub fn method(&self, service: &str, method: &str) -> Result<(&Arc<Service>, &Method), Error> {
        let s = self
            .services
            .get(service)
            .ok_or_else(|| Error::ServiceNotFound(service.to_owned()))?;
        let m = s.methods.get(method).ok_or_else(|| Error::MethodNotFound {
            service: service.to_owned(),
            method: method.to_owned(),
        })?;
        Ok((s, m))
    }

    /// The persisted form.
    pub fn to_persisted(&self) -> Persisted {
        Persisted {
            version: self.version,
            endpoints: self
                .endpoints
                .values()
                .map(|e| PersistedEndpoint {
                    uri: e.uri.clone(),
                    additional_headers: e.additional_headers.clone(),
                    discovery: None,
                    discovery_sha256: Some(e.discovery_digest.clone()),
                })
                .collect(),
            services: self
                .services
                .values()
                .map(|s| PersistedService {
                    name: s.name.clone(),
                    endpoint_id: s.endpoint_id.clone(),
                    revision: s.revision,
                    public: s.public,
                })
                .collect(),
        }
    }

    /// Rebuilds the snapshot from its persisted form (re-validating every endpoint); `load` reads a
    /// discovery response by its digest.
    pub fn from_persisted(
        persisted: Persisted,
        load: impl Fn(&str) -> Result<Vec<u8>, Error>,
    ) -> Result<Schemas, Error> {
        let corrupt = |e: String| Error::Corrupt(e);
        let mut schemas = Schemas::default();
        for endpoint in persisted.endpoints {
            let raw = endpoint.discovery_bytes(&load)?;
            let discovered = discover(&raw)?;
            (schemas, _) = schemas.register_keeping(
                &endpoint.uri,
                endpoint.additional_headers,
                discovered,
                true,
            )?;
        }
        let mut services = BTreeMap::new();
        for stored in persisted.services {
            let Some(current) = schemas.services.get(&stored.name) else {
                continue;
            };
            let endpoint = schemas.endpoints.get(&stored.endpoint_id).ok_or_else(|| {
                corrupt(format!("service {} names a missing endpoint", stored.name))
            })?;
            let mut service = Service::clone(current);
            if service.endpoint_id != endpoint.id {
                let discovered = discover(&load(&endpoint.discovery_digest)?)?;
                service = discovered
                    .services
                    .into_iter()
                    .find(|s| s.name == stored.name)
                    .ok_or_else(|| {
                        corrupt(format!("{} is not served by its endpoint", stored.name))
                    })?;
                service.endpoint_id = endpoint.id.clone();
            }
            service.revision = stored.revision;
            service.public = stored.public;
            services.insert(stored.name, Arc::new(service));
        }
        schemas.services = services;
        schemas.version = persisted.version;
        schemas.collect_garbage();
        Ok(schemas)
    }
}

/// What is written to `meta.storage_path/schemas.json`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Persisted {
    pub version: u64,
    pub endpoints: Vec<PersistedEndpoint>,
    pub services: Vec<PersistedService>,
}

/// An endpoint on disk: enough to rebuild it without calling it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PersistedEndpoint {
    pub uri: String,
    pub additional_headers: BTreeMap<String, String>,
    /// The discovery response inline, base64: how registries before the discovery files stored it
    /// (read for upgrades, never written).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery: Option<String>,
    /// SHA-256 (hex) of the discovery response, kept in `discovery/<digest>.pb`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery_sha256: Option<String>,
}

impl PersistedEndpoint {
    /// The discovery response: inline (old registries) or from its file.
    pub fn discovery_bytes(
        &self,
        load: impl Fn(&str) -> Result<Vec<u8>, Error>,
    ) -> Result<Vec<u8>, Error> {
        match (&self.discovery, &self.discovery_sha256) {
            (Some(inline), _) => base64::engine::general_purpose::STANDARD
                .decode(inline)
                .map_err(|e| Error::Corrupt(format!("endpoint {}: {e}", self.uri))),
            (None, Some(digest)) => load(digest),
            (None, None) => Err(Error::Corrupt(format!(
                "endpoint {} has no discovery response",
                self.uri
            ))),
        }
    }
}

/// A service's registry facts on disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PersistedService {
    pub name: String,
    pub endpoint_id: String,
    pub revision: u32,
    pub public: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    static ENDPOINT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/endpoint_descriptor.bin"));

    /// A discovery response whose descriptor set keeps its extension options (raw bytes of field 1).
    fn response(services: &[&str], mode: i32) -> Vec<u8> {
        let mut out = crate::proto::discovery::ServiceDiscoveryResponse {
            files: None,
            services: services.iter().map(|s| s.to_string()).collect(),
            protocol_mode: mode,
            ..Default::default()
        }
        .encode_to_vec();
        prost::encoding::bytes::encode(1, &ENDPOINT.to_vec(), &mut out);
        out
    }

    /// Regression: reading Restate's options recursed once per nested message type on the raw bytes
    /// (before prost's own depth limit applies), so a descriptor set nesting 100,000 messages (500 KB,
    /// within `meta.max_discovery_response_bytes`) overflowed the stack and killed the process.
    #[test]
    fn deeply_nested_descriptors_are_refused_without_overflowing_the_stack() {
        let mut file = Vec::new();
        prost::encoding::bytes::encode(4, &wire::nested(3, 100_000), &mut file);
        let mut set = Vec::new();
        prost::encoding::bytes::encode(1, &file, &mut set);
        let mut raw = Vec::new();
        prost::encoding::bytes::encode(1, &set, &mut raw);
        prost::encoding::string::encode(2, &"svc".to_owned(), &mut raw);
        match discover(&raw) {
            Err(Error::Descriptor(descriptor::Error::Decode(e))) => {
                assert!(e.contains("nested too deeply"), "{e}")
            }
            other => panic!("expected a decode error, got {:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn endpoint_ids_are_stable_and_uris_normalised() {
        assert_eq!(
            endpoint_id("http://localhost:8080").unwrap(),
            (
                "http://localhost:8080".to_owned(),
                "bG9jYWxob3N0OjgwODAv".to_owned()
            )
        );
        assert_eq!(
            endpoint_id("http://localhost:8080/").unwrap().1,
            "bG9jYWxob3N0OjgwODAv"
        );
        assert_eq!(endpoint_id("http://h:1/a/").unwrap().0, "http://h:1/a");
        for bad in ["localhost:8080", "ftp://x", "http://", "http://h/?q=1", ""] {
            assert!(endpoint_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn discovery_validates_types_and_keys() {
        let d = discover(&response(
            &[
                "restate.test.Counter",
                "restate.test.Echo",
                "restate.test.Config",
            ],
            1,
        ))
        .unwrap();
        assert_eq!(d.protocol_mode, ProtocolMode::RequestResponse);
        let counter = &d.services[0];
        assert_eq!(counter.instance_type, ServiceType::Keyed);
        assert_eq!(counter.methods["Add"].key_field, Some(1));
        assert_eq!(d.services[1].instance_type, ServiceType::Unkeyed);
        assert_eq!(d.services[2].instance_type, ServiceType::Singleton);
        assert_eq!(
            discover(&response(&["restate.test.Nope"], 0)).err(),
            Some(Error::ServiceNotInDescriptors("restate.test.Nope".into()))
        );
        assert!(matches!(
            discover(&response(&[], 0)),
            Err(Error::NoServices)
        ));
        assert!(matches!(
            discover(&response(&["restate.test.Echo"], 7)),
            Err(Error::BadProtocolMode(7))
        ));
        assert!(matches!(
            discover(b"\x0a\x05garbage"),
            Err(Error::Descriptor(_)) | Err(Error::BadResponse(_))
        ));
    }

    #[test]
    fn registration_bumps_revisions_and_force_replaces() {
        let d = || discover(&response(&["restate.test.Counter", "restate.test.Echo"], 0)).unwrap();
        let (s1, r1) = Schemas::default()
            .register("http://a:1", BTreeMap::new(), d(), true)
            .unwrap();
        assert_eq!(
            r1.services,
            vec![
                ("restate.test.Counter".into(), 1),
                ("restate.test.Echo".into(), 1)
            ]
        );
        assert_eq!(
            s1.register("http://a:1/", BTreeMap::new(), d(), false)
                .err(),
            Some(Error::EndpointExists(r1.id.clone()))
        );
        let only_echo = discover(&response(&["restate.test.Echo"], 0)).unwrap();
        let (s2, r2) = s1
            .register("http://a:1", BTreeMap::new(), only_echo, true)
            .unwrap();
        assert_eq!(r2.services, vec![("restate.test.Echo".into(), 2)]);
        assert!(
            !s2.services.contains_key("restate.test.Counter"),
            "forced re-registration drops services"
        );
        let s3 = s2.set_public("restate.test.Echo", false).unwrap();
        let raw = response(&["restate.test.Echo"], 0);
        let back = Schemas::from_persisted(s3.to_persisted(), |d| {
            assert_eq!(d, digest(&raw));
            Ok(raw.clone())
        })
        .unwrap();
        assert_eq!(back.services["restate.test.Echo"].revision, 2);
        assert!(!back.services["restate.test.Echo"].public);
        assert_eq!(back.version, s3.version);
        let s4 = back.remove_endpoint(&r1.id).unwrap();
        assert!(s4.services.is_empty() && s4.endpoints.is_empty());
    }

    /// Endpoints whose every service moved elsewhere are dropped; one still serving a service stays,
    /// also across a persist/load round trip whose replay order differs from the registration order.
    #[test]
    fn superseded_endpoints_are_collected() {
        let both = response(&["restate.test.Counter", "restate.test.Echo"], 0);
        let counter = response(&["restate.test.Counter"], 0);
        let echo = response(&["restate.test.Echo"], 0);
        let register = |s: &Schemas, uri: &str, raw: &[u8]| {
            s.register(uri, BTreeMap::new(), discover(raw).unwrap(), true)
                .unwrap()
        };
        let (s, a) = register(&Schemas::default(), "http://z:1", &both);
        let (s, b) = register(&s, "http://b:1", &counter);
        assert_eq!(s.endpoints.len(), 2, "a still serves Echo");
        assert_eq!(s.services["restate.test.Counter"].endpoint_id, b.id);
        let blobs: BTreeMap<String, Vec<u8>> = [&both, &counter, &echo]
            .into_iter()
            .map(|raw| (digest(raw), raw.clone()))
            .collect();
        let back = Schemas::from_persisted(s.to_persisted(), |d| Ok(blobs[d].clone())).unwrap();
        assert_eq!(back.endpoints.len(), 2);
        assert_eq!(back.services["restate.test.Counter"].endpoint_id, b.id);
        assert_eq!(back.services["restate.test.Echo"].endpoint_id, a.id);
        let (s, c) = register(&s, "http://c:1", &echo);
        let ids: Vec<&String> = s.endpoints.keys().collect();
        assert_eq!(ids.len(), 2, "a serves nothing any more: {ids:?}");
        assert!(s.endpoints.contains_key(&b.id) && s.endpoints.contains_key(&c.id));
        let persisted = serde_json::to_string(&s.to_persisted()).unwrap();
        assert!(
            persisted.len() < 1024,
            "no discovery response inline: {persisted}"
        );
    }

    #[test]
    fn uris_with_credentials_or_bad_ports_are_refused() {
        let e = endpoint_id("http://admin:hunter2@localhost:8080").unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        assert!(e.to_string().contains("additional_headers"), "{e}");
        for bad in [
            "http://127.0.0.1:99999",
            "http://h:0",
            "http://h:65536/x",
            "http://h:x",
        ] {
            let e = endpoint_id(bad);
            assert!(e.is_err(), "{bad}: {e:?}");
        }
        assert!(endpoint_id("http://[::1]:9080").is_ok());
        assert!(endpoint_id("http://[::1]").is_ok());
    }

    #[test]
    fn keys_follow_the_instance_type() {
        let d = discover(&response(
            &[
                "restate.test.Counter",
                "restate.test.Config",
                "restate.test.Echo",
            ],
            0,
        ))
        .unwrap();
        let (schemas, _) = Schemas::default()
            .register("http://a:1", BTreeMap::new(), d, true)
            .unwrap();
        let (counter, add) = schemas.method("restate.test.Counter", "Add").unwrap();
        assert_eq!(
            counter.extract_key(add, &[0x0a, 0x01, b'k']).unwrap(),
            Some(vec![1, b'k'])
        );
        let (config, get) = schemas.method("restate.test.Config", "Get").unwrap();
        assert_eq!(config.extract_key(get, &[]).unwrap(), Some(vec![]));
        let (echo, m) = schemas.method("restate.test.Echo", "Echo").unwrap();
        assert_eq!(echo.extract_key(m, &[]).unwrap(), None);
    }
}
