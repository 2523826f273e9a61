//! The data subject of a call: the person, by NIN, whose data it concerns.
//!
//! Protos mark the request field that names the subject with the
//! `govbridge.options.v1.data_subject` field option. [`SubjectFields`] finds
//! the marked field of each method's request once, with prost-reflect, at
//! start-up, with the other members of its `oneof`; on the request path
//! [`read_subject`] only walks the top level of a request message in the
//! protobuf wire format, and [`SubjectReader`] does so for the first message
//! and every later message of a stream as the bytes pass by.
//!
//! The subject is the one the backend will see: what a protobuf decoder
//! keeps, where the last occurrence of a field wins and a later member of
//! the same `oneof` replaces it ([`Reading::decoded`]). A consent is bound
//! only to a message that names its subject once and sets no other member
//! of the subject's `oneof` ([`Reading::sole`]): anything else is a message
//! whose readers could disagree.
//!
//! This module must never decode requests with reflection on the request
//! path, or hold more than one message at a time (and at most
//! [`MAX_MESSAGE`] of it). A subject it cannot read is simply `None`; the
//! one way it fails a call is a stream naming more than [`MAX_SUBJECTS`].

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

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
        Self::of_pool(&DescriptorPool::decode(bytes)?)
    }

    /// Reads the markings of the messages of `pool`.
    pub fn of_pool(pool: &DescriptorPool) -> Result<Self, SubjectError> {
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

/// Reads the subject of every gRPC message of a request stream as data
/// frames pass by: the first message's, and those the later messages of a
/// stream name besides it.
#[derive(Debug)]
pub struct SubjectReader {
    field: SubjectField,
    progress: Progress,
    /// The first message's subject, once that message is read or given up
    /// on (`Some(None)`: it names none the gateway can read).
    first: Option<Option<Subject>>,
    /// The subjects later messages named besides the first's, each once.
    more: BTreeSet<Box<str>>,
    /// Those of `more` the frame being fed added: taken back if a later
    /// message of that frame is refused, for the frame is not relayed.
    fed: Vec<Box<str>>,
    /// A message whose subject could not be read.
    unreadable: bool,
}

#[derive(Debug)]
enum Progress {
    /// Collecting a message prefix, which frames may split.
    Prefix { bytes: [u8; PREFIX], filled: usize },
    /// Collecting a message split across frames.
    Message { buffer: Vec<u8>, length: usize },
    /// Passing over a message whose subject cannot be read (compressed,
    /// or over [`MAX_MESSAGE`]).
    Skipping { left: usize },
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

/// The most data subjects one call may name. The exchange log keeps each
/// in the call's record, so that every citizen's Data Tracker shows the
/// call: a stream naming more is ended rather than partly recorded.
pub const MAX_SUBJECTS: usize = 256;

/// A request stream named more than [`MAX_SUBJECTS`] data subjects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "this call names more than {MAX_SUBJECTS} data subjects; the gateway records every \
     subject a call concerns: split the stream"
)]
pub struct TooManySubjects;

impl SubjectReader {
    /// A reader for the subject in `field`.
    pub fn new(field: SubjectField) -> Self {
        Self {
            field,
            progress: Progress::Prefix {
                bytes: [0; PREFIX],
                filled: 0,
            },
            first: None,
            more: BTreeSet::new(),
            fed: Vec::new(),
            unreadable: false,
        }
    }

    /// Feeds the next DATA frame's bytes. Frames may split the gRPC framing
    /// (a compressed flag, a 4-byte big-endian length, the message)
    /// anywhere. A compressed or oversized message is passed over, its
    /// subject unreadable. Fails at the message that names one subject
    /// more than [`MAX_SUBJECTS`], keeping none of the subjects of that
    /// frame (which is not to be relayed); nothing should be fed after
    /// that.
    pub fn feed(&mut self, data: &[u8]) -> Result<(), TooManySubjects> {
        self.fed.clear();
        let (first, unreadable) = (self.first, self.unreadable);
        let fed = self.feed_frame(data);
        if fed.is_err() {
            for subject in std::mem::take(&mut self.fed) {
                self.more.remove(&subject);
            }
            (self.first, self.unreadable) = (first, unreadable);
        }
        fed
    }

