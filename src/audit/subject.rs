//! The data subject of a call: the person, by NIN, whose data it concerns.
//!
//! Protos mark the request field that names the subject with the
//! `govbridge.options.v1.data_subject` field option. [`SubjectFields`] finds
//! the marked field of each method's request once, with prost-reflect, at
//! start-up; on the request path [`SubjectReader`] only walks the top level of
//! the first request message in the protobuf wire format as the bytes pass by.
//!
//! This module must never decode requests with reflection on the request
//! path, hold more than the first message (and at most [`MAX_MESSAGE`] of
//! it), or fail a call: a subject it cannot read is simply `None`.

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use prost_reflect::{DescriptorPool, FieldDescriptor, Kind, MessageDescriptor};

/// The field option that marks the data subject.
const DATA_SUBJECT_OPTION: &str = "govbridge.options.v1.data_subject";

/// The largest first message read; the subject of a bigger one is unknown.
pub const MAX_MESSAGE: usize = 64 * 1024;

/// The longest subject kept, in bytes; a NIN is 13.
pub const MAX_SUBJECT: usize = 64;

/// gRPC message prefix: compressed flag, then big-endian length.
const PREFIX: usize = 5;

/// Why a descriptor set's data subject markings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SubjectError {
    /// The bytes are not a valid encoded `FileDescriptorSet`.
    #[error("the descriptor set is invalid: {0}")]
    Descriptors(#[from] prost_reflect::DescriptorError),
    /// A marked field that is not a singular `string`.
    #[error(
        "{field} is marked as the data subject but is of type {kind}; it must be a singular string"
    )]
    NotSingularString {
        /// Full name of the field, message included.
        field: String,
        /// What the field is instead.
        kind: String,
    },
    /// A marked field in a message that is no method's request, such as a
    /// message nested in a request.
    #[error(
        "{field} is marked as the data subject but {message} is the request of no method; \
         mark a top-level field of the request message"
    )]
    NotInRequest {
        /// Full name of the field.
        field: String,
        /// Full name of the message declaring it.
        message: String,
    },
    /// Two marked fields in one message.
    #[error("{message} marks several fields as the data subject: {first} and {second}")]
    SeveralFields {
        /// Full name of the message.
        message: String,
        /// Name of the first marked field.
        first: String,
        /// Name of another marked field.
        second: String,
    },
}

/// Which top-level field of each method's request message names the data
/// subject.
#[derive(Debug, Default, Clone)]
pub struct SubjectFields {
    /// `/package.Service/Method` -> field number.
    by_method: HashMap<String, u32>,
}

impl SubjectFields {
    /// Reads the markings of an encoded `FileDescriptorSet`, such as
    /// [`crate::proto::FILE_DESCRIPTOR_SET`].
    pub fn from_descriptors(bytes: &[u8]) -> Result<Self, SubjectError> {
        let pool = DescriptorPool::decode(bytes)?;
        // A set that does not define the option marks nothing.
        let Some(option) = pool.get_extension_by_name(DATA_SUBJECT_OPTION) else {
            return Ok(Self::default());
        };

        let mut marked: HashMap<String, (MessageDescriptor, FieldDescriptor)> = HashMap::new();
        for message in pool.all_messages() {
            for field in message.fields() {
                let options = field.options();
                if !options.has_extension(&option)
                    || options.get_extension(&option).as_bool() != Some(true)
                {
                    continue;
                }
                check_subject_kind(&field)?;
                if let Some((_, first)) = marked.get(message.full_name()) {
                    return Err(SubjectError::SeveralFields {
                        message: message.full_name().to_owned(),
                        first: first.name().to_owned(),
                        second: field.name().to_owned(),
                    });
                }
                marked.insert(message.full_name().to_owned(), (message.clone(), field));
            }
        }

        let mut by_method = HashMap::new();
        let mut requests = HashSet::new();
        for service in pool.services() {
            for method in service.methods() {
                let input = method.input();
                if let Some((_, field)) = marked.get(input.full_name()) {
                    by_method.insert(
                        format!("/{}/{}", service.full_name(), method.name()),
                        field.number(),
                    );
                    requests.insert(input.full_name().to_owned());
                }
            }
        }
        // Report in descriptor order, so the same set always names the same
        // field.
        for candidate in pool.all_messages() {
            if let Some((message, field)) = marked.get(candidate.full_name())
                && !requests.contains(message.full_name())
            {
                return Err(SubjectError::NotInRequest {
                    field: field.full_name().to_owned(),
                    message: message.full_name().to_owned(),
                });
            }
        }
        Ok(Self { by_method })
    }

