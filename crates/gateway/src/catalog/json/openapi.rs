//! The OpenAPI 3.1 description of JSON routes, from the descriptors alone:
//! an operation per route, the `bridge-*` headers it takes, its request
//! and response schemas in the proto3 JSON mapping, the error schema, and
//! the protos' comments as descriptions.

use std::collections::{BTreeMap, BTreeSet};

use prost_reflect::{FieldDescriptor, FileDescriptor, Kind, MessageDescriptor};
use serde_json::{Map, Value, json};

use super::{BodyRule, Route, Routes};

/// What a caller may do with one method, as its policies say.
#[derive(Debug, Clone, Default)]
pub struct Permitted {
    /// Purposes under which the call is permitted without consent.
    pub purposes: BTreeSet<String>,
    /// Purposes under which it is permitted only with the citizen's
    /// consent (`bridge-consent`).
    pub with_consent: BTreeSet<String>,
}

/// The reference of the error schema every operation answers with.
const ERROR: &str = "govbridge.Error";

/// The document: every route of `routes` whose method (`/pkg.Service/M`)
/// is in `permitted`, described for one caller.
pub fn document(
    routes: &Routes,
    permitted: &BTreeMap<String, Permitted>,
    declared: &Declared<'_>,
    title: &str,
    server: Option<&str>,
) -> Value {
    let mut paths: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    let mut schemas = Schemas::of(routes.all().next().map(|route| route.method.parent_pool()));
    let mut operation_ids: BTreeMap<String, usize> = BTreeMap::new();
    for route in routes.all() {
        let method = &route.method;
        let grpc_path = format!("/{}/{}", method.parent_service().full_name(), method.name());
        let Some(permits) = permitted.get(&grpc_path) else {
            continue;
        };
        let base = format!("{}_{}", method.parent_service().name(), method.name());
        let seen = operation_ids.entry(base.clone()).or_default();
        *seen += 1;
        let operation_id = if *seen == 1 {
            base
        } else {
            format!("{base}_{seen}")
        };
        let operation = operation(
            route,
            &operation_id,
            &grpc_path,
            permits,
            declared,
            &mut schemas,
        );
        paths
            .entry(route.template.openapi_path())
            .or_default()
            .insert(
                route.verb.as_str().to_ascii_lowercase(),
                Value::Object(operation),
            );
    }
    let mut components = schemas.done();
    components.insert(ERROR.to_owned(), error_schema());
    let mut document = json!({
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": "1",
            "description": "JSON over HTTPS through govbridge: each operation is a gRPC method \
                of a published service, transcoded by the gateway. Call with your member \
                certificate (mutual TLS); the same policies, consent rules, limits and \
                exchange log apply as to gRPC calls. Messages follow the proto3 JSON \
                mapping: lowerCamelCase names (proto names are accepted too), 64-bit \
                integers as strings, enums by name. Answers carry every field, defaults \
                included.",
        },
        "paths": paths,
        "components": { "schemas": components },
    });
    if let Some(server) = server {
        name_server(&mut document, server);
    }
    document
}

/// Names `server` (`https://host[:port]`) as where `document`'s operations
/// are called.
pub fn name_server(document: &mut Value, server: &str) {
    document["servers"] = json!([{ "url": server }]);
}

