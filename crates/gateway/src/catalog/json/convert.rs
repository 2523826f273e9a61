//! The proto3 JSON mapping of a JSON call's messages, both ways, and the
//! error a caller reads when its JSON does not fit.
//!
//! A request message is put together as JSON first (the body, then the
//! query and the path on top, the path winning), then read once with
//! prost-reflect, so field names (`fiscalYear` or `fiscal_year`), enums by
//! name, 64-bit integers as strings and well-known types follow the
//! standard mapping and every mistake is reported with the field's path.

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;
use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, SerializeOptions};
use serde_json::{Map, Value};

use super::{BodyRule, Matched, field_at};

/// Why a JSON request cannot become its method's request message: a 400
/// naming the field when there is one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct BadRequest {
    /// The field at fault, as a JSON path (`person.firstNames`), when known.
    pub field: Option<String>,
    pub message: String,
}

impl BadRequest {
    fn new(message: impl Into<String>) -> Self {
        Self {
            field: None,
            message: message.into(),
        }
    }

    fn at(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: Some(field.into()),
            message: message.into(),
        }
    }
}

/// The request messages of a JSON call, each with its gRPC prefix, ready
/// to be the body of the gRPC call: one for a unary or server-streaming
/// method, one per line (NDJSON) for a client-streaming one.
pub fn request_messages(
    matched: &Matched<'_>,
    query: Option<&str>,
    body: &[u8],
) -> Result<Bytes, BadRequest> {
    let input = matched.method.input();
    let bound = matched.bound.as_ref().map_err(|field| {
        BadRequest::at(
            field,
            format!("path variable `{field}`: not UTF-8 once percent-decoded"),
        )
    })?;
    let mut framed = BytesMut::new();
    if matched.method.is_client_streaming() {
        // Each non-empty line a message; the path binds every one (the
        // route takes the whole body, so there is no query).
        for (at, line) in body.split(|b| *b == b'\n').enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let message = parse_body(line)
                .and_then(|value| message_of(&input, matched, bound, query, Some(value)))
                .map_err(|mut error| {
                    error.message = format!("line {}: {}", at + 1, error.message);
                    error
                })?;
            frame(&message, &mut framed);
        }
    } else {
        let value = match matched.body {
            BodyRule::Empty if !body.iter().all(u8::is_ascii_whitespace) => {
                return Err(BadRequest::new(
                    "this route takes no body: the request's fields go in the path and the query",
                ));
            }
            BodyRule::Empty => None,
            BodyRule::Whole | BodyRule::Field(_) if body.iter().all(u8::is_ascii_whitespace) => {
                None
            }
            BodyRule::Whole | BodyRule::Field(_) => Some(parse_body(body)?),
        };
        let message = message_of(&input, matched, bound, query, value)?;
        frame(&message, &mut framed);
    }
    Ok(framed.freeze())
}

/// One gRPC length-prefixed message, uncompressed.
fn frame(message: &DynamicMessage, into: &mut BytesMut) {
    let length = message.encoded_len();
    into.reserve(5 + length);
    into.put_u8(0);
    into.put_u32(u32::try_from(length).unwrap_or(u32::MAX));
    // Encoding into a buffer with room cannot fail.
    let _ = message.encode(into);
}

fn parse_body(body: &[u8]) -> Result<Value, BadRequest> {
    serde_json::from_slice(body).map_err(|error| {
        BadRequest::new(format!(
            "the body is not JSON: {error} (line {}, column {})",
            error.line(),
            error.column()
        ))
    })
}

