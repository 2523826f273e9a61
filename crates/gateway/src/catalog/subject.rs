//! The data subject of a call: the person, by NIN, whose data it concerns.
//!
//! Protos mark the request field that names the subject with the
//! `govbridge.options.v1.data_subject` field option. [`SubjectFields`] finds
//! the marked field of each method's request once, with prost-reflect, at
//! start-up, with the other members of its `oneof`; on the request path
//! [`read_subject`] only walks the top level of a request message in the
//! protobuf wire format, and [`SubjectReader`] does so for the first message
//! of a stream as the bytes pass by.
//!
//! The subject is the one the backend will see: what a protobuf decoder
//! keeps, where the last occurrence of a field wins and a later member of
//! the same `oneof` replaces it ([`Reading::decoded`]). A consent is bound
//! only to a message that names its subject once and sets no other member
//! of the subject's `oneof` ([`Reading::sole`]): anything else is a message
//! whose readers could disagree.
//!
//! This module must never decode requests with reflection on the request
//! path, hold more than the first message (and at most [`MAX_MESSAGE`] of
//! it), or fail a call: a subject it cannot read is simply `None`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock};

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
    /// `/package.Service/Method` -> the field.
    by_method: HashMap<String, SubjectField>,
}

/// The field of a request message that names the data subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectField {
    number: u32,
    /// The other members of the field's `oneof`, if it is in one: setting
    /// any of them after the subject unsets the subject.
    rivals: Arc<[u32]>,
}

impl SubjectField {
    /// A subject field in no `oneof`.
    pub fn new(number: u32) -> Self {
        Self::in_oneof(number, [])
    }

    /// A subject field that shares a `oneof` with fields `rivals`.
    pub fn in_oneof(number: u32, rivals: impl IntoIterator<Item = u32>) -> Self {
        Self {
            number,
            rivals: rivals
                .into_iter()
                .filter(|rival| *rival != number)
                .collect(),
        }
    }

    /// The field's number.
    pub fn number(&self) -> u32 {
        self.number
    }

    /// The other fields of the subject's `oneof`.
    pub fn rivals(&self) -> &[u32] {
        &self.rivals
    }
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
                    let rivals = field.containing_oneof().map_or_else(Vec::new, |oneof| {
                        oneof.fields().map(|member| member.number()).collect()
                    });
                    by_method.insert(
                        format!("/{}/{}", service.full_name(), method.name()),
                        SubjectField::in_oneof(field.number(), rivals),
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

    /// The field naming the data subject in the request of `method_path`
    /// (`/package.Service/Method`), if it has one.
    pub fn field(&self, method_path: &str) -> Option<&SubjectField> {
        self.by_method.get(method_path)
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
    field: SubjectField,
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
    /// A reader for the subject in `field`.
    pub fn new(field: SubjectField) -> Self {
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
                        let subject = read_subject(message, &self.field).decoded();
                        let subject = subject.and_then(Subject::new);
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
                        let subject = read_subject(buffer, &self.field).decoded();
                        let subject = subject.and_then(Subject::new);
                        self.finish(subject);
                    }
                }
            }
        }
    }

    fn finish(&mut self, subject: Option<Subject>) {
        self.progress = Progress::Done(subject);
    }

    /// The subject the backend decodes, once the first message is complete
    /// and names one.
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

/// What one request message says of its data subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading<'a> {
    /// What a protobuf decoder keeps in the subject field.
    decoded: Option<&'a str>,
    /// How often the subject field or another member of its `oneof` is set.
    mentions: u32,
    /// The message is not valid protobuf as far as the gateway reads it.
    malformed: bool,
}

impl<'a> Reading<'a> {
    /// The reading of a malformed message: no subject, and none to bind.
    const MALFORMED: Self = Self {
        decoded: None,
        mentions: 0,
        malformed: true,
    };

    /// The subject a protobuf decoder (the backend's) reads: the last
    /// occurrence of the field, unless a later member of its `oneof`
    /// replaced it; if it is non-empty, valid UTF-8 and at most
    /// [`MAX_SUBJECT`] bytes. For the exchange log.
    pub fn decoded(&self) -> Option<&'a str> {
        self.decoded
    }

    /// The subject, if the message names it exactly once and sets no other
    /// member of its `oneof`: the only reading a consent may be bound to,
    /// since any other leaves a decoder that keeps the first occurrence, or
    /// merges differently, reading someone else.
    pub fn sole(&self) -> Option<&'a str> {
        self.decoded.filter(|_| self.mentions == 1)
    }

    /// Whether the message sets the subject field, or a member of its
    /// `oneof`, more than once.
    pub fn is_ambiguous(&self) -> bool {
        self.mentions > 1
    }

    /// Whether the message is malformed as far as the gateway reads it:
    /// cut short, a wire type that does not exist, the subject's number
    /// with a wire type a string never has, groups unbalanced or nested
    /// deeper than it follows. Such a message names no one.
    pub fn is_malformed(&self) -> bool {
        self.malformed
    }
}

