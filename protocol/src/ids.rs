//! Identifiers, parsed rather than validated: holding one means it is well formed.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A valid NHS number (ten digits whose modulus-11 check digit holds).
///
/// `Debug` and `Display` show only a mask (`943 *** **19`); [`NhsNumber::digits`] gives the whole
/// number where it is needed (wire, storage, a clinician's screen).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct NhsNumber(u64);

/// Why a string is not an NHS number.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NhsNumberError {
    /// Not exactly ten digits (spaces are allowed between groups).
    #[error("an NHS number has 10 digits, this has {0}")]
    Length(usize),
    /// A character other than a digit or a space.
    #[error("an NHS number holds only digits (and spaces or dashes between them)")]
    NonDigit,
    /// The modulus-11 check digit does not hold.
    #[error("the NHS number's check digit is wrong")]
    CheckDigit,
    /// One digit ten times (`0000000000`, `1111111111`): the check digit holds, but no such
    /// number is ever issued; it is what a blank or placeholder field becomes.
    #[error("an NHS number is never one digit repeated (a blank or placeholder value?)")]
    Repeated,
}

impl NhsNumber {
    /// Parses `9434765919`, `943 476 5919` or `943-476-5919`.
    pub fn parse(text: &str) -> Result<NhsNumber, NhsNumberError> {
        let mut digits = [0u8; 10];
        let mut n = 0usize;
        for c in text.trim().chars() {
            match c {
                ' ' | '-' => continue,
                '0'..='9' => {
                    if n < 10 {
                        digits[n] = c as u8 - b'0';
                    }
                    n += 1;
                }
                _ => return Err(NhsNumberError::NonDigit),
            }
        }
        if n != 10 {
            return Err(NhsNumberError::Length(n));
        }
        Self::from_digits(digits)
    }

    fn from_digits(d: [u8; 10]) -> Result<NhsNumber, NhsNumberError> {
        if d.iter().all(|&x| x == d[0]) {
            return Err(NhsNumberError::Repeated);
        }
        let sum: u32 = d[..9].iter().enumerate().map(|(i, &x)| u32::from(x) * (10 - i as u32)).sum();
        let check = match 11 - sum % 11 {
            11 => 0,
            10 => return Err(NhsNumberError::CheckDigit),
            c => c,
        };
        if check != u32::from(d[9]) {
            return Err(NhsNumberError::CheckDigit);
        }
        Ok(NhsNumber(d.iter().fold(0u64, |acc, &x| acc * 10 + u64::from(x))))
    }

    /// The ten digits, unmasked.
    pub fn digits(self) -> String {
        format!("{:010}", self.0)
    }

    /// The number grouped as `943 476 5919`, unmasked.
    pub fn grouped(self) -> String {
        let d = self.digits();
        format!("{} {} {}", &d[..3], &d[3..6], &d[6..])
    }

    /// The mask used in logs: `943 *** **19`.
    pub fn masked(self) -> String {
        let d = self.digits();
        format!("{} *** **{}", &d[..3], &d[8..])
    }

    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl TryFrom<u64> for NhsNumber {
    type Error = NhsNumberError;
    fn try_from(v: u64) -> Result<Self, Self::Error> {
        if v > 9_999_999_999 {
            return Err(NhsNumberError::Length(v.to_string().len()));
        }
        let mut d = [0u8; 10];
        let mut x = v;
        for slot in d.iter_mut().rev() {
            *slot = (x % 10) as u8;
            x /= 10;
        }
        Self::from_digits(d)
    }
}

impl From<NhsNumber> for u64 {
    fn from(n: NhsNumber) -> u64 {
        n.0
    }
}

impl fmt::Debug for NhsNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NhsNumber({})", self.masked())
    }
}

impl fmt::Display for NhsNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

/// An ODS code naming a member: an authority (3 digits, or letter-digit-letter-digit-letter), a
/// hub or a care-setting site (3 to 10 upper-case letters and digits).
///
/// Held inline (11 bytes, no allocation of its own): every entry, visit and message names one or
/// more, and a hub holds hundreds of thousands of entries. Unused bytes are zero, so that the
/// derived order is the order of the codes as strings; it hashes as its string too.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct OdsCode {
    bytes: [u8; ODS_CODE_LEN_MAX],
    len: u8,
}

/// Why a string is not an ODS code.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OdsCodeError {
    /// Shorter than 3 or longer than 10 characters.
    #[error("an ODS code has 3 to 10 characters, this has {0}")]
    Length(usize),
    /// A character other than an upper-case letter or a digit.
    #[error("an ODS code holds only upper-case letters and digits")]
    Character,
    /// Not of an authority's form: 3 digits, or letter-digit-letter-digit-letter.
    #[error("an authority's ODS code is 3 digits or letter-digit-letter-digit-letter (e.g. 204 or E5A1B)")]
    AuthorityForm,
}