/// The request message: `body` (as the route places it), the query's
/// fields, then the path's (`bound`).
fn message_of(
    input: &MessageDescriptor,
    matched: &Matched<'_>,
    bound: &[(String, String)],
    query: Option<&str>,
    body: Option<Value>,
) -> Result<DynamicMessage, BadRequest> {
    let mut object = match (matched.body, body) {
        (_, None) => Map::new(),
        (BodyRule::Field(field), Some(value)) => {
            let mut object = Map::new();
            object.insert(field.json_name().to_owned(), value);
            object
        }
        (_, Some(Value::Object(object))) => object,
        (_, Some(_)) => {
            return Err(BadRequest::new(format!(
                "the body must be a JSON object: a {}",
                input.full_name()
            )));
        }
    };
    if matches!(matched.body, BodyRule::Whole) {
        // Every field is in the body: a query would be silently lost.
        if let Some(pair) = query_pairs(query.unwrap_or_default()).next() {
            let (name, _) = pair?;
            return Err(BadRequest::at(
                &name,
                format!("query parameter `{name}`: this route takes every field in its body"),
            ));
        }
    } else {
        for pair in query_pairs(query.unwrap_or_default()) {
            let (name, value) = pair?;
            let field = field_at(input, &name)
                .map_err(|_| BadRequest::at(&name, format!("unknown query parameter `{name}`")))?;
            set(&mut object, input, &name, &field, value, true)?;
        }
    }
    for (name, value) in bound {
        let field = field_at(input, name).map_err(|reason| BadRequest::at(name, reason))?;
        set(&mut object, input, name, &field, value.clone(), false)?;
    }
    read_message(input, Value::Object(object))
}

/// Reads a JSON value as a `descriptor` message, naming the field at fault.
pub fn read_message(
    descriptor: &MessageDescriptor,
    value: Value,
) -> Result<DynamicMessage, BadRequest> {
    let mut track = serde_path_to_error::Track::new();
    let read = DynamicMessage::deserialize(
        descriptor.clone(),
        serde_path_to_error::Deserializer::new(value, &mut track),
    );
    read.map_err(|error| {
        let message = error.to_string();
        let path = track.path().to_string();
        let path = (path != "." && !path.is_empty()).then_some(path);
        // An unknown field is reported at its parent: name it.
        let unknown = message
            .strip_prefix("unrecognized field name '")
            .and_then(|rest| rest.strip_suffix('\''));
        match (unknown, path) {
            (Some(name), None) => BadRequest::at(
                name,
                format!("{name}: no such field in {}", descriptor.full_name()),
            ),
            (Some(name), Some(path)) => {
                let field = format!("{path}.{name}");
                BadRequest::at(&field, format!("{field}: no such field"))
            }
            (None, Some(path)) => BadRequest::at(&path, format!("{path}: {message}")),
            (None, None) => BadRequest::new(message),
        }
    })
}

/// Places a path or query value at its field's place in `object`, typed
/// as the field's JSON form wants it.
fn set(
    object: &mut Map<String, Value>,
    input: &MessageDescriptor,
    name: &str,
    field: &FieldDescriptor,
    value: String,
    from_query: bool,
) -> Result<(), BadRequest> {
    let typed = match field.kind() {
        Kind::Bool => match value.as_str() {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => {
                return Err(BadRequest::at(
                    name,
                    format!("{name}: `{value}` is not true or false"),
                ));
            }
        },
        Kind::Message(_) => {
            // A well-known type written as a string (a timestamp, a
            // duration, a wrapper's value), or a JSON object.
            match serde_json::from_str::<Value>(&value) {
                Ok(object @ Value::Object(_)) => object,
                _ => Value::String(value),
            }
        }
        // Numbers, enums (by name or number), strings and bytes (base64)
        // are all read from a JSON string.
        _ => Value::String(value),
    };
    // Walk (and make) the objects down to the field's parent.
    let mut parts: Vec<&str> = name.split('.').collect();
    let last = parts.pop().unwrap_or(name);
    let mut at = object;
    let mut message = input.clone();
    for part in parts {
        let key = message
            .get_field_by_name(part)
            .map(|f| f.json_name().to_owned())
            .unwrap_or_else(|| part.to_owned());
        if let Some(Kind::Message(inner)) = message.get_field_by_name(part).map(|f| f.kind()) {
            message = inner;
        }
        match at.entry(key).or_insert_with(|| Value::Object(Map::new())) {
            Value::Object(inner) => at = inner,
            _ => {
                return Err(BadRequest::at(
                    name,
                    format!("{name}: `{part}` is not an object"),
                ));
            }
        }
    }
    if !from_query {
        // The body may say the field under either name: the path's wins.
        at.remove(last);
        at.remove(field.name());
    }
    let key = field.json_name().to_owned();
    if field.is_list() && from_query {
        match at.entry(key).or_insert_with(|| Value::Array(Vec::new())) {
            Value::Array(values) => values.push(typed),
            _ => return Err(BadRequest::at(name, format!("{name}: given twice"))),
        }
    } else if at.insert(key, typed).is_some() && from_query {
        return Err(BadRequest::at(
            name,
            format!("{name}: given twice in the query"),
        ));
    }
    Ok(())
}

