//! Turns the descriptor set an endpoint sends at discovery into a descriptor pool a reflection library
//! can use, repairing what SDKs get wrong, and reads Restate's options from it.
//!
//! `@restatedev/restate-sdk@0.4.1` (shared/sdk/README.md): Restate options arrive as
//! `uninterpreted_option`; `oneof_index` 0 is dropped, so the first oneof of a message has no fields;
//! proto2 defaults (`type` of doubles, `label`) are omitted; and all of `google/protobuf/descriptor.proto`
//! is shipped. Other endpoints (ours, protoc-built ones) send the options as extension fields 51234.
//! We accept both.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::LazyLock;

use prost::Message;
use prost_reflect::DescriptorPool;
use prost_types::field_descriptor_proto::Type;
use prost_types::{DescriptorProto, FileDescriptorProto, FileDescriptorSet};

use super::wire;

/// Field number of `dev.restate.ext.service_type` and `dev.restate.ext.field`.
pub const RESTATE_EXTENSION_FIELD: u32 = 51234;

/// The canonical well-known types, compiled by build.rs.
static WELL_KNOWN_TYPES: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/well_known_types.bin"));

/// Restate's service type option.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ServiceType {
    Unkeyed,
    Keyed,
    Singleton,
}

impl ServiceType {
    fn from_number(n: u64) -> Option<Self> {
        match n {
            0 => Some(ServiceType::Unkeyed),
            1 => Some(ServiceType::Keyed),
            2 => Some(ServiceType::Singleton),
            _ => None,
        }
    }

    fn from_identifier(s: &str) -> Option<Self> {
        match s {
            "UNKEYED" => Some(ServiceType::Unkeyed),
            "KEYED" => Some(ServiceType::Keyed),
            "SINGLETON" => Some(ServiceType::Singleton),
            _ => None,
        }
    }
}

/// A descriptor set that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("the descriptor set is not valid protobuf: {0}")]
    Decode(String),
    #[error("file {file} imports {missing}, which the descriptor set does not contain")]
    MissingFile { file: String, missing: String },
    #[error("service {service}: unknown value {value:?} of option dev.restate.ext.service_type")]
    BadServiceType { service: String, value: String },
    #[error("the descriptor set is inconsistent: {0}")]
    Pool(String),
}

/// Restate's options found in a descriptor set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestateOptions {
    /// Fully-qualified service name → its type.
    pub service_types: BTreeMap<String, ServiceType>,
    /// (fully-qualified message name, field number) of every field marked KEY.
    pub key_fields: BTreeSet<(String, u32)>,
}

/// A usable pool and the options read from the set.
pub struct Parsed {
    pub pool: DescriptorPool,
    pub options: RestateOptions,
}

/// Decodes, repairs and resolves a descriptor set as sent at discovery (the raw bytes of field 1).
pub fn parse(raw: &[u8]) -> Result<Parsed, Error> {
    let mut options = RestateOptions::default();
    read_extension_options(raw, &mut options).map_err(|e| Error::Decode(e.to_string()))?;
    let mut set = FileDescriptorSet::decode(raw).map_err(|e| Error::Decode(e.to_string()))?;
    read_uninterpreted_options(&set, &mut options)?;
    repair(&mut set)?;
    let pool =
        DescriptorPool::from_file_descriptor_set(set).map_err(|e| Error::Pool(e.to_string()))?;
    Ok(Parsed { pool, options })
}

fn join(package: &str, name: &str) -> String {
    if package.is_empty() {
        name.to_owned()
    } else {
        format!("{package}.{name}")
    }
}