    fn feed_frame(&mut self, mut data: &[u8]) -> Result<(), TooManySubjects> {
        while !data.is_empty() {
            match &mut self.progress {
                Progress::Skipping { left } => {
                    let take = (*left).min(data.len());
                    *left -= take;
                    data = data.get(take..).unwrap_or_default();
                    if *left == 0 {
                        self.next_message();
                    }
                }
                Progress::Prefix { bytes, filled } => {
                    let take = (PREFIX - *filled).min(data.len());
                    let (head, rest) = data.split_at(take);
                    if let Some(slot) = bytes.get_mut(*filled..*filled + take) {
                        slot.copy_from_slice(head);
                    }
                    *filled += take;
                    data = rest;
                    if *filled < PREFIX {
                        return Ok(());
                    }
                    let [compressed, length @ ..] = *bytes;
                    let length = u32::from_be_bytes(length) as usize;
                    if compressed != 0 || length > MAX_MESSAGE {
                        self.named(Reading::MALFORMED)?;
                        self.progress = Progress::Skipping { left: length };
                        if length == 0 {
                            self.next_message();
                        }
                    } else if let Some(message) = data.get(..length) {
                        // The whole message is in this frame: no copy.
                        data = data.get(length..).unwrap_or_default();
                        self.named(read_subject(message, &self.field))?;
                        self.next_message();
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
                        let buffer = std::mem::take(buffer);
                        self.named(read_subject(&buffer, &self.field))?;
                        self.next_message();
                    }
                }
            }
        }
        Ok(())
    }

    fn next_message(&mut self) {
        self.progress = Progress::Prefix {
            bytes: [0; PREFIX],
            filled: 0,
        };
    }

    /// Takes what a message says of its subject. The first message must
    /// name one; a later one may name no one (a stream's other messages),
    /// but not one the gateway cannot read.
    fn named(&mut self, reading: Reading<'_>) -> Result<(), TooManySubjects> {
        let Some(first) = &self.first else {
            let first = reading.decoded().and_then(Subject::new);
            self.unreadable |= first.is_none();
            self.first = Some(first);
            return Ok(());
        };
        let Some(subject) = reading.decoded() else {
            self.unreadable |= !reading.is_absent();
            return Ok(());
        };
        if first.as_ref().and_then(Subject::as_str) == Some(subject) || self.more.contains(subject)
        {
            return Ok(());
        }
        if self.more.len() + usize::from(first.is_some()) >= MAX_SUBJECTS {
            return Err(TooManySubjects);
        }
        self.more.insert(subject.into());
        self.fed.push(subject.into());
        Ok(())
    }

    /// The subject the backend decodes from the first message, once that
    /// message is complete and names one.
    pub fn subject(&self) -> Option<&str> {
        self.first.as_ref()?.as_ref()?.as_str()
    }

    /// The subjects later messages named besides the first's, each once,
    /// in byte order.
    pub fn more_subjects(&self) -> impl Iterator<Item = &str> {
        self.more.iter().map(AsRef::as_ref)
    }

    /// Whether a message so far named no subject the gateway could read.
    pub fn is_unreadable(&self) -> bool {
        self.unreadable
    }

    /// Whether the first message has been read or given up on.
    pub fn is_done(&self) -> bool {
        self.first.is_some()
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
    /// The message leaves the subject field unset or empty: it names no
    /// one.
    absent: bool,
}

impl<'a> Reading<'a> {
    /// The reading of a malformed message: no subject, and none to bind.
    const MALFORMED: Self = Self {
        decoded: None,
        mentions: 0,
        malformed: true,
        absent: false,
    };

    /// The subject a protobuf decoder (the backend's) reads: the last
    /// occurrence of the field, unless a later member of its `oneof`
    /// replaced it; if it is non-empty, valid UTF-8 without NUL and at
    /// most [`MAX_SUBJECT`] bytes. For the exchange log.
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