/// The `name=value` pairs of a query, percent-decoded (`+` is a space).
/// A name or value that is not UTF-8 once decoded (`%E9`, Latin-1) is
/// refused, as in a path: replaced, it would reach the backend altered.
fn query_pairs(query: &str) -> impl Iterator<Item = Result<(String, String), BadRequest>> + '_ {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let not_utf8 = || {
                BadRequest::at(
                    name,
                    format!("query parameter `{name}`: not UTF-8 once percent-decoded"),
                )
            };
            let decoded_name = form_decode(name).ok_or_else(not_utf8)?;
            let value = form_decode(value).ok_or_else(not_utf8)?;
            Ok((decoded_name, value))
        })
}

fn form_decode(text: &str) -> Option<String> {
    let spaced = text.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .ok()
        .map(|decoded| decoded.into_owned())
}

/// How answers are written: every field, defaults too (a `false` match is
/// an answer, not an absence), names in lowerCamelCase, 64-bit integers
/// as strings, enums by name.
fn options() -> SerializeOptions {
    SerializeOptions::new().skip_default_fields(false)
}

/// The largest JSON answer written for one message. Every field is
/// written, defaults included, so a small message of many empty entries
/// can print far larger than it is: past this, the answer is refused
/// rather than held.
pub const MAX_ANSWER_JSON: usize = 64 * 1024 * 1024;

/// The most memory one answer may take decoded ([`decoded_size`]), on its
/// way to JSON: the gRPC path relays answers without decoding them, and a
/// few bytes of wire can take a kilobyte decoded (an empty message in a
/// repeated field): a provider's 16 MiB answer could take gigabytes.
pub const MAX_ANSWER_DECODED: usize = 128 * 1024 * 1024;

/// About how much memory `message` takes decoded as an `output`
/// ([`DynamicMessage`]), at most: its bytes, a value for each field and
/// each element of a packed list, a map's node for each message. Read
/// from the wire, without decoding, and no further than past `limit`
/// (then more than it). Where the wire makes no sense, or nests deeper
/// than decoding goes (prost's 100 levels), the estimate stops, and
/// decoding refuses the message.
pub fn decoded_size(output: &MessageDescriptor, message: &[u8], limit: usize) -> usize {
    /// A field's value, with its share of the map that holds it.
    const VALUE: usize = 64;
    /// A message: the map of its fields.
    const MESSAGE: usize = 768;
    /// Deeper, decoding fails anyway.
    const NESTING: usize = 100;
    let mut size = MESSAGE.saturating_add(message.len());
    // The messages being read, innermost last: the fields they may hold
    // (`None`: unknown), and where each ends (`None`: a group).
    let mut open: Vec<(Option<MessageDescriptor>, Option<usize>)> =
        vec![(Some(output.clone()), Some(message.len()))];
    let mut rest = message;
    while size <= limit && open.len() <= NESTING {
        let at = message.len() - rest.len();
        let Some((fields, end)) = open.last().cloned() else {
            break;
        };
        if end.is_some_and(|end| at >= end) {
            open.pop();
            continue;
        }
        let Some((number, wire, after)) = crate::catalog::subject::read_tag(rest) else {
            break;
        };
        let field = fields.as_ref().and_then(|fields| fields.get_field(number));
        let kind = field.as_ref().map(FieldDescriptor::kind);
        size = size.saturating_add(VALUE);
        rest = match wire {
            0 => match crate::catalog::subject::read_varint(after) {
                Some((_, after)) => after,
                None => break,
            },
            1 => after.get(8..).unwrap_or_default(),
            5 => after.get(4..).unwrap_or_default(),
            2 => {
                let Some((length, after)) = crate::catalog::subject::read_varint(after) else {
                    break;
                };
                let length = usize::try_from(length).map_or(after.len(), |n| n.min(after.len()));
                let (inner, after) = after.split_at(length);
                match kind {
                    Some(Kind::Message(inner_fields)) => {
                        size = size.saturating_add(MESSAGE);
                        let inner_end = message.len() - after.len();
                        open.push((Some(inner_fields), Some(inner_end)));
                        // Its fields are read next, in place.
                        message.get(inner_end - inner.len()..).unwrap_or_default()
                    }
                    Some(kind) if field.as_ref().is_some_and(FieldDescriptor::is_list) => {
                        let elements = match kind {
                            Kind::Double | Kind::Fixed64 | Kind::Sfixed64 => inner.len() / 8,
                            Kind::Float | Kind::Fixed32 | Kind::Sfixed32 => inner.len() / 4,
                            Kind::String | Kind::Bytes => 0,
                            _ => inner.iter().filter(|byte| **byte < 0x80).count(),
                        };
                        size = size.saturating_add(elements.saturating_mul(VALUE));
                        after
                    }
                    // Strings, bytes and unknown fields: their bytes.
                    _ => after,
                }
            }
            3 => {
                size = size.saturating_add(MESSAGE);
                let inner = match kind {
                    Some(Kind::Message(inner)) => Some(inner),
                    _ => None,
                };
                open.push((inner, None));
                after
            }
            4 => {
                open.pop();
                after
            }
            _ => break,
        };
    }
    size
}

