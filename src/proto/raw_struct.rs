//! `google.protobuf.Struct` kept as its encoded bytes.
//!
//! A webhook's payload is stored as JSON text and read back on every page of
//! logs. Parsed into a `Struct` (a hash map of `Value`s, each key and string
//! its own allocation), encoded, then dropped, it was about a fifth of the
//! instructions of a listing page in the server (docs/PERFORMANCE.md). The
//! contract's messages carry this type instead (build.rs maps
//! `.google.protobuf.Struct` to it): the stored text is written straight into
//! the wire form, and the wire form is what a page sends. On the wire and in
//! JSON it is a `Struct`, with two differences from pbjson's: a JSON `null`
//! is written as `null_value` (pbjson left the kind unset, which other
//! languages' JSON printers refuse), and objects and arrays nest at most
//! [`MAX_DEPTH`] levels. [`RawStruct::to_struct`] decodes it where the
//! fields themselves are needed: Dispatch (which so copies a payload's
//! entries once more than before, and decodes them as it did) and tests.

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
        let mut w = Writer::with_capacity(text.len() + text.len() / 4);
        let mut de = serde_json::Deserializer::from_str(text);
        ObjectWriter(&mut w).deserialize(&mut de).ok()?;
        de.end().ok()?;
        Some(Self { encoded: w.finish() })
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
        match (self.to_struct(), other.to_struct()) {
            (Ok(a), Ok(b)) => a == b,
            _ => self.encoded == other.encoded,
        }
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
        let mut w = Writer::with_capacity(256);
        ObjectWriter(&mut w).deserialize(deserializer)?;
        Ok(Self { encoded: w.finish() })
    }
}

/// Deepest nesting of objects and arrays accepted. A `Struct` level is three
/// nested messages (map entry, `Value`, `Struct`), and decoders stop at 100
/// (prost's limit, and other languages'): 32 levels still decode inside a
/// `WebhookLog` inside a response.
pub const MAX_DEPTH: usize = 32;

/// What a payload or metadata nested past [`MAX_DEPTH`] is told.
pub fn too_deep() -> String {
    format!("objects and arrays must not nest deeper than {MAX_DEPTH} levels")
}

/// Writes protobuf whose nested lengths are known only once their content
/// is written: each length-delimited field keeps one byte for its length,
/// enough under 128 bytes, and is widened in place when it needs more.
/// Widening moves what follows, so a large value is moved once per
/// enclosing field: bounded by [`MAX_DEPTH`] (at most three fields a
/// level). Fixed five-byte slots moved into place once at the end avoided
/// that but doubled the cost of the common small body (callgrind, a page of
/// 50 logs).
struct Writer {
    out: Vec<u8>,
    depth: usize,
}

impl Writer {
    fn with_capacity(bytes: usize) -> Self {
        Self { out: Vec::with_capacity(bytes), depth: 0 }
    }

    /// Begins a length-delimited field; returns where its content starts.
    fn begin(&mut self, field: u32) -> usize {
        encode_key(field, WireType::LengthDelimited, &mut self.out);
        self.out.push(0);
        self.out.len()
    }

    /// Ends the field whose content starts at `start`.
    fn end(&mut self, start: usize) {
        let len = self.out.len() - start;
        if len < 0x80 {
            self.out[start - 1] = len as u8;
        } else {
            let mut varint = Vec::with_capacity(10);
            encode_varint(len as u64, &mut varint);
            self.out.splice(start - 1..start, varint);
        }
    }

    /// Takes back the field begun at `start`, with nothing written in it
    /// (every field begun here has a one-byte key).
    fn abandon(&mut self, start: usize) {
        self.out.truncate(start - 2);
    }

    fn nest<E: serde::de::Error>(&mut self) -> Result<(), E> {
        self.depth += 1;
        match self.depth > MAX_DEPTH {
            true => Err(E::custom(too_deep())),
            false => Ok(()),
        }
    }

    fn unnest(&mut self) {
        self.depth -= 1;
    }