fn operation(
    route: &Route,
    operation_id: &str,
    grpc_path: &str,
    permits: &Permitted,
    declared: &Declared<'_>,
    schemas: &mut Schemas,
) -> Map<String, Value> {
    let method = &route.method;
    let input = method.input();
    let mut parameters = Vec::new();
    let bound: BTreeSet<&str> = route.template.variables().collect();
    for variable in &bound {
        if let Ok(field) = super::field_at(&input, variable) {
            let mut parameter = json!({
                "name": variable,
                "in": "path",
                "required": true,
                "description": comments(&field.parent_file(), field.path()).unwrap_or_default(),
                "schema": schemas.field(&field),
            });
            if let Some(example) = schemas.example(&field) {
                parameter["example"] = example;
            }
            parameters.push(parameter);
        }
    }
    if !matches!(route.body, BodyRule::Whole) {
        let in_body = match &route.body {
            BodyRule::Field(field) => Some(field.name().to_owned()),
            _ => None,
        };
        for field in input.fields() {
            let scalar = !matches!(field.kind(), Kind::Message(_)) && !field.is_map();
            if !scalar || bound.contains(field.name()) || in_body.as_deref() == Some(field.name()) {
                continue;
            }
            let mut parameter = json!({
                "name": field.json_name(),
                "in": "query",
                "required": false,
                "description": comments(&field.parent_file(), field.path()).unwrap_or_default(),
                "schema": schemas.field(&field),
                "explode": true,
            });
            if let Some(example) = schemas.example(&field) {
                parameter["example"] = example;
            }
            parameters.push(parameter);
        }
    }
    parameters.extend(headers(declared, permits));

    let mut operation = Map::new();
    operation.insert("operationId".into(), json!(operation_id));
    operation.insert("tags".into(), json!([method.parent_service().full_name()]));
    operation.insert("summary".into(), json!(format!("gRPC {grpc_path}")));
    let mut description = comments(&method.parent_file(), method.path()).unwrap_or_default();
    if !permits.with_consent.is_empty() {
        description.push_str(&format!(
            "\n\nNeeds the citizen's consent (`bridge-consent`) for purpose {}.",
            permits
                .with_consent
                .iter()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    operation.insert("description".into(), json!(description.trim()));
    operation.insert("parameters".into(), Value::Array(parameters));
    let body_schema = match &route.body {
        BodyRule::Empty => None,
        BodyRule::Whole => Some(schemas.message(&input)),
        BodyRule::Field(field) => Some(schemas.field(field)),
    };
    if let Some(schema) = body_schema {
        let (media, description) = if method.is_client_streaming() {
            ("application/x-ndjson", "One request message per line.")
        } else {
            ("application/json", "The request message.")
        };
        let mut content = json!({ "schema": schema });
        if matches!(route.body, BodyRule::Whole)
            && !method.is_client_streaming()
            && let Some(example) = schemas.message_example(&input, &bound)
        {
            content["example"] = example;
        }
        operation.insert(
            "requestBody".into(),
            json!({
                "required": method.is_client_streaming(),
                "description": description,
                "content": { media: content },
            }),
        );
    }
    let output = match &route.response_body {
        Some(field) => schemas.field(field),
        None => schemas.message(&method.output()),
    };
    let (media, description) = if method.is_server_streaming() {
        (
            "application/x-ndjson",
            "One response message per line; a failure after the first message ends the \
             answer with a line `{\"error\": Error}`.",
        )
    } else {
        ("application/json", "The response message.")
    };
    let error = json!({ "$ref": format!("#/components/schemas/{ERROR}") });
    let mut responses = Map::new();
    responses.insert(
        "200".into(),
        json!({
            "description": description,
            "headers": {
                declared.request_id: { "schema": { "type": "string", "format": "uuid" } },
            },
            "content": { media: { "schema": output } },
        }),
    );
    responses.insert(
        "default".into(),
        json!({
            "description": "The call was refused or failed: the gRPC status as an HTTP \
                status (Google's API conventions), `bridge-error` naming the gateway's \
                reason when it refused.",
            "content": { "application/json": { "schema": error } },
        }),
    );
    operation.insert("responses".into(), Value::Object(responses));
    operation
}

/// The headers a caller declares, as the wire module names them.
#[derive(Debug, Clone, Copy)]
pub struct Declared<'a> {
    /// The purpose header: its values are the purposes permitted.
    pub purpose: &'a str,
    /// The consent header: listed where a purpose needs consent.
    pub consent: &'a str,
    /// The request id, sent and answered.
    pub request_id: &'a str,
    /// The call's deadline (gRPC's `grpc-timeout`).
    pub deadline: &'a str,
    /// The others: name, what it says, longest value.
    pub others: &'a [(&'a str, &'a str, Option<usize>)],
}

/// The parameters of the declared headers for one operation.
fn headers(declared: &Declared<'_>, permits: &Permitted) -> Vec<Value> {
    // An empty purpose is "none": the header is optional anyway.
    let purposes: BTreeSet<&String> = permits
        .purposes
        .iter()
        .chain(&permits.with_consent)
        .filter(|purpose| !purpose.is_empty())
        .collect();
    let mut purpose = json!({ "type": "string" });
    if !purposes.is_empty() {
        purpose["enum"] = json!(purposes);
    }
    let header = |name: &str, description: &str, schema: Value| {
        json!({
            "name": name,
            "in": "header",
            "required": false,
            "description": description,
            "schema": schema,
        })
    };
    let mut headers = vec![
        header(
            declared.purpose,
            "Why the data is needed: a purpose code registered with the gateway.",
            purpose,
        ),
        header(
            declared.request_id,
            "A UUID naming the call; the gateway makes one when absent.",
            json!({ "type": "string", "format": "uuid" }),
        ),
        header(
            declared.deadline,
            "The call's deadline, as gRPC writes it: at most 8 digits and a unit (H, M, S, m, \
             u or n), `5S` for five seconds. Without it, the gateway's longest.",
            json!({ "type": "string", "pattern": "^[0-9]{1,8}[HMSmun]$" }),
        ),
    ];
    for (name, description, longest) in declared.others {
        let mut schema = json!({ "type": "string" });
        if let Some(longest) = longest {
            schema["maxLength"] = json!(longest);
        }
        headers.push(header(name, description, schema));
    }
    if !permits.with_consent.is_empty() {
        headers.push(header(
            declared.consent,
            "The citizen's consent artefact (a compact JWS from MyGov).",
            json!({ "type": "string" }),
        ));
    }
    headers
}

fn error_schema() -> Value {
    json!({
        "type": "object",
        "required": ["code", "status", "message", "request_id"],
        "properties": {
            "code": { "type": "integer", "description": "The gRPC status code." },
            "status": { "type": "string", "description": "Its name, as google.rpc.Code." },
            "message": { "type": "string" },
            "bridge_error": {
                "type": ["string", "null"],
                "description": "Why the gateway refused or failed the call (README, Errors); \
                    null when the provider's own status.",
            },
            "field": {
                "type": ["string", "null"],
                "description": "The request field at fault, for `bad-json`.",
            },
            "request_id": { "type": "string" },
        },
    })
}

/// The field option giving an example value (`options.proto`).
const EXAMPLE_OPTION: &str = "govbridge.options.v1.example";

/// The message schemas an operation refers to, gathered once each.
#[derive(Default)]
struct Schemas {
    done: BTreeMap<String, Value>,
    pending: Vec<MessageDescriptor>,
    /// The example option, when the pool knows it.
    example: Option<prost_reflect::ExtensionDescriptor>,
}

impl Schemas {
    fn of(pool: Option<&prost_reflect::DescriptorPool>) -> Self {
        Self {
            example: pool.and_then(|pool| pool.get_extension_by_name(EXAMPLE_OPTION)),
            ..Self::default()
        }
    }

    /// The field's example, typed as its JSON form: a number for 32-bit
    /// integers and floats, a boolean, else a string.
    fn example(&self, field: &FieldDescriptor) -> Option<Value> {
        let option = self.example.as_ref()?;
        let options = field.options();
        if !options.has_extension(option) {
            return None;
        }
        let text = options.get_extension(option).as_str()?.to_owned();
        let typed = match field.kind() {
            Kind::Bool => text.parse().ok().map(Value::Bool),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 | Kind::Uint32 | Kind::Fixed32 => {
                text.parse::<i64>().ok().map(Value::from)
            }
            Kind::Float | Kind::Double => text.parse::<f64>().ok().map(Value::from),
            _ => None,
        };
        Some(typed.unwrap_or(Value::String(text)))
    }

    /// A request message's example: the examples of its top-level
    /// fields, but `except` (those the path binds); `None` when it has none.
    fn message_example(
        &self,
        message: &MessageDescriptor,
        except: &BTreeSet<&str>,
    ) -> Option<Value> {
        let example: Map<String, Value> = message
            .fields()
            .filter(|field| !except.contains(field.name()))
            .filter_map(|field| Some((field.json_name().to_owned(), self.example(&field)?)))
            .collect();
        (!example.is_empty()).then_some(Value::Object(example))
    }

    /// A reference to `message`'s schema (or the schema of a well-known
    /// type's JSON form).
    fn message(&mut self, message: &MessageDescriptor) -> Value {
        if let Some(known) = well_known(message) {
            return known;
        }
        let name = message.full_name().to_owned();
        if !self.done.contains_key(&name) && !self.pending.iter().any(|m| m.full_name() == name) {
            self.pending.push(message.clone());
        }
        json!({ "$ref": format!("#/components/schemas/{name}") })
    }

    fn field(&mut self, field: &FieldDescriptor) -> Value {
        if field.is_map() {
            let Kind::Message(entry) = field.kind() else {
                return json!({ "type": "object" });
            };
            let value = entry
                .get_field_by_name("value")
                .map(|value| self.single(&value))
                .unwrap_or_else(|| json!({}));
            return json!({ "type": "object", "additionalProperties": value });
        }
        let single = self.single(field);
        if field.is_list() {
            json!({ "type": "array", "items": single })
        } else {
            single
        }
    }

    fn single(&mut self, field: &FieldDescriptor) -> Value {
        match field.kind() {
            Kind::Message(message) => self.message(&message),
            Kind::Enum(enumeration) => {
                let names: Vec<String> =
                    enumeration.values().map(|v| v.name().to_owned()).collect();
                json!({ "type": "string", "enum": names })
            }
            Kind::Bool => json!({ "type": "boolean" }),
            Kind::String => json!({ "type": "string" }),
            Kind::Bytes => json!({ "type": "string", "contentEncoding": "base64" }),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
                json!({ "type": "integer", "format": "int32" })
            }
            Kind::Uint32 | Kind::Fixed32 => {
                json!({ "type": "integer", "minimum": 0, "maximum": u32::MAX })
            }
            // Written as strings; read as strings or numbers.
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
                json!({ "type": ["string", "integer"], "format": "int64", "pattern": "^-?[0-9]+$" })
            }
            Kind::Uint64 | Kind::Fixed64 => {
                json!({ "type": ["string", "integer"], "format": "uint64", "pattern": "^[0-9]+$", "minimum": 0 })
            }
            Kind::Float | Kind::Double => json!({ "type": "number" }),
        }
    }

    fn done(mut self) -> Map<String, Value> {
        while let Some(message) = self.pending.pop() {
            // Placed first: a message that holds itself refers to itself.
            self.done
                .insert(message.full_name().to_owned(), Value::Null);
            let mut properties = Map::new();
            for field in message.fields() {
                let mut schema = self.field(&field);
                if let Value::Object(object) = &mut schema
                    && !object.contains_key("$ref")
                {
                    if let Some(text) = comments(&field.parent_file(), field.path()) {
                        object.insert("description".into(), json!(text));
                    }
                    if let Some(example) = self.example(&field) {
                        object.insert("examples".into(), json!([example]));
                    }
                }
                properties.insert(field.json_name().to_owned(), schema);
            }
            let mut schema = json!({
                "type": "object",
                "properties": properties,
                "additionalProperties": false,
            });
            if let Some(text) = comments(&message.parent_file(), message.path()) {
                schema["description"] = json!(text);
            }
            self.done.insert(message.full_name().to_owned(), schema);
        }
        self.done.into_iter().collect()
    }
}