    /// The markings of the compiled-in protos, read once.
    ///
    /// A unit test asserts that they are valid; were they not, no subject is
    /// read and the error is logged, rather than the gateway failing.
    pub fn compiled() -> &'static SubjectFields {
        static COMPILED: LazyLock<SubjectFields> = LazyLock::new(|| {
            SubjectFields::from_descriptors(crate::proto::FILE_DESCRIPTOR_SET).unwrap_or_else(
                |error| {
                    tracing::error!(%error, "data subject markings ignored");
                    SubjectFields::default()
                },
            )
        });
        &COMPILED
    }

    /// The number of the field naming the data subject in the request of
    /// `method_path` (`/package.Service/Method`), if it has one.
    pub fn field(&self, method_path: &str) -> Option<u32> {
        self.by_method.get(method_path).copied()
    }
}

/// Rejects a marked field whose value could not be a NIN read in one piece.
fn check_subject_kind(field: &FieldDescriptor) -> Result<(), SubjectError> {
    if field.kind() == Kind::String && !field.is_list() {
        return Ok(());
    }
    // Kind's Debug is the proto type name: `int64`, `pkg.Message`.
    let kind = if field.is_map() {
        "map".to_owned()
    } else if field.is_list() {
        format!("repeated {:?}", field.kind())
    } else {
        format!("{:?}", field.kind())
    };
    Err(SubjectError::NotSingularString {
        field: field.full_name().to_owned(),
        kind,
    })
}

/// Reads the subject out of the first gRPC message of a request stream as
/// data frames pass by.
#[derive(Debug)]
pub struct SubjectReader {
    field: u32,
    progress: Progress,
}

#[derive(Debug)]
enum Progress {
    /// Collecting the message prefix, which frames may split.
    Prefix { bytes: [u8; PREFIX], filled: usize },
    /// Collecting a message split across frames.
    Message { buffer: Vec<u8>, length: usize },
    /// Finished, with or without a subject; later bytes are ignored.
    Done(Option<Subject>),
}

/// A subject kept inline, so that the message buffer can be dropped.
#[derive(Debug, Clone, Copy)]
struct Subject {
    bytes: [u8; MAX_SUBJECT],
    length: usize,
}

impl Subject {
    fn new(subject: &str) -> Option<Self> {
        let mut bytes = [0; MAX_SUBJECT];
        bytes
            .get_mut(..subject.len())?
            .copy_from_slice(subject.as_bytes());
        Some(Self {
            bytes,
            length: subject.len(),
        })
    }

    fn as_str(&self) -> Option<&str> {
        std::str::from_utf8(self.bytes.get(..self.length)?).ok()
    }
}

impl SubjectReader {
    /// A reader for the subject in field number `field`.
    pub fn new(field: u32) -> Self {
        Self {
            field,
            progress: Progress::Prefix {
                bytes: [0; PREFIX],
                filled: 0,
            },
        }
    }