/// A response message (without its gRPC prefix) as JSON: the whole
/// message, or the route's `response_body` field; at most
/// [`MAX_ANSWER_JSON`] bytes of it, and [`MAX_ANSWER_DECODED`] decoded.
pub fn response_json(
    output: &MessageDescriptor,
    message: &[u8],
    response_body: Option<&FieldDescriptor>,
) -> Result<Vec<u8>, String> {
    let decoded_size = decoded_size(output, message, MAX_ANSWER_DECODED);
    if decoded_size > MAX_ANSWER_DECODED {
        return Err(format!(
            "the provider's answer of {} bytes would take about {decoded_size} bytes decoded, \
             more than the {MAX_ANSWER_DECODED} the gateway converts to JSON: call the method \
             over gRPC",
            message.len()
        ));
    }
    let decoded = DynamicMessage::decode(output.clone(), message).map_err(|error| {
        format!(
            "the provider's answer is not a {}: {error}",
            output.full_name()
        )
    })?;
    let too_large =
        || format!("the provider's answer is larger than {MAX_ANSWER_JSON} bytes as JSON");
    let mut serializer = serde_json::Serializer::new(Capped(Vec::new()));
    match response_body {
        None => decoded.serialize_with_options(&mut serializer, &options()),
        Some(field) => {
            // A field is written through a message holding it alone, whose
            // JSON (bounded) is then read for that field.
            let mut alone = DynamicMessage::new(output.clone());
            alone.set_field(field, decoded.get_field(field).into_owned());
            alone.serialize_with_options(&mut serializer, &options())
        }
    }
    .map_err(|error| {
        if error.is_io() {
            too_large()
        } else {
            error.to_string()
        }
    })?;
    let written = serializer.into_inner().0;
    let Some(field) = response_body else {
        return Ok(written);
    };
    // Read as raw text: no tree of the field's values is built.
    // Keys owned: a `json_name` may hold a character JSON escapes.
    let whole: std::collections::HashMap<String, &serde_json::value::RawValue> =
        serde_json::from_slice(&written).map_err(|error| error.to_string())?;
    Ok(whole
        .get(field.json_name())
        .map_or_else(|| b"null".to_vec(), |value| value.get().as_bytes().to_vec()))
}

/// A buffer that refuses to grow past [`MAX_ANSWER_JSON`].
struct Capped(Vec<u8>);