/// Reads the subject `field` names at the top level of an encoded protobuf
/// message.
///
/// Only the top level is walked, without allocating. Unknown groups are
/// skipped as protobuf decoders skip them (so that padding a request with
/// one cannot hide its subject); the subject's number with a wire type a
/// string never has, and malformed input, read as no subject.
pub fn read_subject<'a>(message: &'a [u8], field: &SubjectField) -> Reading<'a> {
    walk(message, field).unwrap_or(Reading::MALFORMED)
}

fn walk<'a>(message: &'a [u8], field: &SubjectField) -> Option<Reading<'a>> {
    let mut rest = message;
    let mut found = None;
    let mut mentions = 0u32;
    while !rest.is_empty() {
        let (number, wire_type, after) = read_tag(rest)?;
        if number == field.number {
            // Only a length-delimited value can be a string.
            if wire_type != 2 {
                return None;
            }
            let (length, after) = read_varint(after)?;
            let length = usize::try_from(length).ok()?;
            found = Some(after.get(..length)?);
            rest = after.get(length..)?;
            mentions = mentions.saturating_add(1);
            continue;
        }
        rest = skip_field(after, number, wire_type, 0)?;
        if field.rivals.contains(&number) {
            // A decoder now holds the rival in the oneof, not the subject.
            found = None;
            mentions = mentions.saturating_add(1);
        }
    }
    let decoded = found
        .filter(|value| !value.is_empty() && value.len() <= MAX_SUBJECT)
        .and_then(|value| std::str::from_utf8(value).ok());
    Some(Reading {
        decoded,
        mentions,
        malformed: false,
    })
}

/// The decoded subject of `message`, as [`Reading::decoded`].
pub fn subject_of<'a>(message: &'a [u8], field: &SubjectField) -> Option<&'a str> {
    read_subject(message, field).decoded()
}

/// Groups nested deeper are malformed as far as the gateway is concerned.
const MAX_GROUP_DEPTH: u32 = 16;

/// What follows the value of field `number`, whose tag (of `wire_type`)
/// was just read. A group is skipped to its matching end; a stray group end
/// and the wire types 6 and 7 are malformed.
fn skip_field(rest: &[u8], number: u32, wire_type: u64, depth: u32) -> Option<&[u8]> {
    match wire_type {
        0 => Some(read_varint(rest)?.1),
        1 => rest.get(8..),
        5 => rest.get(4..),
        2 => {
            let (length, after) = read_varint(rest)?;
            after.get(usize::try_from(length).ok()?..)
        }
        3 => skip_group(rest, number, depth),
        _ => None,
    }
}

/// What follows the end of group `number`, whose start tag was just read.
fn skip_group(mut rest: &[u8], number: u32, depth: u32) -> Option<&[u8]> {
    if depth >= MAX_GROUP_DEPTH {
        return None;
    }
    loop {
        let (inner, wire_type, after) = read_tag(rest)?;
        rest = match wire_type {
            4 if inner == number => return Some(after),
            wire_type => skip_field(after, inner, wire_type, depth + 1)?,
        };
    }
}

