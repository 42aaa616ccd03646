//! `google.protobuf.Struct` kept as its encoded bytes.
//!
//! A webhook's payload is stored as JSON text and read back on every page of
//! logs. Parsed into a `Struct` (a hash map of `Value`s, each key and string
//! its own allocation), encoded, then dropped, it was a fifth of the
//! instructions of a listing page in the server (docs/PERFORMANCE.md). The
//! contract's messages carry this type instead (build.rs maps
//! `.google.protobuf.Struct` to it): the stored text is written straight into
//! the wire form, and the wire form is what a page sends. On the wire and in
//! JSON it is exactly a `Struct`; [`RawStruct::to_struct`] decodes it where
//! the fields themselves are needed (Dispatch, the REST gateway, tests).

use std::fmt;

use pbjson_types::Struct;
use prost::Message;
use prost::bytes::{Buf, BufMut};
use prost::encoding::{DecodeContext, WireType, encode_key, encode_varint};
use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};

/// The encoded fields of a `Struct` message (its map entries, field 1).
#[derive(Clone, Default)]
pub struct RawStruct {
    encoded: Vec<u8>,
}

impl RawStruct {
    /// The wire form of a JSON object's text, or None when the text is not
    /// a JSON object. Numbers become doubles, as in `Struct` itself.
    pub fn from_json_object(text: &str) -> Option<Self> {
        let mut encoded = Vec::with_capacity(text.len() + text.len() / 4);
        let mut de = serde_json::Deserializer::from_str(text);
        ObjectWriter(&mut encoded).deserialize(&mut de).ok()?;
        de.end().ok()?;
        Some(Self { encoded })
    }

    /// The fields, decoded.
    pub fn to_struct(&self) -> Result<Struct, prost::DecodeError> {
        Struct::decode(self.encoded.as_slice())
    }
}

impl From<Struct> for RawStruct {
    fn from(s: Struct) -> Self {
        Self { encoded: s.encode_to_vec() }
    }
}

impl Message for RawStruct {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.encoded);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        if tag != 1 {
            return prost::encoding::skip_field(wire_type, tag, buf, ctx);
        }
        // An entry is kept as sent; `to_struct` checks it when the fields
        // are read.
        let mut entry = Vec::new();
        prost::encoding::bytes::merge(wire_type, &mut entry, buf, ctx)?;
        encode_key(1, WireType::LengthDelimited, &mut self.encoded);
        encode_varint(entry.len() as u64, &mut self.encoded);
        self.encoded.extend_from_slice(&entry);
        Ok(())
    }

    fn encoded_len(&self) -> usize {
        self.encoded.len()
    }

    fn clear(&mut self) {
        self.encoded.clear();
    }
}

/// Equal when the fields are: a map's entries may come in any order.
impl PartialEq for RawStruct {
    fn eq(&self, other: &Self) -> bool {
        self.encoded == other.encoded || self.to_struct().ok() == other.to_struct().ok()
    }
}

impl fmt::Debug for RawStruct {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.to_struct() {
            Ok(s) => fmt::Debug::fmt(&s, f),
            Err(err) => write!(f, "RawStruct(undecodable: {err})"),
        }
    }
}

/// Canonical proto3 JSON, as `Struct`'s: a plain JSON object.
impl serde::Serialize for RawStruct {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_struct().map_err(serde::ser::Error::custom)?.serialize(serializer)
    }
}

/// Written straight into the wire form, as the stored text is.
impl<'de> serde::Deserialize<'de> for RawStruct {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut encoded = Vec::new();
        ObjectWriter(&mut encoded).deserialize(deserializer)?;
        Ok(Self { encoded })
    }
}

/// Starts a length-delimited field whose length is not known yet: one byte
/// is kept for it, enough for anything under 128 bytes.
fn begin(buf: &mut Vec<u8>, field: u32) -> usize {
    encode_key(field, WireType::LengthDelimited, buf);
    buf.push(0);
    buf.len()
}

/// Ends the field begun at `start`, widening its length if it needs more
/// than the one byte kept.
fn end(buf: &mut Vec<u8>, start: usize) {
    let len = buf.len() - start;
    if len < 0x80 {
        buf[start - 1] = len as u8;
    } else {
        let mut varint = Vec::with_capacity(10);
        encode_varint(len as u64, &mut varint);
        buf.splice(start - 1..start, varint);
    }
}

fn string_field(buf: &mut Vec<u8>, field: u32, s: &str) {
    encode_key(field, WireType::LengthDelimited, buf);
    encode_varint(s.len() as u64, buf);
    buf.extend_from_slice(s.as_bytes());
}

/// Writes a JSON object as a `Struct`'s fields: one map entry (`key` = 1,
/// `value` = 2) per member.
struct ObjectWriter<'a>(&'a mut Vec<u8>);

impl<'de> DeserializeSeed<'de> for ObjectWriter<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ObjectWriter<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        loop {
            let entry = begin(self.0, 1);
            if map.next_key_seed(KeyWriter(self.0))?.is_none() {
                // No more members: take back the entry just begun.
                self.0.truncate(entry - 2);
                return Ok(());
            }
            let value = begin(self.0, 2);
            map.next_value_seed(ValueWriter(self.0))?;
            end(self.0, value);
            end(self.0, entry);
        }
    }
}

/// Writes a member's name as the map entry's key.
struct KeyWriter<'a>(&'a mut Vec<u8>);

