//! National identifiers (the data subjects of calls, and what the mock
//! agencies key their records on), each with one
//! parser that turns wire text into a checked value:
//!
//! - [`Nin`], the national identification number of a person: 13 digits,
//!   `S CCC YYYY NNNNN` — sex (1 male, 2 female), civil registry centre of
//!   birth (001-999; the mock civil registry's table of communes lists
//!   them), year of birth, and a sequence number within that sex, centre
//!   and year. Example: `1001198500042`.
//! - [`Ninea`], the company and association identifier of the tax authority:
//!   10 characters, `NNNNNNN K TT` written without spaces — a 7-digit number,
//!   a key digit (the Luhn check digit of the 7-digit number) and a 2-char
//!   tax code (an upper-case letter and a digit). Example: `0048372` key `7`
//!   code `G3` is `00483727G3`; the printed form `0048372 7G3` is not
//!   accepted on the wire.
//! - [`Iban`], a Senegalese account number: 28 characters, `SN`, two ISO
//!   13616 check digits, then a 24-char BBAN: bank code (a letter, a letter
//!   or digit, 3 digits: `SN012`), branch (5 digits), account (12 digits) and
//!   RIB key (2 digits). The check digits are verified (mod 97).
//!
//! Each parser accepts exactly the canonical form (no spaces, no lower
//! case), so that a value has one spelling everywhere: in records, in
//! consent artefacts and in logs. This module must never look anything up:
//! "well formed" is decided here, "exists" by the dataset.

use std::fmt;

/// A well-formed NIN. `Copy`, compares and hashes on its digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Nin([u8; 13]);

/// Why a string is not a NIN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidNin {
    #[error("a NIN is 13 digits, found {0} characters")]
    Length(usize),
    #[error("a NIN holds only the digits 0-9")]
    NotDigits,
    #[error("the first digit of a NIN is the sex, 1 or 2")]
    Sex,
    #[error("digits 2-4 of a NIN are a registry centre code, 001-999")]
    Centre,
    #[error("digits 5-8 of a NIN are a year of birth, 1900-2099")]
    Year,
}

/// Parses a NIN (13 digits, see the module docs).
pub fn parse_nin(text: &str) -> Result<Nin, InvalidNin> {
    let bytes: [u8; 13] = text
        .as_bytes()
        .try_into()
        .map_err(|_| InvalidNin::Length(text.chars().count()))?;
    if !bytes.iter().all(u8::is_ascii_digit) {
        return Err(InvalidNin::NotDigits);
    }
    let nin = Nin(bytes);
    if !matches!(bytes[0], b'1' | b'2') {
        return Err(InvalidNin::Sex);
    }
    if nin.centre() == 0 {
        return Err(InvalidNin::Centre);
    }
    if !(1900..=2099).contains(&nin.birth_year()) {
        return Err(InvalidNin::Year);
    }
    Ok(nin)
}

impl Nin {
    /// Builds a NIN from its parts: `male` selects the sex digit; `centre`
    /// must be 1-999, `year` 1900-2099 and `sequence` at most 99,999, which
    /// the dataset guarantees (out-of-range parts are reduced modulo their
    /// width rather than overflowing).
    pub fn from_parts(male: bool, centre: u16, year: i32, sequence: u32) -> Nin {
        let text = format!(
            "{}{:03}{:04}{:05}",
            if male { 1 } else { 2 },
            centre % 1000,
            year.rem_euclid(10_000),
            sequence % 100_000
        );
        let mut bytes = [b'0'; 13];
        bytes.copy_from_slice(&text.as_bytes()[..13]);
        Nin(bytes)
    }

    /// The 13 digits.
    pub fn as_str(&self) -> &str {
        // Always ASCII digits: both constructors check or write them.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// True for a man's NIN (first digit 1).
    pub fn is_male(&self) -> bool {
        self.0[0] == b'1'
    }

    /// The registry centre of birth (digits 2-4).
    pub fn centre(&self) -> u16 {
        number(&self.0[1..4]) as u16
    }

    /// The year of birth (digits 5-8).
    pub fn birth_year(&self) -> i32 {
        number(&self.0[4..8]) as i32
    }
}

/// A well-formed NINEA. `Copy`, compares and hashes on its text.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ninea([u8; 10]);

/// Why a string is not a NINEA.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidNinea {
    #[error(
        "a NINEA is 10 characters without spaces (7 digits, a key digit, a tax code), found {0}"
    )]
    Length(usize),
    #[error("the first 8 characters of a NINEA are digits")]
    NotDigits,
    #[error("the 8th digit of a NINEA is the check key of the first seven, and does not match")]
    Key,
    #[error("a NINEA ends with a tax code: an upper-case letter and a digit")]
    TaxCode,
}