/// The JSON form of the well-known types the proto3 mapping gives one.
fn well_known(message: &MessageDescriptor) -> Option<Value> {
    let schema = match message.full_name() {
        "google.protobuf.Timestamp" => json!({ "type": "string", "format": "date-time" }),
        "google.protobuf.Duration" => {
            json!({ "type": "string", "pattern": "^-?[0-9]+(\\.[0-9]+)?s$" })
        }
        "google.protobuf.FieldMask" => json!({ "type": "string" }),
        "google.protobuf.Struct" => json!({ "type": "object" }),
        "google.protobuf.Value" | "google.protobuf.Any" => json!({}),
        "google.protobuf.ListValue" => json!({ "type": "array" }),
        "google.protobuf.Empty" => json!({ "type": "object", "additionalProperties": false }),
        "google.protobuf.StringValue" => json!({ "type": "string" }),
        "google.protobuf.BytesValue" => json!({ "type": "string", "contentEncoding": "base64" }),
        "google.protobuf.BoolValue" => json!({ "type": "boolean" }),
        "google.protobuf.Int32Value" | "google.protobuf.UInt32Value" => {
            json!({ "type": "integer" })
        }
        "google.protobuf.Int64Value" | "google.protobuf.UInt64Value" => {
            json!({ "type": ["string", "integer"] })
        }
        "google.protobuf.FloatValue" | "google.protobuf.DoubleValue" => json!({ "type": "number" }),
        _ => return None,
    };
    Some(schema)
}