impl<'de> DeserializeSeed<'de> for KeyWriter<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeyWriter<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a member name")
    }

    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<(), E> {
        string_field(self.0, 1, s);
        Ok(())
    }
}

/// Writes a JSON value as the fields of a `google.protobuf.Value`.
struct ValueWriter<'a>(&'a mut Vec<u8>);

impl<'de> DeserializeSeed<'de> for ValueWriter<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl ValueWriter<'_> {
    fn number(self, n: f64) {
        encode_key(2, WireType::SixtyFourBit, self.0);
        self.0.extend_from_slice(&n.to_le_bytes());
    }
}

impl<'de> Visitor<'de> for ValueWriter<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        encode_key(1, WireType::Varint, self.0);
        self.0.push(0);
        Ok(())
    }

    fn visit_bool<E: serde::de::Error>(self, b: bool) -> Result<(), E> {
        encode_key(4, WireType::Varint, self.0);
        self.0.push(u8::from(b));
        Ok(())
    }

    fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<(), E> {
        self.number(n as f64);
        Ok(())
    }

    fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<(), E> {
        self.number(n as f64);
        Ok(())
    }

    fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<(), E> {
        self.number(n);
        Ok(())
    }

    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<(), E> {
        string_field(self.0, 3, s);
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        let start = begin(self.0, 5);
        ObjectWriter(self.0).visit_map(map)?;
        end(self.0, start);
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let list = begin(self.0, 6);
        loop {
            let value = begin(self.0, 1);
            if seq.next_element_seed(ValueWriter(self.0))?.is_none() {
                self.0.truncate(value - 2);
                break;
            }
            end(self.0, value);
        }
        end(self.0, list);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use pbjson_types::Value;
    use pbjson_types::value::Kind;

    use super::*;

    /// The text as pbjson parses it, with its one difference made good:
    /// pbjson reads a JSON null as a `Value` without a kind, where the
    /// canonical form (and this type) has `null_value`.
    fn parsed(text: &str) -> Struct {
        fn value(v: &mut Value) {
            match &mut v.kind {
                None => v.kind = Some(Kind::NullValue(0)),
                Some(Kind::StructValue(s)) => fields(s),
                Some(Kind::ListValue(l)) => l.values.iter_mut().for_each(value),
                Some(_) => {}
            }
        }
        fn fields(s: &mut Struct) {
            s.fields.values_mut().for_each(value);
        }
        let mut s = serde_json::from_str::<Struct>(text).unwrap();
        fields(&mut s);
        s
    }

    #[test]
    fn json_objects_encode_as_struct_does() {
        let long = "x".repeat(300);
        for text in [
            r#"{}"#,
            r#"{"event":"call_ended","n":12}"#,
            r#"{"a":null,"b":true,"c":false,"d":-1.5,"e":"","f":[],"g":{}}"#,
            r#"{"nested":{"list":[1,"two",[3,{"four":4}],null],"deep":{"deeper":{"deepest":1e300}}}}"#,
            r#"{"big":9007199254740991,"neg":-9007199254740991,"esc":"a\"b\\c\u00e9\n"}"#,
            &format!(r#"{{"long":"{long}","list":["{long}","{long}"],"obj":{{"k":"{long}"}}}}"#),
        ] {
            let raw = RawStruct::from_json_object(text).unwrap_or_else(|| panic!("{text}"));
            assert_eq!(raw.to_struct().unwrap(), parsed(text), "{text}");
            // What a client decodes is what the stored text says.
            let sent = raw.encode_to_vec();
            assert_eq!(Struct::decode(sent.as_slice()).unwrap(), parsed(text), "{text}");
            assert_eq!(raw, RawStruct::from(parsed(text)), "{text}");
        }
    }

    #[test]
    fn numbers_are_doubles_whatever_their_size() {
        let raw = RawStruct::from_json_object(r#"{"n":18446744073709551615,"m":1e400}"#);
        // 1e400 is no double: serde_json refuses it, as it would any JSON
        // number out of range.
        assert!(raw.is_none());
        let raw = RawStruct::from_json_object(r#"{"n":18446744073709551615}"#).unwrap();
        let n = &raw.to_struct().unwrap().fields["n"];
        assert_eq!(n.kind, Some(Kind::NumberValue(18446744073709551615u64 as f64)));
    }

    #[test]
    fn anything_but_a_json_object_is_refused() {
        for text in ["", "[]", "1", "\"s\"", "null", "{", r#"{"a":}"#, r#"{"a":1} x"#, r#"{1:2}"#] {
            assert!(RawStruct::from_json_object(text).is_none(), "{text}");
        }
    }

    #[test]
    fn a_decoded_struct_is_kept_as_sent_and_reads_back() {
        let s = parsed(r#"{"a":[1,{"b":"c"}],"d":"e"}"#);
        let mut wire = Vec::new();
        s.encode(&mut wire).unwrap();
        let raw = RawStruct::decode(wire.as_slice()).unwrap();
        assert_eq!(raw.to_struct().unwrap(), s);
        assert_eq!(raw.encode_to_vec(), wire);
        let json = serde_json::to_value(&raw).unwrap();
        assert_eq!(json, serde_json::json!({"a": [1.0, {"b": "c"}], "d": "e"}));
        assert_eq!(serde_json::from_value::<RawStruct>(json).unwrap(), raw);
    }
}