/// Reads options sent as extension fields (number 51234), which `prost_types` would drop.
fn read_extension_options(raw: &[u8], out: &mut RestateOptions) -> Result<(), wire::Malformed> {
    for file in wire::bytes_fields(raw, 1)? {
        let package = wire::string_field(file, 2)?.unwrap_or_default();
        for message in wire::bytes_fields(file, 4)? {
            read_message_key_options(message, &package, out, 1)?;
        }
        for service in wire::bytes_fields(file, 6)? {
            let name = join(
                &package,
                &wire::string_field(service, 1)?.unwrap_or_default(),
            );
            for service_options in wire::bytes_fields(service, 3)? {
                if let Some(n) = wire::varint_field(service_options, RESTATE_EXTENSION_FIELD)? {
                    if let Some(t) = ServiceType::from_number(n) {
                        out.service_types.insert(name.clone(), t);
                    }
                }
            }
        }
    }
    Ok(())
}

fn read_message_key_options(
    message: &[u8],
    scope: &str,
    out: &mut RestateOptions,
    depth: usize,
) -> Result<(), wire::Malformed> {
    if depth > wire::RECURSION_LIMIT {
        return Err(wire::Malformed("message types nested too deeply"));
    }
    // One pass over the message for its name (1, last one wins), fields (2) and nested types (3).
    let mut name = None;
    let mut fields = Vec::new();
    let mut nested = Vec::new();
    for field in wire::fields(message) {
        let field = field?;
        if let wire::Value::Bytes(payload, _) = field.value {
            match field.number {
                1 => name = Some(payload),
                2 => fields.push(payload),
                3 => nested.push(payload),
                _ => {}
            }
        }
    }
    let name = join(scope, &String::from_utf8_lossy(name.unwrap_or_default()));
    for field in fields {
        // One pass over the field for its number (3) and options (8).
        let mut number = 0;
        let mut marked = false;
        for f in wire::fields(field) {
            let f = f?;
            match (f.number, f.value) {
                (3, wire::Value::Varint(n, _)) => number = n as u32,
                (8, wire::Value::Bytes(field_options, _)) => {
                    // FieldType has the single value KEY = 0.
                    marked |=
                        wire::varint_field(field_options, RESTATE_EXTENSION_FIELD)? == Some(0);
                }
                _ => {}
            }
        }
        if marked {
            out.key_fields.insert((name.clone(), number));
        }
    }
    for nested in nested {
        read_message_key_options(nested, &name, out, depth + 1)?;
    }
    Ok(())
}

fn option_name(option: &prost_types::UninterpretedOption) -> String {
    option
        .name
        .iter()
        .map(|part| part.name_part.trim_start_matches('.'))
        .collect::<Vec<_>>()
        .join(".")
}

/// Reads options sent as `uninterpreted_option` (what the TypeScript SDK does).
fn read_uninterpreted_options(
    set: &FileDescriptorSet,
    out: &mut RestateOptions,
) -> Result<(), Error> {
    fn messages(scope: &str, message: &DescriptorProto, out: &mut RestateOptions) {
        let name = join(scope, message.name());
        for field in &message.field {
            let marked = field
                .options
                .iter()
                .flat_map(|o| &o.uninterpreted_option)
                .any(|o| {
                    option_name(o) == "dev.restate.ext.field" && o.identifier_value() == "KEY"
                });
            if marked {
                out.key_fields.insert((name.clone(), field.number() as u32));
            }
        }
        for nested in &message.nested_type {
            messages(&name, nested, out);
        }
    }
    for file in &set.file {
        for message in &file.message_type {
            messages(file.package(), message, out);
        }
        for service in &file.service {
            let name = join(file.package(), service.name());
            for option in service.options.iter().flat_map(|o| &o.uninterpreted_option) {
                if option_name(option) != "dev.restate.ext.service_type" {
                    continue;
                }
                let value = option.identifier_value();
                let t =
                    ServiceType::from_identifier(value).ok_or_else(|| Error::BadServiceType {
                        service: name.clone(),
                        value: value.to_owned(),
                    })?;
                out.service_types.insert(name.clone(), t);
            }
        }
    }
    Ok(())
}