    fn string(&mut self, field: u32, s: &str) {
        encode_key(field, WireType::LengthDelimited, &mut self.out);
        encode_varint(s.len() as u64, &mut self.out);
        self.out.extend_from_slice(s.as_bytes());
    }

    fn finish(self) -> Vec<u8> {
        self.out
    }
}

/// Writes a JSON object as a `Struct`'s fields: one map entry (`key` = 1,
/// `value` = 2) per member.
struct ObjectWriter<'a>(&'a mut Writer);

impl<'de> DeserializeSeed<'de> for ObjectWriter<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ObjectWriter<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object (google.protobuf.Struct)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.0.nest()?;
        loop {
            let entry = self.0.begin(1);
            if map.next_key_seed(KeyWriter(self.0))?.is_none() {
                // No more members: take back the entry just begun.
                self.0.abandon(entry);
                self.0.unnest();
                return Ok(());
            }
            let value = self.0.begin(2);
            map.next_value_seed(ValueWriter(self.0))?;
            self.0.end(value);
            self.0.end(entry);
        }
    }
}

/// Writes a member's name as the map entry's key.
struct KeyWriter<'a>(&'a mut Writer);

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
        self.0.string(1, s);
        Ok(())
    }
}

/// Writes a JSON value as the fields of a `google.protobuf.Value`.
struct ValueWriter<'a>(&'a mut Writer);

impl<'de> DeserializeSeed<'de> for ValueWriter<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl ValueWriter<'_> {
    fn number(self, n: f64) {
        encode_key(2, WireType::SixtyFourBit, &mut self.0.out);
        self.0.out.extend_from_slice(&n.to_le_bytes());
    }
}