    /// Whether the message names no one: valid, and its subject field
    /// unset, empty, or replaced by another member of its `oneof`.
    pub fn is_absent(&self) -> bool {
        self.absent
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
/// Only the top level is walked, allocating only for the stack of nested
/// unknown groups, should the message have one. Unknown groups are
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
        rest = skip_field(after, number, wire_type)?;
        if field.rivals.contains(&number) {
            // A decoder now holds the rival in the oneof, not the subject.
            found = None;
            mentions = mentions.saturating_add(1);
        }
    }
    let decoded = found
        .filter(|value| !value.is_empty() && value.len() <= MAX_SUBJECT)
        .and_then(|value| std::str::from_utf8(value).ok())
        // PostgreSQL keeps no NUL in text: a fleet's append would fail
        // for every record of its batch. Other characters are kept as
        // received, and escaped where shown.
        .filter(|value| !value.contains('\0'));
    Some(Reading {
        decoded,
        mentions,
        malformed: false,
        absent: found.is_none_or(<[u8]>::is_empty),
    })
}

/// The decoded subject of `message`, as [`Reading::decoded`].
pub fn subject_of<'a>(message: &'a [u8], field: &SubjectField) -> Option<&'a str> {
    read_subject(message, field).decoded()
}

/// Groups nested deeper are malformed as far as the gateway is concerned:
/// as deep as the most lenient common decoder reads them (Go's default
/// recursion limit; prost, C++ and Java stop at 100). Any shallower, and a
/// message padded with unknown groups between the two would reach a
/// backend that reads its subject while the gateway read none (and the
/// citizen's Data Tracker would miss the access).
const MAX_GROUP_DEPTH: usize = 10_000;

/// What follows the value of field `number`, whose tag (of `wire_type`)
/// was just read. A group is skipped to its matching end; a stray group end
/// and the wire types 6 and 7 are malformed.
fn skip_field(rest: &[u8], number: u32, wire_type: u64) -> Option<&[u8]> {
    match wire_type {
        3 => skip_group(rest, number),
        wire_type => skip_value(rest, wire_type),
    }
}

/// What follows a value of `wire_type` other than a group's.
fn skip_value(rest: &[u8], wire_type: u64) -> Option<&[u8]> {
    match wire_type {
        0 => Some(read_varint(rest)?.1),
        1 => rest.get(8..),
        5 => rest.get(4..),
        2 => {
            let (length, after) = read_varint(rest)?;
            after.get(usize::try_from(length).ok()?..)
        }
        _ => None,
    }
}

/// What follows the end of group `number`, whose start tag was just read.
/// Nested groups are followed on a stack of their numbers, not by
/// recursion: a deep nesting costs memory (at most [`MAX_GROUP_DEPTH`]
/// numbers), never the thread's stack.
fn skip_group(mut rest: &[u8], number: u32) -> Option<&[u8]> {
    let mut open = vec![number];
    while let Some(&innermost) = open.last() {
        let (inner, wire_type, after) = read_tag(rest)?;
        rest = match wire_type {
            4 if inner == innermost => {
                open.pop();
                after
            }
            3 if open.len() < MAX_GROUP_DEPTH => {
                open.push(inner);
                after
            }
            // A stray or mismatched end, or a group too deep.
            3 | 4 => return None,
            wire_type => skip_value(after, wire_type)?,
        };
    }
    Some(rest)
}

/// A field's key: its number, its wire type and what follows. As prost
/// has it, a key must fit in 32 bits and name a field number of at least
/// 1, at any depth: a message breaking that is malformed for the backend
/// too, and no subject is read from it.
pub(crate) fn read_tag(bytes: &[u8]) -> Option<(u32, u64, &[u8])> {
    let (key, after) = read_varint(bytes)?;
    let key = u32::try_from(key).ok()?;
    let number = key >> 3;
    (number != 0).then_some((number, u64::from(key & 0b111), after))
}

/// A base-128 varint and what follows it.
pub(crate) fn read_varint(bytes: &[u8]) -> Option<(u64, &[u8])> {
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
mod tests;