impl std::io::Write for Capped {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if self.0.len() + bytes.len() > MAX_ANSWER_JSON {
            return Err(std::io::Error::other("over the JSON answer limit"));
        }
        self.0.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::json::Routes;
    use http::Method;

    fn routes() -> Routes {
        Routes::of(crate::catalog::testing::agencies().pool())
    }

    fn decode(framed: &[u8], descriptor: &MessageDescriptor) -> DynamicMessage {
        assert_eq!(framed[0], 0);
        let length = u32::from_be_bytes([framed[1], framed[2], framed[3], framed[4]]) as usize;
        assert_eq!(framed.len(), 5 + length);
        DynamicMessage::decode(descriptor.clone(), &framed[5..]).expect("a message")
    }

    /// An answer whose wire takes hundreds of times its size decoded (an
    /// empty director in two bytes, millions of times) is refused before
    /// it is decoded; one of real directors is estimated above what it
    /// takes, and converted.
    #[test]
    fn an_answer_too_large_decoded_is_refused_before_decoding() {
        let pool = crate::catalog::testing::agencies().pool();
        let output = pool
            .get_message_by_name("govbridge.business.v1.ListDirectorsResponse")
            .unwrap();
        let empty_directors = [0x12_u8, 0x00].repeat(8 * 1024 * 1024);
        let estimate = decoded_size(&output, &empty_directors, usize::MAX);
        assert!(estimate > 6_000_000_000, "{estimate}");
        // It stops past its limit.
        let stopped = decoded_size(&output, &empty_directors, 20 << 20);
        assert!(
            stopped > 20 << 20 && stopped < (20 << 20) + 1000,
            "{stopped}"
        );
        // Groups opened without end, deeper than decoding goes: the
        // estimate stops, and decoding refuses them.
        let deep = vec![0x0b_u8; 16 * 1024 * 1024];
        assert!(decoded_size(&output, &deep, usize::MAX) < deep.len() + 200_000);
        assert!(response_json(&output, &deep, None).is_err());
        let refused = response_json(&output, &empty_directors, None).unwrap_err();
        assert!(refused.contains("over gRPC"), "{refused}");

        let mut directors = DynamicMessage::new(output.clone());
        let director = output.get_field_by_name("directors").unwrap();
        let Kind::Message(one) = director.kind() else {
            panic!("directors are messages");
        };
        let mut list = Vec::new();
        for n in 0..1000 {
            let mut entry = DynamicMessage::new(one.clone());
            entry.set_field_by_name("nin", prost_reflect::Value::String(format!("{n:013}")));
            entry.set_field_by_name("last_name", prost_reflect::Value::String("Diop".into()));
            list.push(prost_reflect::Value::Message(entry));
        }
        directors.set_field(&director, prost_reflect::Value::List(list));
        let wire = directors.encode_to_vec();
        let estimate = decoded_size(&output, &wire, usize::MAX);
        assert!(
            estimate > 1000 * 768 && estimate < 4 * 1024 * 1024,
            "{estimate}"
        );
        response_json(&output, &wire, None).unwrap();
    }

    #[test]
    fn path_and_query_make_the_request() {
        let routes = routes();
        let matched = routes
            .find(
                &Method::GET,
                "/v1/persons/1199019870001/declared-income/2024",
            )
            .expect("a route");
        assert_eq!(matched.method.name(), "GetDeclaredIncome");
        let framed = request_messages(&matched, None, b"").expect("a request");
        let request = decode(&framed, &matched.method.input());
        assert_eq!(
            request
                .get_field_by_name("nin")
                .and_then(|v| v.as_str().map(str::to_owned)),
            Some("1199019870001".into())
        );
        assert_eq!(
            request
                .get_field_by_name("fiscal_year")
                .and_then(|v| v.as_u32()),
            Some(2024)
        );

        let matched = routes
            .find(&Method::GET, "/v1/life-events")
            .expect("a route");
        let framed = request_messages(&matched, Some("afterSequence=7&max_events=2"), b"")
            .expect("a request");
        let request = decode(&framed, &matched.method.input());
        assert_eq!(
            request
                .get_field_by_name("after_sequence")
                .and_then(|v| v.as_u64()),
            Some(7)
        );
        // Bytes that are not UTF-8 once decoded are refused, never
        // replaced on their way to the backend.
        for query in ["afterSequence=%E9", "after%E9=1"] {
            let refused = request_messages(&matched, Some(query), b"").unwrap_err();
            assert!(
                refused.message.contains("not UTF-8"),
                "{query}: {refused:?}"
            );
        }
    }