    /// Feeds the next DATA frame's bytes. Frames may split the gRPC framing
    /// (a compressed flag, a 4-byte big-endian length, the message)
    /// anywhere. Gives up, with no subject, on a compressed or an oversized
    /// first message.
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match &mut self.progress {
                Progress::Done(_) => return,
                Progress::Prefix { bytes, filled } => {
                    let take = (PREFIX - *filled).min(data.len());
                    let (head, rest) = data.split_at(take);
                    if let Some(slot) = bytes.get_mut(*filled..*filled + take) {
                        slot.copy_from_slice(head);
                    }
                    *filled += take;
                    data = rest;
                    if *filled < PREFIX {
                        return;
                    }
                    let [compressed, length @ ..] = *bytes;
                    let length = u32::from_be_bytes(length) as usize;
                    if compressed != 0 || length > MAX_MESSAGE {
                        self.finish(None);
                    } else if let Some(message) = data.get(..length) {
                        // The whole message is in this frame: no copy.
                        let subject = subject_of(message, self.field).and_then(Subject::new);
                        self.finish(subject);
                    } else {
                        self.progress = Progress::Message {
                            buffer: Vec::with_capacity(length),
                            length,
                        };
                    }
                }
                Progress::Message { buffer, length } => {
                    let take = (*length - buffer.len()).min(data.len());
                    let (head, rest) = data.split_at(take);
                    buffer.extend_from_slice(head);
                    data = rest;
                    if buffer.len() == *length {
                        let subject = subject_of(buffer, self.field).and_then(Subject::new);
                        self.finish(subject);
                    }
                }
            }
        }
    }

    fn finish(&mut self, subject: Option<Subject>) {
        self.progress = Progress::Done(subject);
    }

    /// The subject, once the first message is complete and names one.
    pub fn subject(&self) -> Option<&str> {
        match &self.progress {
            Progress::Done(Some(subject)) => subject.as_str(),
            _ => None,
        }
    }

    /// Whether the first message has been read or given up on.
    pub fn is_done(&self) -> bool {
        matches!(self.progress, Progress::Done(_))
    }
}

/// The value of string field `field` at the top level of an encoded
/// protobuf message: the last occurrence, as protobuf decoders read it, if
/// it is non-empty, valid UTF-8 and at most [`MAX_SUBJECT`] bytes.
///
/// Only the top level is walked, without allocating. Unknown groups are
/// skipped as protobuf decoders skip them (so that padding a request with
/// one cannot hide its subject); a field `field` of another wire type and
/// malformed input give `None`.
pub fn subject_of(message: &[u8], field: u32) -> Option<&str> {
    let mut rest = message;
    let mut found = None;
    while !rest.is_empty() {
        let (tag, after) = read_varint(rest)?;
        let number = u32::try_from(tag >> 3).ok()?;
        if number == 0 {
            return None;
        }
        rest = match tag & 0b111 {
            0 if number != field => read_varint(after)?.1,
            1 if number != field => after.get(8..)?,
            5 if number != field => after.get(4..)?,
            3 if number != field => skip_group(after, number, 0)?,
            2 => {
                let (length, after) = read_varint(after)?;
                let length = usize::try_from(length).ok()?;
                let value = after.get(..length)?;
                if number == field {
                    found = Some(value);
                }
                after.get(length..)?
            }
            // A stray group end, unknown wire types, or the subject's
            // number with a wire type a string never has.
            _ => return None,
        };
    }
    let value = found.filter(|value| !value.is_empty() && value.len() <= MAX_SUBJECT)?;
    std::str::from_utf8(value).ok()
}

/// Groups nested deeper are malformed as far as the gateway is concerned.
const MAX_GROUP_DEPTH: u32 = 16;

/// What follows the end of group `number`, whose start tag was just read.
fn skip_group(mut rest: &[u8], number: u32, depth: u32) -> Option<&[u8]> {
    if depth >= MAX_GROUP_DEPTH {
        return None;
    }
    loop {
        let (tag, after) = read_varint(rest)?;
        let inner = u32::try_from(tag >> 3).ok()?;
        rest = match tag & 0b111 {
            0 => read_varint(after)?.1,
            1 => after.get(8..)?,
            5 => after.get(4..)?,
            2 => {
                let (length, after) = read_varint(after)?;
                after.get(usize::try_from(length).ok()?..)?
            }
            3 => skip_group(after, inner, depth + 1)?,
            4 if inner == number => return Some(after),
            _ => return None,
        };
    }
}