/// The leading comment of the element at `path` of `file`, when its source
/// information was kept.
fn comments(file: &FileDescriptor, path: &[i32]) -> Option<String> {
    let info = file.file_descriptor_proto().source_code_info.as_ref()?;
    let location = info
        .location
        .iter()
        .find(|location| location.path == path)?;
    let text = location.leading_comments.as_deref()?;
    let text = text
        .lines()
        .map(str::trim)
        .collect::<Vec<_>>()
        .join("\n")
        .trim()
        .to_owned();
    (!text.is_empty()).then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_the_permitted_routes() {
        let routes = Routes::of(crate::catalog::testing::agencies().pool());
        let mut permitted = BTreeMap::new();
        permitted.insert(
            "/govbridge.civilregistry.v1.CivilRegistry/VerifyIdentity".to_owned(),
            Permitted {
                purposes: ["KYC".to_owned()].into(),
                with_consent: BTreeSet::new(),
            },
        );
        let declared = Declared {
            purpose: "x-purpose",
            consent: "x-consent",
            request_id: "x-request-id",
            deadline: "grpc-timeout",
            others: &[("x-reason", "why", Some(256))],
        };
        let document = document(
            &routes,
            &permitted,
            &declared,
            "test",
            Some("https://127.0.0.1:8443"),
        );
        let paths = document["paths"].as_object().expect("paths");
        assert_eq!(
            paths.keys().collect::<Vec<_>>(),
            [
                "/govbridge.civilregistry.v1.CivilRegistry/VerifyIdentity",
                "/v1/persons/{nin}:verify-identity"
            ]
        );
        let operation = &paths["/v1/persons/{nin}:verify-identity"]["post"];
        assert_eq!(operation["operationId"], "CivilRegistry_VerifyIdentity");
        assert!(
            operation["description"]
                .as_str()
                .is_some_and(|d| d.contains("identity"))
        );
        let purpose = operation["parameters"]
            .as_array()
            .and_then(|p| p.iter().find(|p| p["name"] == "x-purpose"))
            .expect("a purpose header");
        assert_eq!(purpose["schema"]["enum"], json!(["KYC"]));
        let deadline = operation["parameters"]
            .as_array()
            .and_then(|p| p.iter().find(|p| p["name"] == "grpc-timeout"))
            .expect("a deadline header");
        assert_eq!(deadline["schema"]["pattern"], "^[0-9]{1,8}[HMSmun]$");
        // Examples from the protos' `example` options, for the path and
        // for the body without what the path binds.
        let nin = operation["parameters"]
            .as_array()
            .and_then(|p| p.iter().find(|p| p["name"] == "nin"))
            .expect("a path parameter");
        assert_eq!(nin["example"], "2002196400009");
        let body = &operation["requestBody"]["content"]["application/json"]["example"];
        assert_eq!(body["firstNames"], "Codou");
        assert!(body.get("nin").is_none(), "{body}");
        let schemas = document["components"]["schemas"]
            .as_object()
            .expect("schemas");
        assert!(schemas.contains_key("govbridge.civilregistry.v1.VerifyIdentityRequest"));
        assert!(schemas.contains_key(ERROR));
        assert!(!schemas.contains_key("govbridge.civilregistry.v1.Person"));
    }
}