/// The well-known types by file name, decoded once (every registration used to decode all 107 KB of
/// them). Without their source info: the comments of `descriptor.proto` were most of those bytes, and
/// each endpoint's pool held a copy.
fn well_known_types() -> &'static HashMap<String, FileDescriptorProto> {
    static DECODED: LazyLock<HashMap<String, FileDescriptorProto>> = LazyLock::new(|| {
        FileDescriptorSet::decode(WELL_KNOWN_TYPES)
            .expect("build.rs wrote a valid set")
            .file
            .into_iter()
            .map(|mut f| {
                f.source_code_info = None;
                (f.name().to_owned(), f)
            })
            .collect()
    });
    &DECODED
}

/// Makes the set acceptable to a strict descriptor pool.
fn repair(set: &mut FileDescriptorSet) -> Result<(), Error> {
    // 0. Only syntaxes prost-reflect knows: it panics while reporting any other (0.14). An empty one
    //    means proto2, as an unset one does.
    for file in &mut set.file {
        match file.syntax.as_deref() {
            None | Some("proto2") | Some("proto3") => {}
            Some("") => file.syntax = None,
            Some(other) => {
                let clip = |s: &str| s.chars().take(64).collect::<String>();
                return Err(Error::Pool(format!(
                    "file {:?} has syntax {:?}; proto2 and proto3 are supported",
                    clip(file.name()),
                    clip(other)
                )));
            }
        }
    }
    let wkt = well_known_types();
    // 1. Canonical well-known types replace the copies sent, and are added where imported but missing.
    for file in &mut set.file {
        if let Some(canonical) = wkt.get(file.name()) {
            *file = canonical.clone();
        }
    }
    let mut present: HashSet<String> = set.file.iter().map(|f| f.name().to_owned()).collect();
    let mut i = 0;
    while i < set.file.len() {
        for dependency in set.file[i].dependency.clone() {
            if present.contains(&dependency) {
                continue;
            }
            let Some(canonical) = wkt.get(&dependency) else {
                return Err(Error::MissingFile {
                    file: set.file[i].name().to_owned(),
                    missing: dependency,
                });
            };
            present.insert(dependency);
            set.file.push(canonical.clone());
        }
        i += 1;
    }
    // 2. Field types left out (proto2 default TYPE_DOUBLE dropped, or only a type name given).
    let mut enums = HashSet::new();
    for file in &set.file {
        let scope = if file.package().is_empty() {
            String::new()
        } else {
            format!(".{}", file.package())
        };
        for e in &file.enum_type {
            enums.insert(format!("{scope}.{}", e.name()));
        }
        for m in &file.message_type {
            collect_enums(&scope, m, &mut enums);
        }
    }
    for file in &mut set.file {
        for message in &mut file.message_type {
            repair_message(message, &enums);
        }
        // 4. Uninterpreted options were read above; a pool would try to resolve them against extensions
        // the set may not define.
        for service in &mut file.service {
            if let Some(o) = service.options.as_mut() {
                o.uninterpreted_option.clear();
            }
            for method in &mut service.method {
                if let Some(o) = method.options.as_mut() {
                    o.uninterpreted_option.clear();
                }
            }
        }
        if let Some(o) = file.options.as_mut() {
            o.uninterpreted_option.clear();
        }
    }
    Ok(())
}

fn collect_enums(scope: &str, message: &DescriptorProto, out: &mut HashSet<String>) {
    let name = format!("{scope}.{}", message.name());
    for e in &message.enum_type {
        out.insert(format!("{name}.{}", e.name()));
    }
    for nested in &message.nested_type {
        collect_enums(&name, nested, out);
    }
}

