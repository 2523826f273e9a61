//! Unit tests of [`super`].

use prost::Message;
use prost_reflect::{DynamicMessage, Value};

use super::*;
use crate::proto::civilregistry::v1::VerifyIdentityRequest;
use crate::proto::tax::v1::{GetTaxClearanceRequest, get_tax_clearance_request::Taxpayer};
use crate::proto::{AGENCY_DESCRIPTOR_SETS, FILE_DESCRIPTOR_SET};
use std::sync::LazyLock;

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

/// A framed message naming `nin` in field 1, and nothing else.
fn naming(nin: &str) -> Vec<u8> {
    let mut message = vec![0x0a, u8::try_from(nin.len()).unwrap()];
    message.extend_from_slice(nin.as_bytes());
    framed(&message)
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
        reader.feed(frame).unwrap();
    }
    reader
}

/// The civil registry's descriptor set, as its provider registers it.
fn civil_registry_set() -> &'static [u8] {
    AGENCY_DESCRIPTOR_SETS
        .iter()
        .find(|(name, _)| *name == "civilregistry")
        .unwrap()
        .1
}

#[test]
fn compiled_and_agency_markings_are_valid() {
    SubjectFields::from_descriptors(FILE_DESCRIPTOR_SET).unwrap();
    for (name, set) in AGENCY_DESCRIPTOR_SETS {
        SubjectFields::from_descriptors(set).unwrap_or_else(|error| panic!("{name}: {error}"));
    }
}

#[test]
fn compiled_markings_name_the_nin_fields() {
    let fields = crate::catalog::testing::agencies().subjects();
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
        reader.feed(byte).unwrap();
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
    crate::catalog::testing::agencies()
        .subjects()
        .field(CLEARANCE)
        .unwrap()
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
    let field = crate::catalog::testing::agencies()
        .subjects()
        .field(verify)
        .unwrap();
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
    reader.feed(&framed(&smuggled)).unwrap();
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
    subject.filter(|subject| {
        !subject.is_empty() && subject.len() <= MAX_SUBJECT && !subject.contains('\0')
    })
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
    // Unbalanced or mismatched groups are malformed (depth: below).
    assert_eq!(subject_of(&[0xa3, 0x06, 0x08, 0x01], &NIN_FIELD), None);
    assert_eq!(subject_of(&[0xa3, 0x06, 0xac, 0x06], &NIN_FIELD), None);
    let deep: Vec<u8> = std::iter::repeat_n([0xa3, 0x06], 40).flatten().collect();
    assert_eq!(subject_of(&deep, &NIN_FIELD), None);
}