/// Longest ODS code accepted.
pub const ODS_CODE_LEN_MAX: usize = 10;

impl OdsCode {
    /// Parses any member's code.
    pub fn parse(text: &str) -> Result<OdsCode, OdsCodeError> {
        let t = text.trim();
        if !(3..=ODS_CODE_LEN_MAX).contains(&t.len()) {
            return Err(OdsCodeError::Length(t.chars().count()));
        }
        if !t.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()) {
            return Err(OdsCodeError::Character);
        }
        let mut bytes = [0; ODS_CODE_LEN_MAX];
        bytes[..t.len()].copy_from_slice(t.as_bytes());
        Ok(OdsCode { bytes, len: t.len() as u8 })
    }

    /// Parses an authority's code: 3 digits (`204`) or letter-digit-letter-digit-letter (`E5A1B`).
    pub fn authority(text: &str) -> Result<OdsCode, OdsCodeError> {
        let code = Self::parse(text)?;
        if !code.is_authority_form() {
            return Err(OdsCodeError::AuthorityForm);
        }
        Ok(code)
    }

    /// Whether the code has the form of an authority's code.
    pub fn is_authority_form(&self) -> bool {
        let b = &self.bytes[..usize::from(self.len)];
        match b.len() {
            3 => b.iter().all(u8::is_ascii_digit),
            5 => {
                b.iter().enumerate().all(|(i, c)| if i % 2 == 0 { c.is_ascii_uppercase() } else { c.is_ascii_digit() })
            }
            _ => false,
        }
    }

    pub fn as_str(&self) -> &str {
        // Only upper-case letters and digits are ever held (see `parse`).
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or_default()
    }

    /// Decoding (the wire, the store, JSON) takes only the canonical form: no surrounding
    /// spaces, so that one code has one encoding.
    fn canonical(text: &str) -> Result<OdsCode, OdsCodeError> {
        let code = OdsCode::parse(text)?;
        if usize::from(code.len) != text.len() {
            return Err(OdsCodeError::Character);
        }
        Ok(code)
    }
}

impl TryFrom<String> for OdsCode {
    type Error = OdsCodeError;
    fn try_from(v: String) -> Result<Self, Self::Error> {
        OdsCode::canonical(&v)
    }
}

impl std::hash::Hash for OdsCode {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

/// Encoded as its string.
impl Serialize for OdsCode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for OdsCode {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<OdsCode, D::Error> {
        struct Code;
        impl serde::de::Visitor<'_> for Code {
            type Value = OdsCode;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an ODS code")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<OdsCode, E> {
                OdsCode::canonical(text).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Code)
    }
}

impl From<OdsCode> for String {
    fn from(c: OdsCode) -> String {
        c.as_str().to_string()
    }
}

impl fmt::Debug for OdsCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for OdsCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The id a care setting gives each lookup; notifications are deduplicated by it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LookupId(pub [u8; 16]);

impl LookupId {
    pub fn to_hex(self) -> String {
        hex::encode(self.0)
    }
    pub fn from_hex(text: &str) -> Option<LookupId> {
        let bytes = hex::decode(text.trim()).ok()?;
        Some(LookupId(bytes.try_into().ok()?))
    }
}

impl fmt::Debug for LookupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LookupId({})", self.to_hex())
    }
}

impl fmt::Display for LookupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// An authority's own reference for one of its plans (1 to 64 printable characters).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PlanRef(String);

/// Longest plan reference accepted.
pub const PLAN_REF_LEN_MAX: usize = 64;

/// Why a string is not a plan reference.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanRefError {
    /// Empty, or longer than [`PLAN_REF_LEN_MAX`].
    #[error("a plan reference has 1 to 64 characters")]
    Length,
    /// Holds a control character.
    #[error("a plan reference holds only printable characters")]
    Character,
    /// Begins or ends with a space (decoding takes only the canonical form).
    #[error("a plan reference does not begin or end with a space")]
    Spaces,
}

impl PlanRef {
    pub fn parse(text: &str) -> Result<PlanRef, PlanRefError> {
        let t = text.trim();
        if t.is_empty() || t.len() > PLAN_REF_LEN_MAX {
            return Err(PlanRefError::Length);
        }
        if t.chars().any(char::is_control) {
            return Err(PlanRefError::Character);
        }
        Ok(PlanRef(t.to_string()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Decoding (the wire, the store, JSON) takes only the canonical form: no surrounding spaces, so
/// that one reference has one encoding.
impl TryFrom<String> for PlanRef {
    type Error = PlanRefError;
    fn try_from(v: String) -> Result<Self, Self::Error> {
        let reference = PlanRef::parse(&v)?;
        if reference.0.len() != v.len() {
            return Err(PlanRefError::Spaces);
        }
        Ok(reference)
    }
}

impl From<PlanRef> for String {
    fn from(c: PlanRef) -> String {
        c.0
    }
}

impl fmt::Debug for PlanRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PlanRef({})", self.0)
    }
}

impl fmt::Display for PlanRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nhs_number_accepts_grouped_and_plain_forms() {
        let a = NhsNumber::parse("943 476 5919").unwrap();
        let b = NhsNumber::parse("9434765919").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.digits(), "9434765919");
        assert_eq!(a.grouped(), "943 476 5919");
    }