/// Parses a NINEA (10 characters, see the module docs), checking its key.
pub fn parse_ninea(text: &str) -> Result<Ninea, InvalidNinea> {
    let bytes: [u8; 10] = text
        .as_bytes()
        .try_into()
        .map_err(|_| InvalidNinea::Length(text.chars().count()))?;
    if !bytes[..8].iter().all(u8::is_ascii_digit) {
        return Err(InvalidNinea::NotDigits);
    }
    if !bytes[8].is_ascii_uppercase() || !bytes[9].is_ascii_digit() {
        return Err(InvalidNinea::TaxCode);
    }
    if luhn_key(&bytes[..7]) != bytes[7] {
        return Err(InvalidNinea::Key);
    }
    Ok(Ninea(bytes))
}

impl Ninea {
    /// Builds a NINEA from its 7-digit number (reduced modulo 10^7) and tax
    /// code, computing the key.
    pub fn from_parts(number: u32, tax_code: [u8; 2]) -> Ninea {
        let digits = format!("{:07}", number % 10_000_000);
        let mut bytes = [b'0'; 10];
        bytes[..7].copy_from_slice(&digits.as_bytes()[..7]);
        bytes[7] = luhn_key(&bytes[..7]);
        bytes[8] = tax_code[0];
        bytes[9] = tax_code[1];
        Ninea(bytes)
    }

    /// The 10 characters.
    pub fn as_str(&self) -> &str {
        // Always ASCII: both constructors check or write it.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The 7-digit company number, without key and tax code.
    pub fn number(&self) -> &str {
        &self.as_str()[..7]
    }
}

/// The Luhn check digit (as an ASCII digit) of a run of ASCII digits: it
/// catches every single-digit error and most transpositions.
fn luhn_key(digits: &[u8]) -> u8 {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(position, &byte)| {
            let digit = u32::from(byte - b'0');
            if position % 2 == 0 {
                let doubled = digit * 2;
                if doubled > 9 { doubled - 9 } else { doubled }
            } else {
                digit
            }
        })
        .sum();
    b'0' + ((10 - sum % 10) % 10) as u8
}

/// A well-formed Senegalese IBAN. `Copy`, compares and hashes on its text.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Iban([u8; 28]);

/// Why a string is not a Senegalese IBAN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidIban {
    #[error("a Senegalese IBAN is 28 characters without spaces, found {0}")]
    Length(usize),
    #[error("a Senegalese IBAN starts with SN")]
    Country,
    #[error("a Senegalese IBAN is SN, 2 check digits, a letter, a letter or digit, then 22 digits")]
    Format,
    #[error("the IBAN check digits do not match (ISO 13616 mod 97)")]
    Checksum,
}

/// Parses a Senegalese IBAN (28 characters, see the module docs), verifying
/// its check digits.
pub fn parse_iban(text: &str) -> Result<Iban, InvalidIban> {
    let bytes: [u8; 28] = text
        .as_bytes()
        .try_into()
        .map_err(|_| InvalidIban::Length(text.chars().count()))?;
    if &bytes[..2] != b"SN" {
        return Err(InvalidIban::Country);
    }
    let well_formed = bytes[2..4].iter().all(u8::is_ascii_digit)
        && bytes[4].is_ascii_uppercase()
        && (bytes[5].is_ascii_uppercase() || bytes[5].is_ascii_digit())
        && bytes[6..].iter().all(u8::is_ascii_digit);
    if !well_formed {
        return Err(InvalidIban::Format);
    }
    if iban_remainder(&bytes[4..], &bytes[..4]) != 1 {
        return Err(InvalidIban::Checksum);
    }
    Ok(Iban(bytes))
}

impl Iban {
    /// Builds an IBAN from a 24-char BBAN of upper-case letters and digits,
    /// computing the check digits. `None` when the BBAN has another length
    /// or other characters.
    pub fn from_bban(bban: &str) -> Option<Iban> {
        let bban = bban.as_bytes();
        if bban.len() != 24
            || !bban
                .iter()
                .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
        {
            return None;
        }
        let check = 98 - iban_remainder(bban, b"SN00");
        let mut bytes = [b'0'; 28];
        bytes[..2].copy_from_slice(b"SN");
        bytes[2] = b'0' + (check / 10) as u8;
        bytes[3] = b'0' + (check % 10) as u8;
        bytes[4..].copy_from_slice(bban);
        Some(Iban(bytes))
    }