impl<'de> Visitor<'de> for ValueWriter<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        encode_key(1, WireType::Varint, &mut self.0.out);
        self.0.out.push(0);
        Ok(())
    }

    fn visit_bool<E: serde::de::Error>(self, b: bool) -> Result<(), E> {
        encode_key(4, WireType::Varint, &mut self.0.out);
        self.0.out.push(u8::from(b));
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
        self.0.string(3, s);
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        let start = self.0.begin(5);
        ObjectWriter(self.0).visit_map(map)?;
        self.0.end(start);
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.0.nest()?;
        let list = self.0.begin(6);
        loop {
            let value = self.0.begin(1);
            if seq.next_element_seed(ValueWriter(self.0))?.is_none() {
                self.0.abandon(value);
                break;
            }
            self.0.end(value);
        }
        self.0.end(list);
        self.0.unnest();
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
    fn lengths_of_every_width_are_written_minimally() {
        // 127 and 128 bytes of content either side of a one-byte length;
        // 20,000 needs three bytes; nested, each level's length counts the
        // narrowed lengths inside it.
        for n in [0, 1, 120, 121, 122, 127, 128, 129, 16_000, 20_000] {
            let long = "y".repeat(n);
            let text = format!(r#"{{"k":"{long}","l":[["{long}"],{{"m":{{"n":"{long}"}}}}]}}"#);
            let raw = RawStruct::from_json_object(&text).unwrap();
            assert_eq!(raw.to_struct().unwrap(), parsed(&text), "{n}");
            // Minimal: the same bytes prost writes for the same fields,
            // one member at a time (a map's order is not fixed).
            for member in ["k", "l"] {
                let one =
                    format!(r#"{{"{member}":{}}}"#, &serde_json::from_str::<serde_json::Value>(&text).unwrap()[member]);
                let ours = RawStruct::from_json_object(&one).unwrap().encoded;
                assert_eq!(ours, parsed(&one).encode_to_vec(), "{n} {member}");
            }
        }
    }

    #[test]
    fn nesting_is_bounded_and_the_deepest_allowed_decodes_inside_a_response() {
        let nested = |depth: usize, open: &str, close: &str, leaf: &str| {
            format!(r#"{{"a":{}{leaf}{}}}"#, open.repeat(depth - 1), close.repeat(depth - 1))
        };
        let deepest = nested(MAX_DEPTH, r#"{"a":"#, "}", "1");
        let raw = RawStruct::from_json_object(&deepest).unwrap();
        // As a client decodes it: a response holding a log holding it.
        let page = crate::proto::v1::ListWebhookLogsResponse {
            logs: vec![crate::proto::v1::WebhookLog { payload: Some(raw), ..Default::default() }],
            next_page_token: String::new(),
        };
        let sent = page.encode_to_vec();
        // A client whose generated code has a real Struct there: prost's
        // budget of 100 nested messages counts from the response.
        #[derive(Clone, PartialEq, prost::Message)]
        struct Log {
            #[prost(message, optional, tag = "10")]
            payload: Option<Struct>,
        }
        #[derive(Clone, PartialEq, prost::Message)]
        struct Page {
            #[prost(message, repeated, tag = "1")]
            logs: Vec<Log>,
        }
        let back = Page::decode(sent.as_slice()).unwrap();
        assert_eq!(back.logs[0].payload.as_ref(), Some(&parsed(&deepest)));
        assert!(RawStruct::from_json_object(&nested(MAX_DEPTH + 1, r#"{"a":"#, "}", "1")).is_none());
        assert!(RawStruct::from_json_object(&nested(MAX_DEPTH, "[", "]", "1")).is_some());
        assert!(RawStruct::from_json_object(&nested(MAX_DEPTH + 1, "[", "]", "1")).is_none());
        let err = serde_json::from_str::<RawStruct>(&nested(MAX_DEPTH + 1, "[", "]", "1")).unwrap_err();
        assert!(err.to_string().contains("must not nest deeper than 32 levels"), "{err}");
        let err = serde_json::from_str::<RawStruct>("[1]").unwrap_err();
        assert!(err.to_string().contains("a JSON object (google.protobuf.Struct)"), "{err}");
    }

    #[test]
    fn a_struct_sent_in_pieces_merges_and_bad_input_is_refused_when_framed_badly_or_read() {
        let a = parsed(r#"{"a":1,"b":"x"}"#).encode_to_vec();
        let b = parsed(r#"{"b":"y","c":[true]}"#).encode_to_vec();
        // A message field sent twice is merged: the later entry wins.
        let mut wire = Vec::new();
        for piece in [&a, &b] {
            encode_key(8, WireType::LengthDelimited, &mut wire);
            encode_varint(piece.len() as u64, &mut wire);
            wire.extend_from_slice(piece);
        }
        // Field 8 of a DispatchRequest is its payload.
        let req = crate::proto::v1::DispatchRequest::decode(wire.as_slice()).unwrap();
        assert_eq!(req.payload.unwrap().to_struct().unwrap(), parsed(r#"{"a":1,"b":"y","c":[true]}"#));
        // An unknown field inside the Struct is skipped, as prost skips it.
        let mut with_unknown = a.clone();
        encode_key(7, WireType::Varint, &mut with_unknown);
        with_unknown.push(1);
        assert_eq!(
            RawStruct::decode(with_unknown.as_slice()).unwrap().to_struct().unwrap(),
            parsed(r#"{"a":1,"b":"x"}"#)
        );
        // The entries' field with the wrong wire type, and a cut entry.
        let mut wrong = Vec::new();
        encode_key(1, WireType::Varint, &mut wrong);
        wrong.push(1);
        assert!(RawStruct::decode(wrong.as_slice()).is_err());
        assert!(RawStruct::decode(&a[..a.len() - 1]).is_err());
        // An entry that frames but does not decode fails when read.
        let mut bad = Vec::new();
        encode_key(1, WireType::LengthDelimited, &mut bad);
        bad.extend_from_slice(&[3, 0x0a, 0x05, b'x']);
        let raw = RawStruct::decode(bad.as_slice()).unwrap();
        assert!(raw.to_struct().is_err());
        assert_ne!(raw, RawStruct::default(), "undecodable is not equal to an empty Struct");
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