    #[test]
    fn nhs_number_refusals_name_the_rule() {
        assert_eq!(NhsNumber::parse("9876544321"), Err(NhsNumberError::CheckDigit));
        assert_eq!(NhsNumber::parse("943476591"), Err(NhsNumberError::Length(9)));
        assert_eq!(NhsNumber::parse("94347659199"), Err(NhsNumberError::Length(11)));
        assert_eq!(NhsNumber::parse("94347659l9"), Err(NhsNumberError::NonDigit));
        assert_eq!(NhsNumber::parse("000 000 0000"), Err(NhsNumberError::Repeated));
        assert_eq!(NhsNumber::try_from(1_111_111_111), Err(NhsNumberError::Repeated));
        assert_eq!(NhsNumber::parse("943-476-5919"), NhsNumber::parse("9434765919"));
        assert_eq!(NhsNumber::parse(""), Err(NhsNumberError::Length(0)));
    }

    #[test]
    fn nhs_number_whose_check_would_be_ten_is_invalid() {
        // digits 1..9 of 000000006 sum to 6*2=12 -> 11-1 = 10: no number with this stem is valid.
        for last in 0..10 {
            assert_eq!(NhsNumber::parse(&format!("000000006{last}")), Err(NhsNumberError::CheckDigit));
        }
    }

    #[test]
    fn nhs_number_never_shows_whole_in_debug_or_display() {
        let n = NhsNumber::parse("9434765919").unwrap();
        assert_eq!(format!("{n:?}"), "NhsNumber(943 *** **19)");
        assert!(!n.to_string().contains("476"));
    }

    #[test]
    fn nhs_number_decoding_validates() {
        assert!(NhsNumber::try_from(9_434_765_919).is_ok());
        assert_eq!(NhsNumber::try_from(9_876_544_321), Err(NhsNumberError::CheckDigit));
        assert!(NhsNumber::try_from(99_999_999_999).is_err());
    }

    #[test]
    fn ods_codes_for_authorities_have_two_forms() {
        assert!(OdsCode::authority("204").is_ok());
        assert!(OdsCode::authority("E5A1B").is_ok());
        assert_eq!(OdsCode::authority("20A"), Err(OdsCodeError::AuthorityForm));
        assert_eq!(OdsCode::authority("E5A1"), Err(OdsCodeError::AuthorityForm));
        assert_eq!(OdsCode::parse("rxh01"), Err(OdsCodeError::Character));
        assert_eq!(OdsCode::parse("AB"), Err(OdsCodeError::Length(2)));
        assert!(OdsCode::parse("RXH01").is_ok());
    }

    #[test]
    fn decoding_takes_only_the_canonical_form_of_codes_and_references() {
        assert_eq!(OdsCode::parse(" 204 ").map(|c| c.as_str().to_string()), Ok("204".to_string()));
        assert_eq!(OdsCode::try_from(" 204".to_string()), Err(OdsCodeError::Character));
        assert!(OdsCode::try_from("204".to_string()).is_ok());
        assert!(PlanRef::parse(" LAC-1 ").is_ok());
        assert_eq!(PlanRef::try_from("LAC-1 ".to_string()), Err(PlanRefError::Spaces));
        let padded = crate::codec::encode(&" 204".to_string());
        assert!(crate::codec::decode::<OdsCode>(&padded, 64).is_err(), "a padded code is not a second encoding");
    }

    #[test]
    fn a_code_is_encoded_and_ordered_as_its_string() {
        let texts = ["RXH01", "204", "HUBMID", "2040", "E5A1B", "ABCDEFGHIJ", "ABC", "ABCD"];
        let mut codes: Vec<OdsCode> = texts.iter().map(|t| OdsCode::parse(t).unwrap()).collect();
        for (code, text) in codes.iter().zip(texts) {
            assert_eq!(crate::codec::encode(code), crate::codec::encode(&text.to_string()));
            assert_eq!(crate::codec::decode::<OdsCode>(&crate::codec::encode(code), 64).as_ref(), Ok(code));
        }
        codes.sort();
        let mut sorted = texts.to_vec();
        sorted.sort();
        assert_eq!(codes.iter().map(OdsCode::as_str).collect::<Vec<_>>(), sorted);
        let eleven = crate::codec::encode(&"ABCDEFGHIJK".to_string());
        assert_eq!(crate::codec::decode::<OdsCode>(&eleven, 64).ok(), None, "eleven characters");
    }
}