/// A field's key: its number, its wire type and what follows. As prost
/// has it, a key must fit in 32 bits and name a field number of at least
/// 1, at any depth: a message breaking that is malformed for the backend
/// too, and no subject is read from it.
fn read_tag(bytes: &[u8]) -> Option<(u32, u64, &[u8])> {
    let (key, after) = read_varint(bytes)?;
    let key = u32::try_from(key).ok()?;
    let number = key >> 3;
    (number != 0).then_some((number, u64::from(key & 0b111), after))
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
    const NINEA: &str = "00483727G3";

    /// Field 1, in no oneof: `VerifyIdentityRequest.nin`.
    static NIN_FIELD: LazyLock<SubjectField> = LazyLock::new(|| SubjectField::new(1));

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
        let mut reader = SubjectReader::new(SubjectField::new(1));
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
            assert_eq!(
                fields.field(path).map(SubjectField::number),
                expected,
                "{path}"
            );
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
        let mut reader = SubjectReader::new(SubjectField::new(1));
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

    const CLEARANCE: &str = "/govbridge.tax.v1.TaxAuthority/GetTaxClearance";

    /// `GetTaxClearanceRequest`'s subject: `subject_nin = 1` in a oneof with
    /// `ninea = 2`.
    fn clearance_field() -> &'static SubjectField {
        SubjectFields::compiled().field(CLEARANCE).unwrap()
    }

    /// String field `number` holding `value`, encoded.
    fn string_field(number: u8, value: &str) -> Vec<u8> {
        let mut bytes = vec![number << 3 | 2, u8::try_from(value.len()).unwrap()];
        bytes.extend_from_slice(value.as_bytes());
        bytes
    }

    #[test]
    fn the_subjects_oneof_is_known() {
        assert_eq!(clearance_field().rivals(), &[2]);
        let verify = "/govbridge.civilregistry.v1.CivilRegistry/VerifyIdentity";
        let field = SubjectFields::compiled().field(verify).unwrap();
        assert!(field.rivals().is_empty());
    }

    #[test]
    fn reads_a_subject_in_a_oneof() {
        let request = |taxpayer| GetTaxClearanceRequest {
            taxpayer: Some(taxpayer),
        };
        let person = request(Taxpayer::SubjectNin(NIN.to_owned())).encode_to_vec();
        assert_eq!(read_subject(&person, clearance_field()).sole(), Some(NIN));
        let company = request(Taxpayer::Ninea(NINEA.to_owned())).encode_to_vec();
        let reading = read_subject(&company, clearance_field());
        assert_eq!((reading.decoded(), reading.is_ambiguous()), (None, false));
    }

    /// The reviewer's attack: X's NIN, then a company's NINEA in the same
    /// oneof. The backend answers about the company.
    #[test]
    fn a_later_member_of_the_oneof_replaces_the_subject() {
        let field = clearance_field();
        let smuggled = [string_field(1, NIN), string_field(2, NINEA)].concat();
        let decoded = GetTaxClearanceRequest::decode(smuggled.as_slice()).unwrap();
        assert_eq!(decoded.taxpayer, Some(Taxpayer::Ninea(NINEA.to_owned())));
        let reading = read_subject(&smuggled, field);
        assert_eq!(reading.decoded(), None);
        assert_eq!(reading.sole(), None);
        assert!(reading.is_ambiguous());
        // The exchange log's reader agrees with the backend.
        let mut reader = SubjectReader::new(field.clone());
        reader.feed(&framed(&smuggled));
        assert!(reader.is_done());
        assert_eq!(reader.subject(), None);

        // The other way round a decoder keeps the NIN, but a consent is
        // still not bound to a message with two members of the oneof.
        let reversed = [string_field(2, NINEA), string_field(1, NIN)].concat();
        let reading = read_subject(&reversed, field);
        assert_eq!(reading.decoded(), Some(NIN));
        assert_eq!(reading.sole(), None);
    }

    #[test]
    fn a_subject_named_twice_is_decoded_but_not_sole() {
        let twice = [string_field(1, NIN), string_field(1, NIN)].concat();
        let reading = read_subject(&twice, &NIN_FIELD);
        assert_eq!(reading.decoded(), Some(NIN));
        assert_eq!(reading.sole(), None);
        assert!(reading.is_ambiguous());
    }

    /// What prost, the backends' decoder, keeps as the subject, under the
    /// gateway's bounds.
    fn prost_subject(subject: Option<String>) -> Option<String> {
        subject.filter(|subject| !subject.is_empty() && subject.len() <= MAX_SUBJECT)
    }

    /// A message of random top-level fields: the subject's number, its
    /// rivals, other known and unknown numbers, every wire type, values the
    /// gateway must and must not read, occasionally a cut or a stray byte.
    fn random_message(rng: &mut fastrand::Rng) -> Vec<u8> {
        let values: [&[u8]; 6] = [
            NIN.as_bytes(),
            b"2001199054321",
            NINEA.as_bytes(),
            b"",
            &[b'1'; MAX_SUBJECT + 1],
            &[0xc3, 0x28],
        ];
        let mut message = Vec::new();
        for _ in 0..rng.usize(0..6) {
            let number = [1, 1, 2, 2, 3, 4, 100][rng.usize(0..7)];
            let key = |wire_type: u32| (number << 3) | wire_type;
            let push_varint = |mut value: u32, message: &mut Vec<u8>| loop {
                let byte = u8::try_from(value & 0x7f).unwrap();
                value >>= 7;
                if value == 0 {
                    message.push(byte);
                    break;
                }
                message.push(byte | 0x80);
            };
            match rng.u8(0..10) {
                0 => {
                    push_varint(key(0), &mut message);
                    push_varint(rng.u32(..), &mut message);
                }
                1 => {
                    push_varint(key(5), &mut message);
                    message.extend_from_slice(&rng.u32(..).to_le_bytes());
                }
                2 => {
                    // A group holding a string, ended or not.
                    push_varint(key(3), &mut message);
                    message.extend_from_slice(&string_field(1, NIN));
                    if rng.bool() {
                        push_varint(key(4), &mut message);
                    }
                }
                3 => message.push(rng.u8(..)),
                _ => {
                    let value = values[rng.usize(0..values.len())];
                    push_varint(key(2), &mut message);
                    push_varint(u32::try_from(value.len()).unwrap(), &mut message);
                    message.extend_from_slice(value);
                }
            }
        }
        if rng.u8(0..8) == 0 && !message.is_empty() {
            message.truncate(rng.usize(0..message.len()));
        }
        message
    }

    /// Whatever a request's bytes, the subject the gateway reads is the one
    /// prost decodes, and a consent is bound only to a subject prost
    /// decodes. (The fuzz target `subject_reading` explores further.)
    #[test]
    fn the_reading_agrees_with_prost_on_random_messages() {
        let mut rng = fastrand::Rng::with_seed(17);
        let verify = SubjectField::new(1);
        let (mut decoded, mut refused) = (0, 0);
        for _ in 0..50_000 {
            let message = random_message(&mut rng);
            let clearance = read_subject(&message, clearance_field());
            if let Ok(request) = GetTaxClearanceRequest::decode(message.as_slice()) {
                let expected = prost_subject(match request.taxpayer {
                    Some(Taxpayer::SubjectNin(nin)) => Some(nin),
                    _ => None,
                });
                assert_eq!(clearance.decoded(), expected.as_deref(), "{message:02x?}");
                decoded += 1;
            } else {
                refused += 1;
            }
            if let Some(sole) = clearance.sole() {
                let request = GetTaxClearanceRequest::decode(message.as_slice());
                assert_eq!(
                    request.unwrap().taxpayer,
                    Some(Taxpayer::SubjectNin(sole.to_owned()))
                );
            }
            let identity = read_subject(&message, &verify);
            if let Ok(request) = VerifyIdentityRequest::decode(message.as_slice()) {
                let expected = prost_subject(Some(request.nin));
                assert_eq!(identity.decoded(), expected.as_deref(), "{message:02x?}");
            }
        }
        // Both sides of the comparison were exercised.
        assert!(decoded > 10_000 && refused > 10_000, "{decoded} {refused}");
    }

    #[test]
    fn the_last_occurrence_wins() {
        let first = VerifyIdentityRequest {
            nin: "2001199054321".to_owned(),
            ..Default::default()
        };
        let mut message = first.encode_to_vec();
        message.extend_from_slice(&verify_identity());
        assert_eq!(subject_of(&message, &NIN_FIELD), Some(NIN));
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
        assert_eq!(subject_of(&message, &NIN_FIELD), Some(NIN));
    }

    /// An unknown group (field 100, as another client's schema might
    /// carry) is skipped as decoders skip it: it cannot hide the subject.
    #[test]
    fn unknown_groups_are_skipped() {
        let mut message = vec![0xa3, 0x06, 0x08, 0x01, 0xab, 0x06, 0xac, 0x06, 0xa4, 0x06];
        message.extend_from_slice(&verify_identity());
        message.extend_from_slice(&[0xa3, 0x06, 0xa4, 0x06]);
        assert_eq!(subject_of(&message, &NIN_FIELD), Some(NIN));
        // Unbalanced, mismatched or too deeply nested groups are malformed.
        assert_eq!(subject_of(&[0xa3, 0x06, 0x08, 0x01], &NIN_FIELD), None);
        assert_eq!(subject_of(&[0xa3, 0x06, 0xac, 0x06], &NIN_FIELD), None);
        let deep: Vec<u8> = std::iter::repeat_n([0xa3, 0x06], 40).flatten().collect();
        assert_eq!(subject_of(&deep, &NIN_FIELD), None);
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
        assert_eq!(subject_of(&unnamed.encode_to_vec(), &NIN_FIELD), None);
        assert_eq!(subject_of(&[0x0a, 0], &NIN_FIELD), None);
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
        assert_eq!(subject_of(&long.encode_to_vec(), &NIN_FIELD), None);
        let longest = "1".repeat(MAX_SUBJECT);
        let mut message = vec![0x0a, 64];
        message.extend_from_slice(longest.as_bytes());
        assert_eq!(subject_of(&message, &NIN_FIELD), Some(longest.as_str()));
        assert_eq!(subject_of(&[0x0a, 2, 0xc3, 0x28], &NIN_FIELD), None);
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
            // After the subject, a key over 32 bits whose field number
            // would still fit: prost refuses the message.
            &[0x0a, 1, b'1', 0x8a, 0x80, 0x80, 0x80, 0x10, 1, b'1'],
            // Field number 0 inside a group (found by the fuzz target: the
            // subject was bound, prost refused the message).
            &[0x0a, 1, b'1', 0x33, 0x18, 0x2a, 0x00, 0x64, 0x34],
        ];
        for case in cases {
            assert_eq!(subject_of(case, &NIN_FIELD), None, "{case:?}");
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
            Some(&SubjectField::new(1))
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