/// A base-128 varint and what follows it.
fn read_varint(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let mut value = 0;
    for (index, &byte) in bytes.iter().enumerate().take(10) {
        // The tenth byte carries the 64th bit only.
        if index == 9 && byte > 1 {
            return None;
        }
        value |= u64::from(byte & 0x7f) << (7 * index);
        if byte & 0x80 == 0 {
            return Some((value, bytes.get(index + 1..)?));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use prost_reflect::{DynamicMessage, Value};

    use super::*;
    use crate::proto::FILE_DESCRIPTOR_SET;
    use crate::proto::civilregistry::v1::VerifyIdentityRequest;
    use crate::proto::tax::v1::{GetTaxClearanceRequest, get_tax_clearance_request::Taxpayer};

    const NIN: &str = "1001199012345";

    fn framed(message: &[u8]) -> Vec<u8> {
        let mut frame = vec![0];
        frame.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
        frame.extend_from_slice(message);
        frame
    }

    fn verify_identity() -> Vec<u8> {
        VerifyIdentityRequest {
            nin: NIN.to_owned(),
            first_names: "Mame Diarra".to_owned(),
            last_name: "Ndiaye".to_owned(),
            date_of_birth: "1990-03-14".to_owned(),
        }
        .encode_to_vec()
    }

    fn read(frames: &[&[u8]]) -> SubjectReader {
        let mut reader = SubjectReader::new(1);
        for frame in frames {
            reader.feed(frame);
        }
        reader
    }

    #[test]
    fn compiled_markings_are_valid() {
        SubjectFields::from_descriptors(FILE_DESCRIPTOR_SET).unwrap();
    }

    #[test]
    fn compiled_markings_name_the_nin_fields() {
        let fields = SubjectFields::compiled();
        for (path, expected) in [
            (
                "/govbridge.civilregistry.v1.CivilRegistry/GetPerson",
                Some(1),
            ),
            (
                "/govbridge.civilregistry.v1.CivilRegistry/VerifyIdentity",
                Some(1),
            ),
            (
                "/govbridge.civilregistry.v1.CivilRegistry/WatchLifeEvents",
                None,
            ),
            ("/govbridge.tax.v1.TaxAuthority/GetTaxClearance", Some(1)),
            ("/govbridge.tax.v1.TaxAuthority/GetDeclaredIncome", Some(1)),
            ("/govbridge.tax.v1.TaxAuthority/SubmitWithholdings", None),
            (
                "/govbridge.bank.v1.AccountVerification/VerifyAccountHolder",
                Some(2),
            ),
            (
                "/govbridge.bank.v1.AccountVerification/VerifyAccountHolders",
                None,
            ),
            ("/govbridge.business.v1.BusinessRegistry/GetCompany", None),
            (
                "/govbridge.business.v1.BusinessRegistry/ListDirectors",
                None,
            ),
            ("/govbridge.directory.v1.Directory/ListMembers", None),
            ("/no.Such/Method", None),
        ] {
            assert_eq!(fields.field(path), expected, "{path}");
        }
    }

    #[test]
    fn reads_a_message_in_one_frame() {
        let frame = framed(&verify_identity());
        let reader = read(&[&frame]);
        assert!(reader.is_done());
        assert_eq!(reader.subject(), Some(NIN));
    }

    #[test]
    fn reads_a_message_in_one_byte_frames() {
        let frame = framed(&verify_identity());
        let mut reader = SubjectReader::new(1);
        for byte in frame.chunks(1) {
            assert!(!reader.is_done());
            assert_eq!(reader.subject(), None);
            reader.feed(byte);
        }
        assert!(reader.is_done());
        assert_eq!(reader.subject(), Some(NIN));
    }

    #[test]
    fn reads_a_message_with_a_split_prefix() {
        let frame = framed(&verify_identity());
        for split in 1..PREFIX {
            let (head, tail) = frame.split_at(split);
            assert_eq!(read(&[head, tail]).subject(), Some(NIN), "split at {split}");
        }
        let (head, tail) = frame.split_at(PREFIX + 3);
        assert_eq!(read(&[head, tail]).subject(), Some(NIN));
    }

    #[test]
    fn reads_only_the_first_message() {
        let mut stream = framed(&verify_identity());
        let other = VerifyIdentityRequest {
            nin: "2001199054321".to_owned(),
            ..Default::default()
        };
        stream.extend_from_slice(&framed(&other.encode_to_vec()));
        let reader = read(&[&stream]);
        assert_eq!(reader.subject(), Some(NIN));
        let (head, tail) = stream.split_at(stream.len() - 4);
        assert_eq!(read(&[head, tail]).subject(), Some(NIN));
    }

    #[test]
    fn reads_a_subject_in_a_oneof() {
        let request = |taxpayer| GetTaxClearanceRequest {
            taxpayer: Some(taxpayer),
        };
        let person = framed(&request(Taxpayer::SubjectNin(NIN.to_owned())).encode_to_vec());
        assert_eq!(read(&[&person]).subject(), Some(NIN));
        let company = framed(&request(Taxpayer::Ninea("00483727G3".to_owned())).encode_to_vec());
        let reader = read(&[&company]);
        assert!(reader.is_done());
        assert_eq!(reader.subject(), None);
    }

    #[test]
    fn the_last_occurrence_wins() {
        let first = VerifyIdentityRequest {
            nin: "2001199054321".to_owned(),
            ..Default::default()
        };
        let mut message = first.encode_to_vec();
        message.extend_from_slice(&verify_identity());
        assert_eq!(subject_of(&message, 1), Some(NIN));
    }

    #[test]
    fn skips_every_scalar_wire_type() {
        // 2: varint 300, 3: fixed64, 4: fixed32, then 1: the subject.
        let mut message = vec![0x10, 0xac, 0x02, 0x19];
        message.extend_from_slice(&[7; 8]);
        message.push(0x25);
        message.extend_from_slice(&[7; 4]);
        message.extend_from_slice(&[0x0a, 13]);
        message.extend_from_slice(NIN.as_bytes());
        assert_eq!(subject_of(&message, 1), Some(NIN));
    }

    /// An unknown group (field 100, as another client's schema might
    /// carry) is skipped as decoders skip it: it cannot hide the subject.
    #[test]
    fn unknown_groups_are_skipped() {
        let mut message = vec![0xa3, 0x06, 0x08, 0x01, 0xab, 0x06, 0xac, 0x06, 0xa4, 0x06];
        message.extend_from_slice(&verify_identity());
        message.extend_from_slice(&[0xa3, 0x06, 0xa4, 0x06]);
        assert_eq!(subject_of(&message, 1), Some(NIN));
        // Unbalanced, mismatched or too deeply nested groups are malformed.
        assert_eq!(subject_of(&[0xa3, 0x06, 0x08, 0x01], 1), None);
        assert_eq!(subject_of(&[0xa3, 0x06, 0xac, 0x06], 1), None);
        let deep: Vec<u8> = std::iter::repeat_n([0xa3, 0x06], 40).flatten().collect();
        assert_eq!(subject_of(&deep, 1), None);
    }

    #[test]
    fn an_absent_or_empty_subject_is_none() {
        let empty = framed(&[]);
        let reader = read(&[&empty]);
        assert!(reader.is_done());
        assert_eq!(reader.subject(), None);
        let unnamed = VerifyIdentityRequest {
            last_name: "Ndiaye".to_owned(),
            ..Default::default()
        };
        assert_eq!(subject_of(&unnamed.encode_to_vec(), 1), None);
        assert_eq!(subject_of(&[0x0a, 0], 1), None);
    }

    #[test]
    fn gives_up_on_an_oversized_message() {
        let request = VerifyIdentityRequest {
            nin: NIN.to_owned(),
            first_names: "x".repeat(MAX_MESSAGE),
            ..Default::default()
        };
        let frame = framed(&request.encode_to_vec());
        let reader = read(&[&frame]);
        assert!(reader.is_done());
        assert_eq!(reader.subject(), None);
        // Decided from the prefix alone, before any of the message arrives.
        let reader = read(&[&frame[..PREFIX]]);
        assert!(reader.is_done());
        assert_eq!(reader.subject(), None);
        let reader = read(&[&[0, 0xff, 0xff, 0xff, 0xff]]);
        assert!(reader.is_done());
    }

    #[test]
    fn gives_up_on_a_compressed_message() {
        let mut frame = framed(&verify_identity());
        frame[0] = 1;
        let reader = read(&[&frame]);
        assert!(reader.is_done());
        assert_eq!(reader.subject(), None);
    }

    #[test]
    fn gives_up_on_an_oversized_subject_or_invalid_utf8() {
        let long = VerifyIdentityRequest {
            nin: "1".repeat(MAX_SUBJECT + 1),
            ..Default::default()
        };
        assert_eq!(subject_of(&long.encode_to_vec(), 1), None);
        let longest = "1".repeat(MAX_SUBJECT);
        let mut message = vec![0x0a, 64];
        message.extend_from_slice(longest.as_bytes());
        assert_eq!(subject_of(&message, 1), Some(longest.as_str()));
        assert_eq!(subject_of(&[0x0a, 2, 0xc3, 0x28], 1), None);
    }

    #[test]
    fn gives_up_on_malformed_messages() {
        let valid = verify_identity();
        let mut truncated = valid.clone();
        truncated.pop();
        let cases: &[&[u8]] = &[
            &truncated,
            // Tag varint cut short.
            &[0x80],
            // Field number 0.
            &[0x02, 0],
            // Length beyond the message.
            &[0x0a, 20, b'1'],
            // A group that never ends.
            &[0x13, 0x0a, 1, b'1'],
            // Wire types 6 and 7.
            &[0x16],
            &[0x17],
            // The subject's number as a varint.
            &[0x08, 1],
            // An eleven-byte varint.
            &[
                0x10, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
            ],
            // A tag beyond u32 field numbers.
            &[0x80, 0x80, 0x80, 0x80, 0x80, 0x01],
            // Fixed64 cut short.
            &[0x19, 1, 2, 3],
        ];
        for case in cases {
            assert_eq!(subject_of(case, 1), None, "{case:?}");
            let reader = read(&[&framed(case)]);
            assert!(reader.is_done());
            assert_eq!(reader.subject(), None, "{case:?}");
        }
    }

    #[test]
    fn feeding_after_done_is_a_no_op() {
        let frame = framed(&verify_identity());
        let mut reader = read(&[&frame]);
        reader.feed(&framed(&[0x0a, 1, b'9']));
        reader.feed(&[0xff; 64]);
        assert_eq!(reader.subject(), Some(NIN));
    }

    /// The compiled-in set, edited as a dynamic message so that extension
    /// options survive.
    fn edited_set(edit: impl FnOnce(&mut DynamicMessage)) -> Vec<u8> {
        let pool = DescriptorPool::decode(FILE_DESCRIPTOR_SET).unwrap();
        let set = pool
            .get_message_by_name("google.protobuf.FileDescriptorSet")
            .unwrap();
        let mut set = DynamicMessage::decode(set, FILE_DESCRIPTOR_SET).unwrap();
        edit(&mut set);
        set.encode_to_vec()
    }

    fn messages(value: &mut Value) -> impl Iterator<Item = &mut DynamicMessage> {
        value
            .as_list_mut()
            .unwrap()
            .iter_mut()
            .map(|item| item.as_message_mut().unwrap())
    }

    fn named<'a>(
        mut items: impl Iterator<Item = &'a mut DynamicMessage>,
        key: &str,
        name: &str,
    ) -> &'a mut DynamicMessage {
        items
            .find(|item| item.get_field_by_name(key).unwrap().as_str() == Some(name))
            .unwrap()
    }

    /// The field descriptor proto of `message.field` in `file`.
    fn field_proto<'a>(
        set: &'a mut DynamicMessage,
        file: &str,
        message: &str,
        field: &str,
    ) -> &'a mut DynamicMessage {
        let file = named(
            messages(set.get_field_by_name_mut("file").unwrap()),
            "name",
            file,
        );
        let message = named(
            messages(file.get_field_by_name_mut("message_type").unwrap()),
            "name",
            message,
        );
        named(
            messages(message.get_field_by_name_mut("field").unwrap()),
            "name",
            field,
        )
    }

    const CIVIL_REGISTRY: &str = "govbridge/civilregistry/v1/civil_registry.proto";

    /// The options of `message.field` in the civil registry proto.
    fn options_of(set: &mut DynamicMessage, message: &str, field: &str) -> Value {
        field_proto(set, CIVIL_REGISTRY, message, field)
            .get_field_by_name("options")
            .unwrap()
            .into_owned()
    }

    #[test]
    fn the_edited_set_is_unchanged_without_edits() {
        let fields = SubjectFields::from_descriptors(&edited_set(|_| {})).unwrap();
        assert_eq!(
            fields.field("/govbridge.civilregistry.v1.CivilRegistry/GetPerson"),
            Some(1)
        );
    }

    #[test]
    fn rejects_a_marked_field_that_is_not_a_string() {
        // TYPE_INT64
        let set = edited_set(|set| {
            field_proto(set, CIVIL_REGISTRY, "GetPersonRequest", "nin")
                .set_field_by_name("type", Value::EnumNumber(3));
        });
        let error = SubjectFields::from_descriptors(&set).unwrap_err();
        assert!(
            matches!(&error, SubjectError::NotSingularString { field, .. }
                if field == "govbridge.civilregistry.v1.GetPersonRequest.nin"),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            "govbridge.civilregistry.v1.GetPersonRequest.nin is marked as the data subject but \
             is of type int64; it must be a singular string"
        );
    }

    #[test]
    fn rejects_a_marked_repeated_string() {
        // LABEL_REPEATED
        let set = edited_set(|set| {
            field_proto(set, CIVIL_REGISTRY, "GetPersonRequest", "nin")
                .set_field_by_name("label", Value::EnumNumber(3));
        });
        let error = SubjectFields::from_descriptors(&set).unwrap_err();
        assert!(
            matches!(&error, SubjectError::NotSingularString { kind, .. } if kind == "repeated string"),
            "{error:?}"
        );
    }

    #[test]
    fn rejects_several_marked_fields_in_one_message() {
        let set = edited_set(|set| {
            let options = options_of(set, "VerifyIdentityRequest", "nin");
            field_proto(set, CIVIL_REGISTRY, "VerifyIdentityRequest", "last_name")
                .set_field_by_name("options", options);
        });
        let error = SubjectFields::from_descriptors(&set).unwrap_err();
        assert_eq!(
            error.to_string(),
            "govbridge.civilregistry.v1.VerifyIdentityRequest marks several fields as the data \
             subject: nin and last_name"
        );
    }

    #[test]
    fn rejects_a_marked_field_outside_a_request() {
        let set = edited_set(|set| {
            let options = options_of(set, "GetPersonRequest", "nin");
            field_proto(set, CIVIL_REGISTRY, "Person", "nin").set_field_by_name("options", options);
        });
        let error = SubjectFields::from_descriptors(&set).unwrap_err();
        assert!(
            matches!(&error, SubjectError::NotInRequest { field, message }
                if field == "govbridge.civilregistry.v1.Person.nin"
                    && message == "govbridge.civilregistry.v1.Person"),
            "{error:?}"
        );
    }

    #[test]
    fn rejects_an_invalid_set() {
        assert!(matches!(
            SubjectFields::from_descriptors(&[0xff]),
            Err(SubjectError::Descriptors(_))
        ));
    }
}