fn repair_message(message: &mut DescriptorProto, enums: &HashSet<String>) {
    if let Some(o) = message.options.as_mut() {
        o.uninterpreted_option.clear();
    }
    for field in &mut message.field {
        if let Some(o) = field.options.as_mut() {
            o.uninterpreted_option.clear();
        }
        if field.r#type.is_none() {
            let t = match field.type_name() {
                "" => Type::Double,
                name => {
                    let suffix = format!(".{name}");
                    if enums.iter().any(|e| e == name || e.ends_with(&suffix)) {
                        Type::Enum
                    } else {
                        Type::Message
                    }
                }
            };
            field.set_type(t);
        }
    }
    // 3. Oneofs without members: the SDK dropped `oneof_index: 0`. The members are unknowable, so the
    // empty oneof is removed and later indexes shift down (its fields stay, as plain fields).
    let used: HashSet<i32> = message.field.iter().filter_map(|f| f.oneof_index).collect();
    let empty: Vec<i32> = (0..message.oneof_decl.len() as i32)
        .filter(|i| !used.contains(i))
        .collect();
    if !empty.is_empty() {
        for field in &mut message.field {
            if let Some(index) = field.oneof_index {
                let shift = empty.iter().filter(|&&e| e < index).count() as i32;
                field.oneof_index = Some(index - shift);
            }
        }
        let mut i = 0;
        message.oneof_decl.retain(|_| {
            let keep = !empty.contains(&i);
            i += 1;
            keep
        });
    }
    for nested in &mut message.nested_type {
        repair_message(nested, enums);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static ENDPOINT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/endpoint_descriptor.bin"));

    /// Regression (found by the `discovery` fuzz target): prost-reflect 0.14 panics (index out of
    /// bounds) while reporting a file whose `syntax` it does not know, e.g. `"editions"` as protoc
    /// writes for edition 2023; with panics aborting the process, one registration stopped the server.
    #[test]
    fn unknown_syntaxes_are_refused_without_a_panic() {
        for syntax in ["editions", "proto4", ""] {
            let mut set = FileDescriptorSet::decode(ENDPOINT).unwrap();
            let last = set.file.len() - 1;
            set.file[last].syntax = Some(syntax.to_owned());
            match parse(&set.encode_to_vec()) {
                Err(Error::Pool(e)) => assert!(e.contains("syntax"), "{e}"),
                Ok(_) if syntax.is_empty() => {} // "" is proto2's default
                other => panic!("{syntax:?}: expected a pool error, got {:?}", other.err()),
            }
        }
    }

    #[test]
    fn extension_options_of_a_protoc_built_set_are_read() {
        let parsed = parse(ENDPOINT).unwrap();
        let types = &parsed.options.service_types;
        assert_eq!(types["restate.test.Counter"], ServiceType::Keyed);
        assert_eq!(types["restate.test.Echo"], ServiceType::Unkeyed);
        assert_eq!(types["restate.test.Config"], ServiceType::Singleton);
        assert!(parsed
            .options
            .key_fields
            .contains(&("restate.test.AddRequest".to_owned(), 1)));
        assert!(parsed
            .pool
            .get_service_by_name("restate.test.Counter")
            .is_some());
    }

    /// A set shaped like the TypeScript SDK's: uninterpreted options, a message whose first oneof lost its
    /// members, a field without `type`, and a broken copy of struct.proto.
    #[test]
    fn sdk_shaped_sets_are_repaired() {
        use prost_types::*;
        let option = |name: &str, value: &str| UninterpretedOption {
            name: vec![uninterpreted_option::NamePart {
                name_part: name.into(),
                is_extension: true,
            }],
            identifier_value: Some(value.into()),
            ..Default::default()
        };
        let mut broken_struct = well_known_types()["google/protobuf/struct.proto"].clone();
        for m in &mut broken_struct.message_type {
            for f in &mut m.field {
                if f.oneof_index == Some(0) {
                    f.oneof_index = None;
                }
            }
        }
        let user = FileDescriptorProto {
            name: Some("user.proto".into()),
            package: Some("".into()),
            dependency: vec!["google/protobuf/struct.proto".into()],
            syntax: Some("proto3".into()),
            message_type: vec![DescriptorProto {
                name: Some("Req".into()),
                field: vec![
                    FieldDescriptorProto {
                        name: Some("key".into()),
                        number: Some(1),
                        r#type: Some(field_descriptor_proto::Type::String as i32),
                        json_name: Some("key".into()),
                        options: Some(FieldOptions {
                            uninterpreted_option: vec![option("dev.restate.ext.field", "KEY")],
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                    FieldDescriptorProto {
                        name: Some("ratio".into()),
                        number: Some(2),
                        json_name: Some("ratio".into()),
                        ..Default::default()
                    },
                    FieldDescriptorProto {
                        name: Some("value".into()),
                        number: Some(3),
                        type_name: Some(".google.protobuf.Value".into()),
                        json_name: Some("value".into()),
                        ..Default::default()
                    },
                ],
                oneof_decl: vec![OneofDescriptorProto {
                    name: Some("kind".into()),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            service: vec![ServiceDescriptorProto {
                name: Some("svc".into()),
                method: vec![MethodDescriptorProto {
                    name: Some("m".into()),
                    input_type: Some(".Req".into()),
                    output_type: Some(".google.protobuf.Value".into()),
                    ..Default::default()
                }],
                options: Some(ServiceOptions {
                    uninterpreted_option: vec![option("dev.restate.ext.service_type", "KEYED")],
                    ..Default::default()
                }),
            }],
            ..Default::default()
        };
        let set = FileDescriptorSet {
            file: vec![broken_struct, user],
        };
        let parsed = parse(&set.encode_to_vec()).unwrap();
        assert_eq!(parsed.options.service_types["svc"], ServiceType::Keyed);
        assert!(parsed.options.key_fields.contains(&("Req".to_owned(), 1)));
        let req = parsed.pool.get_message_by_name("Req").unwrap();
        assert_eq!(
            req.get_field_by_name("ratio").unwrap().kind(),
            prost_reflect::Kind::Double
        );
        assert!(req
            .get_field_by_name("value")
            .unwrap()
            .kind()
            .as_message()
            .is_some());
        let value = parsed
            .pool
            .get_message_by_name("google.protobuf.Value")
            .unwrap();
        assert_eq!(value.oneofs().next().unwrap().fields().count(), 6);
    }

    #[test]
    fn missing_imports_and_garbage_are_errors() {
        let set = FileDescriptorSet {
            file: vec![FileDescriptorProto {
                name: Some("a.proto".into()),
                dependency: vec!["b.proto".into()],
                ..Default::default()
            }],
        };
        assert!(matches!(
            parse(&set.encode_to_vec()),
            Err(Error::MissingFile { missing, .. }) if missing == "b.proto"
        ));
        assert!(matches!(parse(&[0x0a, 0x05, 1]), Err(Error::Decode(_))));
    }

    /// Key options read from raw bytes in one pass per message: a field's options may come before its
    /// number, nested types are scoped by their parent's last name, and only KEY (0) marks a key.
    #[test]
    fn key_options_are_read_in_any_field_order_and_scoped_by_nesting() {
        use prost::encoding::{bytes, string, uint64};
        let message = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut out = Vec::new();
            f(&mut out);
            out
        };
        let options = |value: u64| message(&|o| uint64::encode(RESTATE_EXTENSION_FIELD, &value, o));
        let key_first = message(&|o| {
            bytes::encode(8, &options(0), o);
            uint64::encode(3, &7, o);
        });
        let not_a_key = message(&|o| {
            uint64::encode(3, &2, o);
            bytes::encode(8, &options(1), o);
        });
        let inner = message(&|o| {
            bytes::encode(2, &key_first, o);
            string::encode(1, &"Inner".to_owned(), o);
        });
        let outer = message(&|o| {
            string::encode(1, &"Wrong".to_owned(), o);
            bytes::encode(3, &inner, o);
            bytes::encode(2, &not_a_key, o);
            string::encode(1, &"Outer".to_owned(), o);
        });
        let file = message(&|o| {
            string::encode(2, &"p".to_owned(), o);
            bytes::encode(4, &outer, o);
        });
        let set = message(&|o| bytes::encode(1, &file, o));
        let mut out = RestateOptions::default();
        read_extension_options(&set, &mut out).unwrap();
        assert_eq!(
            out.key_fields,
            BTreeSet::from([("p.Outer.Inner".to_owned(), 7)])
        );
        let mut truncated = set.clone();
        truncated.truncate(set.len() - 1);
        assert!(read_extension_options(&truncated, &mut out).is_err());
    }
}