    /// The 28 characters.
    pub fn as_str(&self) -> &str {
        // Always ASCII: both constructors check or write it.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The bank code, e.g. `SN012`.
    pub fn bank_code(&self) -> &str {
        &self.as_str()[4..9]
    }
}

/// ISO 13616 / ISO 7064 mod 97-10: the remainder of `bban ++ head` read as
/// a number, letters counting as 10 (A) to 35 (Z). A valid IBAN gives 1.
fn iban_remainder(bban: &[u8], head: &[u8]) -> u32 {
    bban.iter().chain(head).fold(0_u32, |remainder, &byte| {
        if byte.is_ascii_digit() {
            (remainder * 10 + u32::from(byte - b'0')) % 97
        } else {
            (remainder * 100 + u32::from(byte - b'A') + 10) % 97
        }
    })
}

fn number(digits: &[u8]) -> u32 {
    digits.iter().fold(0, |value, &byte| {
        value * 10 + u32::from(byte.wrapping_sub(b'0'))
    })
}

macro_rules! text_id_impls {
    ($($id:ident),*) => {$(
        impl fmt::Display for $id {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl fmt::Debug for $id {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($id), self.as_str())
            }
        }
    )*};
}

text_id_impls!(Nin, Ninea, Iban);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nin_parts_round_trip() {
        let nin = Nin::from_parts(false, 42, 1985, 7);
        assert_eq!(nin.as_str(), "2042198500007");
        assert_eq!(parse_nin("2042198500007"), Ok(nin));
        assert!(!nin.is_male());
        assert_eq!(nin.centre(), 42);
        assert_eq!(nin.birth_year(), 1985);
    }

    #[test]
    fn nin_rejects_malformed() {
        assert_eq!(parse_nin(""), Err(InvalidNin::Length(0)));
        assert_eq!(parse_nin("104219850000"), Err(InvalidNin::Length(12)));
        assert_eq!(parse_nin("10421985000071"), Err(InvalidNin::Length(14)));
        assert_eq!(parse_nin("1042198500a07"), Err(InvalidNin::NotDigits));
        assert_eq!(parse_nin(" 042198500007"), Err(InvalidNin::NotDigits));
        assert_eq!(parse_nin("3042198500007"), Err(InvalidNin::Sex));
        assert_eq!(parse_nin("1000198500007"), Err(InvalidNin::Centre));
        assert_eq!(parse_nin("1042185000007"), Err(InvalidNin::Year));
        assert_eq!(parse_nin("١٠٤٢١٩٨٥٠٠٠٠٧"), Err(InvalidNin::Length(13)));
    }

    #[test]
    fn ninea_key_is_checked() {
        let ninea = Ninea::from_parts(48_372, *b"G3");
        assert_eq!(ninea.as_str(), "00483727G3");
        assert_eq!(parse_ninea("00483727G3"), Ok(ninea));
        assert_eq!(ninea.number(), "0048372");
        // Every single-digit change of the number breaks the key.
        for position in 0..7 {
            for digit in b'0'..=b'9' {
                let mut text = ninea.as_str().as_bytes().to_vec();
                if text[position] == digit {
                    continue;
                }
                text[position] = digit;
                let text = String::from_utf8(text).unwrap();
                assert_eq!(parse_ninea(&text), Err(InvalidNinea::Key), "{text}");
            }
        }
        assert_eq!(parse_ninea("0048372 7G3"), Err(InvalidNinea::Length(11)));
        assert_eq!(parse_ninea("00483720g3"), Err(InvalidNinea::TaxCode));
        assert_eq!(parse_ninea("00483720GG"), Err(InvalidNinea::TaxCode));
        assert_eq!(parse_ninea("0048372XG3"), Err(InvalidNinea::NotDigits));
    }

    #[test]
    fn iban_check_digits_follow_iso_13616() {
        // The example IBAN of the SWIFT registry for Senegal.
        let registry_example = "SN08SN0100152000048500003035";
        assert_eq!(parse_iban(registry_example).unwrap().bank_code(), "SN010");
        let built = Iban::from_bban("SN0100152000048500003035").unwrap();
        assert_eq!(built.as_str(), registry_example);

        assert_eq!(
            parse_iban("SN09SN0100152000048500003035"),
            Err(InvalidIban::Checksum)
        );
        assert_eq!(
            parse_iban("SN08SN0100152000048500003053"),
            Err(InvalidIban::Checksum)
        );
        assert_eq!(
            parse_iban("FR08SN0100152000048500003035"),
            Err(InvalidIban::Country)
        );
        assert_eq!(
            parse_iban("SN08SN010015200004850000303"),
            Err(InvalidIban::Length(27))
        );
        assert_eq!(
            parse_iban("SN08 SN01 0015 2000 0485 0000 3035").map(|_| ()),
            Err(InvalidIban::Length(34))
        );
        assert_eq!(
            parse_iban("SN08sn0100152000048500003035"),
            Err(InvalidIban::Format)
        );
        assert_eq!(
            parse_iban("SN08SN01001520000485000030X5"),
            Err(InvalidIban::Format)
        );
    }
}