/// Unknown groups nested as deep as decoders read them (prost reads 99
/// levels, Go 10,000) cannot hide the subject that follows them; deeper
/// still, the message is malformed, read without a stack of its depth.
#[test]
fn deeply_nested_unknown_groups_do_not_hide_the_subject() {
    let nested = |depth: usize| -> Vec<u8> {
        let mut message: Vec<u8> = std::iter::repeat_n([0xa3, 0x06], depth).flatten().collect();
        message.extend(std::iter::repeat_n([0xa4, 0x06], depth).flatten());
        message.extend_from_slice(&verify_identity());
        message
    };
    for depth in [17, 99, 10_000] {
        assert_eq!(subject_of(&nested(depth), &NIN_FIELD), Some(NIN), "{depth}");
    }
    assert_eq!(
        read_subject(&nested(10_001), &NIN_FIELD),
        Reading::MALFORMED
    );
    // What prost, the mock agencies' decoder, reads at 99 levels.
    let decoded = VerifyIdentityRequest::decode(&nested(99)[..]).unwrap();
    assert_eq!(decoded.nin, NIN);
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
fn later_messages_add_the_subjects_they_name_once_each() {
    let frame = framed(&verify_identity());
    let mut reader = read(&[&frame]);
    let stream: Vec<u8> = ["9", NIN, "2", "9"].into_iter().flat_map(naming).collect();
    // The same, however the frames cut it.
    for size in [1, 2, 3, 7, stream.len()] {
        let mut again = read(&[&frame]);
        for chunk in stream.chunks(size) {
            again.feed(chunk).unwrap();
        }
        assert_eq!(again.subject(), Some(NIN));
        assert_eq!(
            again.more_subjects().collect::<Vec<_>>(),
            ["2", "9"],
            "{size}"
        );
        assert!(!again.is_unreadable());
    }
    reader.feed(&naming("9")).unwrap();
    assert_eq!(reader.more_subjects().collect::<Vec<_>>(), ["9"]);
}

#[test]
fn an_unreadable_later_message_is_passed_over_and_flagged() {
    let mut reader = read(&[&framed(&verify_identity())]);
    assert!(!reader.is_unreadable());
    let mut compressed = framed(&[0x0a, 1, b'7']);
    compressed[0] = 1;
    let oversized = VerifyIdentityRequest {
        nin: "8".to_owned(),
        first_names: "x".repeat(MAX_MESSAGE),
        ..Default::default()
    };
    for frame in [compressed, framed(&oversized.encode_to_vec()), framed(&[])] {
        reader.feed(&frame).unwrap();
    }
    reader.feed(&naming("9")).unwrap();
    assert!(reader.is_unreadable());
    assert_eq!(reader.subject(), Some(NIN));
    // What followed the messages passed over was read.
    assert_eq!(reader.more_subjects().collect::<Vec<_>>(), ["9"]);
}

#[test]
fn a_stream_may_name_so_many_subjects_and_no_more() {
    let mut reader = SubjectReader::new(SubjectField::new(1));
    let message = |n: usize| naming(&format!("{n:013}"));
    for n in 0..MAX_SUBJECTS {
        reader.feed(&message(n)).unwrap();
        // A subject named again is not one more.
        reader.feed(&message(n / 2)).unwrap();
    }
    assert_eq!(reader.more_subjects().count(), MAX_SUBJECTS - 1);
    assert_eq!(reader.feed(&message(MAX_SUBJECTS)), Err(TooManySubjects));
}

/// The civil registry's set, edited as a dynamic message so that extension
/// options survive.
fn edited_set(edit: impl FnOnce(&mut DynamicMessage)) -> Vec<u8> {
    let pool = DescriptorPool::decode(civil_registry_set()).unwrap();
    let set = pool
        .get_message_by_name("google.protobuf.FileDescriptorSet")
        .unwrap();
    let mut set = DynamicMessage::decode(set, civil_registry_set()).unwrap();
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

#[test]
fn a_later_message_may_name_no_one() {
    let mut reader = read(&[&framed(&verify_identity())]);
    let unnamed = VerifyIdentityRequest {
        last_name: "Ndiaye".to_owned(),
        ..Default::default()
    };
    reader.feed(&framed(&unnamed.encode_to_vec())).unwrap();
    reader.feed(&framed(&[])).unwrap();
    reader.feed(&naming("")).unwrap();
    assert!(!reader.is_unreadable());
    // A first message must name someone.
    assert!(read(&[&framed(&[])]).is_unreadable());
}

#[test]
fn a_subject_with_a_nul_is_unreadable() {
    for subject in ["1001\u{0}199012345", "\u{0}"] {
        assert_eq!(
            subject_of(naming(subject).get(PREFIX..).unwrap(), &NIN_FIELD),
            None
        );
        let reader = read(&[&naming(subject)]);
        assert_eq!(reader.subject(), None, "{subject:?}");
        assert!(reader.is_unreadable());
        let mut reader = read(&[&framed(&verify_identity())]);
        reader.feed(&naming(subject)).unwrap();
        assert!(reader.is_unreadable(), "{subject:?}");
        assert_eq!(reader.more_subjects().count(), 0);
    }
}

#[test]
fn a_refused_frame_leaves_none_of_its_subjects() {
    let mut reader = SubjectReader::new(SubjectField::new(1));
    for n in 0..MAX_SUBJECTS - 1 {
        reader.feed(&naming(&format!("{n:013}"))).unwrap();
    }
    // One frame: the last subject a call may name, then one more.
    let mut frame = naming("last");
    frame.extend(naming("one-too-many"));
    assert_eq!(reader.feed(&frame), Err(TooManySubjects));
    assert_eq!(reader.more_subjects().count(), MAX_SUBJECTS - 2);
    assert!(reader.more_subjects().all(|subject| subject != "last"));
}