    #[test]
    fn mistakes_name_their_field() {
        let routes = routes();
        let verify = routes
            .find(&Method::POST, "/v1/accounts:verify-holder")
            .expect("a route");
        let unknown = request_messages(&verify, None, br#"{"iban": "x", "colour": 1}"#)
            .expect_err("an unknown field");
        assert_eq!(unknown.field.as_deref(), Some("colour"), "{unknown:?}");
        let wrong = request_messages(&verify, None, br#"{"iban": 7}"#).expect_err("a wrong type");
        assert_eq!(wrong.field.as_deref(), Some("iban"), "{wrong:?}");
        let broken = request_messages(&verify, None, b"{\"iban\": ").expect_err("broken JSON");
        assert!(broken.message.contains("line 1"), "{broken:?}");

        let income = routes
            .find(&Method::GET, "/v1/persons/1/declared-income/last-year")
            .expect("a route");
        let number = request_messages(&income, None, b"").expect_err("not a number");
        assert_eq!(number.field.as_deref(), Some("fiscalYear"), "{number:?}");
        let life = routes
            .find(&Method::GET, "/v1/life-events")
            .expect("a route");
        let query = request_messages(&life, Some("colour=blue"), b"").expect_err("unknown");
        assert_eq!(query.field.as_deref(), Some("colour"));
        let body = request_messages(&life, None, b"{}").expect_err("no body here");
        assert!(body.message.contains("takes no body"));
    }

    #[test]
    fn answers_print_every_field() {
        let routes = routes();
        let verify = routes
            .find(
                &Method::POST,
                "/govbridge.civilregistry.v1.CivilRegistry/VerifyIdentity",
            )
            .expect("the default route");
        let json = response_json(&verify.method.output(), b"", None).expect("JSON");
        let value: Value = serde_json::from_slice(&json).expect("JSON");
        assert!(value.as_object().is_some_and(|o| !o.is_empty()), "{value}");
    }

    /// Two bytes of protobuf per empty director, some hundred of JSON
    /// each: an answer a few megabytes long would print past the limit.
    #[test]
    fn an_answer_too_large_as_json_is_refused() {
        let routes = routes();
        let directors = routes
            .find(
                &Method::POST,
                "/govbridge.business.v1.BusinessRegistry/ListDirectors",
            )
            .expect("the default route");
        let output = directors.method.output();
        let field = output.get_field_by_name("directors").expect("directors");
        let empty = [0x12, 0x00];
        let few = empty.repeat(10);
        assert!(response_json(&output, &few, None).is_ok());
        assert!(response_json(&output, &few, Some(&field)).is_ok());
        // Millions of empty directors: too large decoded, refused first.
        let many = empty.repeat(MAX_ANSWER_JSON / 40);
        for response_body in [None, Some(&field)] {
            let refused = response_json(&output, &many, response_body).expect_err("too large");
            assert!(refused.contains("decoded"), "{refused}");
        }
        // One director whose 12 MiB name is control characters, each
        // written as a six-byte escape: small decoded, too large as JSON.
        let name = vec![0x01_u8; 12 * 1024 * 1024];
        let mut director = vec![0x0a];
        prost::encoding::encode_varint(name.len() as u64, &mut director);
        director.extend_from_slice(&name);
        let mut escaped = vec![0x12];
        prost::encoding::encode_varint(director.len() as u64, &mut escaped);
        escaped.extend_from_slice(&director);
        for response_body in [None, Some(&field)] {
            let refused = response_json(&output, &escaped, response_body).expect_err("too large");
            assert!(refused.contains("larger than"), "{refused}");
        }
    }
}
