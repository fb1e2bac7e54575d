//! Manifest media types, descriptors, and structural validation of manifests.
//!
//! Owns the four manifest kinds the registry stores (OCI image manifest, OCI
//! image index, Docker image manifest v2 schema 2, Docker manifest list), the
//! RFC 6838 media-type grammar used for descriptor `mediaType` and
//! `artifactType`, the OCI descriptor (image-spec `descriptor.md`), and
//! [`ParsedManifest::parse`], which decides a pushed manifest's kind from its
//! `Content-Type` and body and checks its structure.
//!
//! Invariants: a [`ParsedManifest`] came from a JSON object with
//! `schemaVersion` 2 whose kind is unambiguous; an image manifest has a config
//! descriptor, an index has a `manifests` array; every descriptor in it has a
//! valid media type, a sha256 digest, a size `>= 0`, and, if it embeds `data`,
//! data that is base64 of exactly the described content; no JSON object in it
//! has the same key twice. Unknown fields are ignored, as the image-spec requires. Nothing here reads blobs or checks
//! that referenced content exists: that is the caller's job.

use super::{Digest, TypesError};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Media type of an OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Media type of an OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Media type of a Docker image manifest v2 schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Media type of a Docker manifest list.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Media type of the OCI empty JSON descriptor (`{}`), used as an artifact's config.
pub const OCI_EMPTY_JSON: &str = "application/vnd.oci.empty.v1+json";
/// Digest of the two bytes `{}`, the content of the OCI empty descriptor.
pub const OCI_EMPTY_JSON_DIGEST: &str =
    "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";
/// Media type of an OCI image config.
pub const OCI_IMAGE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Media type of a Docker image config.
pub const DOCKER_IMAGE_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// Which of the four supported manifest formats a manifest is.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub enum ManifestKind {
    /// `application/vnd.oci.image.manifest.v1+json`.
    OciManifest,
    /// `application/vnd.oci.image.index.v1+json`.
    OciIndex,
    /// `application/vnd.docker.distribution.manifest.v2+json`.
    DockerManifest,
    /// `application/vnd.docker.distribution.manifest.list.v2+json`.
    DockerManifestList,
}

impl ManifestKind {
    /// Every kind, in declaration order.
    pub const ALL: [ManifestKind; 4] = [
        ManifestKind::OciManifest,
        ManifestKind::OciIndex,
        ManifestKind::DockerManifest,
        ManifestKind::DockerManifestList,
    ];

    /// The canonical media type of this kind.
    pub fn media_type(&self) -> &'static str {
        match self {
            ManifestKind::OciManifest => OCI_MANIFEST,
            ManifestKind::OciIndex => OCI_INDEX,
            ManifestKind::DockerManifest => DOCKER_MANIFEST,
            ManifestKind::DockerManifestList => DOCKER_MANIFEST_LIST,
        }
    }

    /// The kind a media type (e.g. a `Content-Type` value) names, ignoring
    /// parameters after `;`, surrounding whitespace, and ASCII case.
    pub fn from_media_type(media_type: &str) -> Option<ManifestKind> {
        let essence = media_type.split(';').next().unwrap_or("").trim();
        ManifestKind::ALL
            .into_iter()
            .find(|k| k.media_type().eq_ignore_ascii_case(essence))
    }

    /// Whether this kind lists other manifests (index / manifest list) rather than layers.
    pub fn is_index(&self) -> bool {
        matches!(
            self,
            ManifestKind::OciIndex | ManifestKind::DockerManifestList
        )
    }
}

impl std::fmt::Display for ManifestKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.media_type())
    }
}

/// A validated media type: `type/subtype` with RFC 6838 §4.2 restricted names,
/// optionally followed by RFC 9110 parameters (`; name=value`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct MediaType(String);

impl MediaType {
    /// Parses a media type; anything else is [`TypesError::InvalidMediaType`].
    /// No whitespace is allowed except around parameters.
    pub fn parse(s: &str) -> Result<MediaType, TypesError> {
        if is_media_type(s.as_bytes()) {
            Ok(MediaType(s.to_owned()))
        } else {
            Err(TypesError::InvalidMediaType(s.to_owned()))
        }
    }

    /// The media type as written, parameters included.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The `type/subtype` part, without parameters.
    pub fn essence(&self) -> &str {
        let end = self.0.find([';', ' ', '\t']).unwrap_or(self.0.len());
        &self.0[..end]
    }
}

super::string_newtype_impls!(MediaType);

/// `type "/" subtype *( OWS ";" OWS [ token "=" ( token / quoted-string ) ] )`.
fn is_media_type(b: &[u8]) -> bool {
    let Some(i) = restricted_name(b, 0) else {
        return false;
    };
    if b.get(i) != Some(&b'/') {
        return false;
    }
    let Some(mut i) = restricted_name(b, i + 1) else {
        return false;
    };
    loop {
        if i == b.len() {
            return true;
        }
        i = skip_ows(b, i);
        if b.get(i) != Some(&b';') {
            return false;
        }
        i = skip_ows(b, i + 1);
        if i < b.len() && is_tchar(b[i]) {
            let Some(after_value) = parameter(b, i) else {
                return false;
            };
            i = after_value;
        }
    }
}

/// RFC 6838 `restricted-name` starting at `start`; returns the index after it.
fn restricted_name(b: &[u8], start: usize) -> Option<usize> {
    let first = *b.get(start)?;
    if !first.is_ascii_alphanumeric() {
        return None;
    }
    let mut i = start + 1;
    while i < b.len()
        && (b[i].is_ascii_alphanumeric()
            || matches!(
                b[i],
                b'!' | b'#' | b'$' | b'&' | b'-' | b'^' | b'_' | b'.' | b'+'
            ))
    {
        i += 1;
    }
    (i - start <= 127).then_some(i)
}

/// `token "=" ( token / quoted-string )` starting at `start`; returns the index after it.
fn parameter(b: &[u8], start: usize) -> Option<usize> {
    let mut i = start;
    while i < b.len() && is_tchar(b[i]) {
        i += 1;
    }
    if i == start || b.get(i) != Some(&b'=') {
        return None;
    }
    i += 1;
    if b.get(i) == Some(&b'"') {
        i += 1;
        loop {
            match *b.get(i)? {
                b'"' => return Some(i + 1),
                b'\\' => {
                    let escaped = *b.get(i + 1)?;
                    if !(escaped == b'\t'
                        || escaped == b' '
                        || (0x21..=0x7e).contains(&escaped)
                        || escaped >= 0x80)
                    {
                        return None;
                    }
                    i += 2;
                }
                c if c == b'\t'
                    || c == b' '
                    || c == 0x21
                    || (0x23..=0x7e).contains(&c)
                    || c >= 0x80 =>
                {
                    i += 1
                }
                _ => return None,
            }
        }
    }
    let value_start = i;
    while i < b.len() && is_tchar(b[i]) {
        i += 1;
    }
    (i > value_start).then_some(i)
}

/// RFC 9110 `tchar`.
fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(
            c,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

fn skip_ows(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t') {
        i += 1;
    }
    i
}

/// An OCI content descriptor: what a manifest says about a piece of content.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the referenced content (RFC 6838).
    pub media_type: String,
    /// Digest of the referenced content.
    pub digest: Digest,
    /// Size of the referenced content in bytes; `>= 0` once validated.
    pub size: i64,
    /// Where the content may be fetched from instead of this registry (foreign layers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
    /// Arbitrary string metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// The artifact type of the referenced manifest (used by the referrers API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// The platform of the referenced manifest (index entries), kept as raw JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Value>,
    /// The referenced content itself, base64-encoded (embedded content).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
}

impl Descriptor {
    /// A descriptor with only the three required fields set.
    pub fn new(media_type: impl Into<String>, digest: Digest, size: i64) -> Descriptor {
        Descriptor {
            media_type: media_type.into(),
            digest,
            size,
            urls: None,
            annotations: None,
            artifact_type: None,
            platform: None,
            data: None,
        }
    }

    /// Checks what serde cannot: the media types, `size >= 0`, `platform` is an
    /// object, and embedded `data` is base64 of exactly the described content.
    /// Failures are [`TypesError::InvalidManifest`] naming the problem.
    pub fn validate(&self) -> Result<(), TypesError> {
        self.problem()
            .map_or(Ok(()), |p| Err(TypesError::InvalidManifest(p)))
    }

    fn problem(&self) -> Option<String> {
        if MediaType::parse(&self.media_type).is_err() {
            return Some(format!("invalid mediaType {:?}", self.media_type));
        }
        if self.size < 0 {
            return Some(format!("negative size {}", self.size));
        }
        if let Some(at) = &self.artifact_type
            && !at.is_empty()
            && MediaType::parse(at).is_err()
        {
            return Some(format!("invalid artifactType {at:?}"));
        }
        if let Some(p) = &self.platform
            && !p.is_object()
        {
            return Some("platform is not an object".to_owned());
        }
        if let Some(data) = &self.data {
            let Some(bytes) = decode_base64(data) else {
                return Some("data is not valid base64".to_owned());
            };
            if u64::try_from(bytes.len()).ok() != Some(self.size_u64()) {
                return Some(format!(
                    "data is {} bytes but size is {}",
                    bytes.len(),
                    self.size
                ));
            }
            if !self.digest.matches(&bytes) {
                return Some(format!("data does not match digest {}", self.digest));
            }
        }
        None
    }

    /// The size as `u64` (0 if negative, which a validated descriptor never is).
    pub fn size_u64(&self) -> u64 {
        u64::try_from(self.size).unwrap_or(0)
    }

    /// Whether this is a foreign (non-distributable) layer: it lists `urls`, so
    /// the registry need not hold its content.
    pub fn is_foreign(&self) -> bool {
        self.urls.as_ref().is_some_and(|u| !u.is_empty())
    }
}

/// Strict RFC 4648 §4 base64 (standard alphabet, padding required).
fn decode_base64(s: &str) -> Option<Vec<u8>> {
    fn sextet(c: u8) -> Option<u32> {
        Some(u32::from(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        }))
    }
    let b = s.as_bytes();
    if !b.len().is_multiple_of(4) {
        return None;
    }
    let chunks = b.len() / 4;
    let mut out = Vec::with_capacity(chunks * 3);
    for (i, chunk) in b.chunks_exact(4).enumerate() {
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && i + 1 != chunks) {
            return None;
        }
        let mut n = 0u32;
        for &c in &chunk[..4 - pad] {
            n = (n << 6) | sextet(c)?;
        }
        n <<= 6 * pad;
        out.extend_from_slice(&n.to_be_bytes()[1..4 - pad]);
    }
    Some(out)
}

/// A structurally valid manifest of one of the four supported kinds.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ParsedManifest {
    /// The manifest's kind, from its `Content-Type`, its `mediaType`, or its shape.
    pub kind: ManifestKind,
    /// The config descriptor (image manifests only).
    pub config: Option<Descriptor>,
    /// The layer descriptors in order (image manifests only; may be empty for artifacts).
    pub layers: Vec<Descriptor>,
    /// The child manifest descriptors (indexes / manifest lists only).
    pub manifests: Vec<Descriptor>,
    /// The manifest this one refers to (referrers API), if any.
    pub subject: Option<Descriptor>,
    /// The top-level `artifactType`, if set and non-empty.
    pub artifact_type: Option<String>,
    /// The top-level annotations, if any.
    pub annotations: Option<BTreeMap<String, String>>,
}

impl ParsedManifest {
    /// Parses and validates a manifest body pushed with the given `Content-Type`.
    ///
    /// The kind is the one `content_type` names; when that is absent, empty or
    /// `application/json` it is the body's `mediaType`; when that is absent too
    /// it is inferred from the shape (`manifests` → OCI index, `config` and
    /// `layers` → OCI manifest). A `Content-Type` naming another media type, a
    /// body `mediaType` that is not a manifest kind, or the two disagreeing,
    /// is an error. Every failure is [`TypesError::InvalidManifest`].
    pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<ParsedManifest, TypesError> {
        let header_kind = match content_type.map(str::trim) {
            None | Some("") => None,
            Some(ct) if is_generic_json(ct) => None,
            Some(ct) => Some(
                ManifestKind::from_media_type(ct)
                    .ok_or_else(|| invalid(format!("unsupported manifest media type {ct:?}")))?,
            ),
        };
        reject_duplicate_keys(bytes)?;
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| invalid(format!("malformed json: {e}")))?;
        let Value::Object(obj) = value else {
            return Err(invalid("manifest is not a json object"));
        };

        match present(&obj, "schemaVersion") {
            Some(v) if v.as_u64() == Some(2) => {}
            Some(v) => {
                return Err(invalid(format!(
                    "unsupported schemaVersion {}, only 2 is supported",
                    brief(v)
                )));
            }
            None => return Err(invalid("missing schemaVersion")),
        }

        let body_kind = match present(&obj, "mediaType") {
            None => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s)) => Some(
                ManifestKind::from_media_type(s)
                    .ok_or_else(|| invalid(format!("unsupported manifest media type {s:?}")))?,
            ),
            Some(v) => return Err(invalid(format!("mediaType is {}, not a string", brief(v)))),
        };
        let kind = match (header_kind, body_kind) {
            (Some(h), Some(b)) if h != b => {
                return Err(invalid(format!(
                    "media type mismatch: content type is {h} but manifest mediaType is {b}"
                )));
            }
            (Some(k), _) | (None, Some(k)) => k,
            (None, None) => infer_kind(&obj)?,
        };

        let mut parsed = ParsedManifest {
            kind,
            config: None,
            layers: Vec::new(),
            manifests: Vec::new(),
            subject: None,
            artifact_type: None,
            annotations: None,
        };
        if kind.is_index() {
            parsed.manifests = descriptor_array(&obj, "manifests")?;
        } else {
            let config = present(&obj, "config").ok_or_else(|| invalid("missing config"))?;
            parsed.config = Some(descriptor(config, "config")?);
            parsed.layers = descriptor_array(&obj, "layers")?;
        }
        parsed.subject = present(&obj, "subject")
            .map(|v| descriptor(v, "subject"))
            .transpose()?;
        parsed.artifact_type = match present(&obj, "artifactType") {
            None => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s)) => {
                MediaType::parse(s).map_err(|_| invalid(format!("invalid artifactType {s:?}")))?;
                Some(s.clone())
            }
            Some(v) => {
                return Err(invalid(format!(
                    "artifactType is {}, not a string",
                    brief(v)
                )));
            }
        };
        parsed.annotations = present(&obj, "annotations")
            .map(|v| {
                BTreeMap::<String, String>::deserialize(v)
                    .map_err(|e| invalid(format!("annotations: {e}")))
            })
            .transpose()?;
        Ok(parsed)
    }

    /// The canonical media type of this manifest's kind.
    pub fn media_type(&self) -> &'static str {
        self.kind.media_type()
    }

    /// The blobs this manifest needs the registry to hold: the config and every
    /// layer that is not foreign (see [`Descriptor::is_foreign`]). Empty for indexes.
    pub fn referenced_blobs(&self) -> impl Iterator<Item = &Descriptor> {
        self.config
            .iter()
            .chain(self.layers.iter().filter(|d| !d.is_foreign()))
    }

    /// The child manifests of an index or manifest list (empty for image manifests).
    pub fn child_manifests(&self) -> &[Descriptor] {
        &self.manifests
    }

    /// The artifact type the referrers API reports: the top-level
    /// `artifactType`, else (image manifests only) the config's media type.
    pub fn effective_artifact_type(&self) -> Option<&str> {
        self.artifact_type.as_deref().or_else(|| {
            if self.kind.is_index() {
                None
            } else {
                self.config.as_ref().map(|c| c.media_type.as_str())
            }
        })
    }
}

/// Refuses JSON in which an object has the same key twice, at any depth (after unescaping, so
/// `"a"` and `"\u0061"` are the same key). JSON parsers disagree on such objects (serde_json
/// keeps the last value, others the first or fail), so two readers could see two different
/// manifests behind one digest. One pass over the bytes with one set of keys per open object:
/// linear in the input; nesting is bounded by serde_json's recursion limit (128).
fn reject_duplicate_keys(bytes: &[u8]) -> Result<(), TypesError> {
    use serde::de::{DeserializeSeed, Error as _, MapAccess, SeqAccess, Visitor};
    use std::collections::HashSet;

    /// Walks any JSON value, checking the keys of every object in it.
    struct UniqueKeys;

    impl<'de> DeserializeSeed<'de> for UniqueKeys {
        type Value = ();
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for UniqueKeys {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a json value")
        }
        fn visit_bool<E>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E>(self, _: f64) -> Result<(), E> {
            Ok(())
        }
        fn visit_str<E>(self, _: &str) -> Result<(), E> {
            Ok(())
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            while seq.next_element_seed(UniqueKeys)?.is_some() {}
            Ok(())
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            let mut seen = HashSet::new();
            while let Some(key) = map.next_key::<String>()? {
                map.next_value_seed(UniqueKeys)?;
                if let Some(key) = seen.replace(key) {
                    return Err(A::Error::custom(format!("duplicate key {key:?}")));
                }
            }
            Ok(())
        }
    }

    let mut de = serde_json::Deserializer::from_slice(bytes);
    UniqueKeys
        .deserialize(&mut de)
        .and_then(|()| de.end())
        .map_err(|e| invalid(format!("malformed json: {e}")))
}

fn invalid(detail: impl Into<String>) -> TypesError {
    TypesError::InvalidManifest(detail.into())
}

/// The field's value, treating JSON `null` as absent.
fn present<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

/// A short description of a JSON value for an error message (never the whole value).
fn brief(v: &Value) -> String {
    match v {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(_) => "a string".to_owned(),
        Value::Array(_) => "an array".to_owned(),
        Value::Object(_) => "an object".to_owned(),
    }
}

/// `application/json` (any case, any parameters): says nothing about the kind.
fn is_generic_json(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .eq_ignore_ascii_case("application/json")
}

fn infer_kind(obj: &Map<String, Value>) -> Result<ManifestKind, TypesError> {
    if obj.contains_key("manifests") {
        Ok(ManifestKind::OciIndex)
    } else if obj.contains_key("config") && obj.contains_key("layers") {
        Ok(ManifestKind::OciManifest)
    } else {
        Err(invalid(
            "cannot determine manifest media type: no mediaType, and neither manifests nor config and layers",
        ))
    }
}

fn descriptor(v: &Value, path: &str) -> Result<Descriptor, TypesError> {
    if !v.is_object() {
        return Err(invalid(format!(
            "{path}: {} is not a descriptor object",
            brief(v)
        )));
    }
    let d = Descriptor::deserialize(v).map_err(|e| invalid(format!("{path}: {e}")))?;
    match d.problem() {
        Some(p) => Err(invalid(format!("{path}: {p}"))),
        None => Ok(d),
    }
}

/// A required array of descriptors.
fn descriptor_array(obj: &Map<String, Value>, key: &str) -> Result<Vec<Descriptor>, TypesError> {
    match present(obj, key) {
        None => Err(invalid(format!("missing {key}"))),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| descriptor(v, &format!("{key}[{i}]")))
            .collect(),
        Some(v) => Err(invalid(format!("{key} is {}, not an array", brief(v)))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    const D1: &str = "sha256:b5b2b2c507a0944348e0303114d8d93aaaa081732b86451d9bce1f432a537bc7";
    const D2: &str = "sha256:9834876dcfb05cb167a5c24953eba58c4ac89b1adf57f28f2f9d09af107ee8f0";
    const D3: &str = "sha256:3c3a4604a545cdc127456d94e421cd355bca5b528f4a9c1905b15da2eb4a4c6b";
    const D4: &str = "sha256:ec4b8955958665577945c89419d1af06b5f7636b4ac3da7f12184802ad867736";

    fn parse(json: &str, ct: Option<&str>) -> Result<ParsedManifest, TypesError> {
        ParsedManifest::parse(json.as_bytes(), ct)
    }

    fn err(json: &str, ct: Option<&str>) -> String {
        match parse(json, ct) {
            Err(TypesError::InvalidManifest(m)) => m,
            other => panic!("expected InvalidManifest, got {other:?}"),
        }
    }

    const OCI_IMAGE: &str = r#"{
      "schemaVersion": 2,
      "mediaType": "application/vnd.oci.image.manifest.v1+json",
      "config": {
        "mediaType": "application/vnd.oci.image.config.v1+json",
        "size": 7023,
        "digest": "sha256:b5b2b2c507a0944348e0303114d8d93aaaa081732b86451d9bce1f432a537bc7"
      },
      "layers": [
        {
          "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
          "size": 32654,
          "digest": "sha256:9834876dcfb05cb167a5c24953eba58c4ac89b1adf57f28f2f9d09af107ee8f0"
        },
        {
          "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
          "size": 16724,
          "digest": "sha256:3c3a4604a545cdc127456d94e421cd355bca5b528f4a9c1905b15da2eb4a4c6b"
        },
        {
          "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
          "size": 73109,
          "digest": "sha256:ec4b8955958665577945c89419d1af06b5f7636b4ac3da7f12184802ad867736"
        }
      ],
      "annotations": {
        "com.example.key1": "value1",
        "com.example.key2": "value2"
      }
    }"#;

    const OCI_INDEX_FIXTURE: &str = r#"{
      "schemaVersion": 2,
      "mediaType": "application/vnd.oci.image.index.v1+json",
      "manifests": [
        {
          "mediaType": "application/vnd.oci.image.manifest.v1+json",
          "size": 7143,
          "digest": "sha256:e692418e4cbaf90ca69d05a66403747baa33ee08806650b51fab815ad7fc331f",
          "platform": { "architecture": "ppc64le", "os": "linux" }
        },
        {
          "mediaType": "application/vnd.oci.image.manifest.v1+json",
          "size": 7682,
          "digest": "sha256:5b0bcabd1ed22e9fb1310cf6c2dec7cdef19f0ad69efa1f392e94a4333501270",
          "platform": { "architecture": "arm64", "os": "linux", "variant": "v8" }
        }
      ],
      "annotations": { "org.opencontainers.image.ref.name": "1.0" }
    }"#;

    const DOCKER_SCHEMA2: &str = r#"{
      "schemaVersion": 2,
      "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
      "config": {
        "mediaType": "application/vnd.docker.container.image.v1+json",
        "size": 1469,
        "digest": "sha256:b5b2b2c507a0944348e0303114d8d93aaaa081732b86451d9bce1f432a537bc7"
      },
      "layers": [
        {
          "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
          "size": 2814446,
          "digest": "sha256:9834876dcfb05cb167a5c24953eba58c4ac89b1adf57f28f2f9d09af107ee8f0"
        }
      ]
    }"#;

    const DOCKER_LIST: &str = r#"{
      "schemaVersion": 2,
      "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
      "manifests": [
        {
          "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
          "size": 7143,
          "digest": "sha256:e692418e4cbaf90ca69d05a66403747baa33ee08806650b51fab815ad7fc331f",
          "platform": { "architecture": "ppc64le", "os": "linux" }
        },
        {
          "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
          "size": 7682,
          "digest": "sha256:5b0bcabd1ed22e9fb1310cf6c2dec7cdef19f0ad69efa1f392e94a4333501270",
          "platform": { "architecture": "amd64", "os": "linux", "features": ["sse4"] }
        }
      ]
    }"#;

    const OCI_ARTIFACT: &str = r#"{
      "schemaVersion": 2,
      "mediaType": "application/vnd.oci.image.manifest.v1+json",
      "artifactType": "application/vnd.example.sbom.v1+json",
      "config": {
        "mediaType": "application/vnd.oci.empty.v1+json",
        "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
        "size": 2,
        "data": "e30="
      },
      "layers": [
        {
          "mediaType": "application/spdx+json",
          "digest": "sha256:9834876dcfb05cb167a5c24953eba58c4ac89b1adf57f28f2f9d09af107ee8f0",
          "size": 4096,
          "annotations": { "org.opencontainers.image.title": "sbom.spdx.json" }
        }
      ]
    }"#;

    const HELM_CHART: &str = r#"{
      "schemaVersion": 2,
      "config": {
        "mediaType": "application/vnd.cncf.helm.config.v1+json",
        "digest": "sha256:b5b2b2c507a0944348e0303114d8d93aaaa081732b86451d9bce1f432a537bc7",
        "size": 117
      },
      "layers": [
        {
          "mediaType": "application/vnd.cncf.helm.chart.content.v1.tar+gzip",
          "digest": "sha256:9834876dcfb05cb167a5c24953eba58c4ac89b1adf57f28f2f9d09af107ee8f0",
          "size": 3657
        }
      ],
      "annotations": {
        "org.opencontainers.image.created": "2024-01-01T00:00:00Z",
        "org.opencontainers.image.title": "mychart",
        "org.opencontainers.image.version": "0.1.0"
      }
    }"#;

    const WINDOWS_FOREIGN: &str = r#"{
      "schemaVersion": 2,
      "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
      "config": {
        "mediaType": "application/vnd.docker.container.image.v1+json",
        "size": 3255,
        "digest": "sha256:b5b2b2c507a0944348e0303114d8d93aaaa081732b86451d9bce1f432a537bc7"
      },
      "layers": [
        {
          "mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
          "size": 1654613376,
          "digest": "sha256:9834876dcfb05cb167a5c24953eba58c4ac89b1adf57f28f2f9d09af107ee8f0",
          "urls": ["https://mcr.microsoft.com/v2/windows/servercore/blobs/sha256:9834876dcfb05cb167a5c24953eba58c4ac89b1adf57f28f2f9d09af107ee8f0"]
        },
        {
          "mediaType": "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
          "size": 912,
          "digest": "sha256:ec4b8955958665577945c89419d1af06b5f7636b4ac3da7f12184802ad867736",
          "urls": ["https://example.com/layer"]
        },
        {
          "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
          "size": 1024,
          "digest": "sha256:3c3a4604a545cdc127456d94e421cd355bca5b528f4a9c1905b15da2eb4a4c6b"
        }
      ]
    }"#;

    const WITH_SUBJECT: &str = r#"{
      "schemaVersion": 2,
      "mediaType": "application/vnd.oci.image.manifest.v1+json",
      "config": {
        "mediaType": "application/vnd.cncf.notary.signature",
        "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
        "size": 2
      },
      "layers": [
        {
          "mediaType": "application/jose+json",
          "digest": "sha256:3c3a4604a545cdc127456d94e421cd355bca5b528f4a9c1905b15da2eb4a4c6b",
          "size": 2090
        }
      ],
      "subject": {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": "sha256:5b0bcabd1ed22e9fb1310cf6c2dec7cdef19f0ad69efa1f392e94a4333501270",
        "size": 7682
      },
      "annotations": { "io.cncf.notary.x509chain.thumbprint#S256": "[\"abc\"]" }
    }"#;

    #[test]
    fn oci_image_manifest() {
        let m = parse(OCI_IMAGE, Some(OCI_MANIFEST)).unwrap();
        assert_eq!(m.kind, ManifestKind::OciManifest);
        assert_eq!(m.media_type(), OCI_MANIFEST);
        let config = m.config.as_ref().unwrap();
        assert_eq!(config.media_type, OCI_IMAGE_CONFIG);
        assert_eq!(config.digest.as_str(), D1);
        assert_eq!(config.size, 7023);
        assert_eq!(m.layers.len(), 3);
        assert_eq!(m.layers[2].digest.as_str(), D4);
        assert!(m.manifests.is_empty() && m.child_manifests().is_empty());
        assert_eq!(m.subject, None);
        assert_eq!(
            m.annotations.as_ref().unwrap()["com.example.key2"],
            "value2"
        );
        let blobs: Vec<&str> = m.referenced_blobs().map(|d| d.digest.as_str()).collect();
        assert_eq!(blobs, [D1, D2, D3, D4]);
        assert_eq!(m.effective_artifact_type(), Some(OCI_IMAGE_CONFIG));
        // Same result with no content type or a generic one.
        assert_eq!(parse(OCI_IMAGE, None).unwrap(), m);
        assert_eq!(parse(OCI_IMAGE, Some("application/json")).unwrap(), m);
        assert_eq!(parse(OCI_IMAGE, Some("")).unwrap(), m);
        assert_eq!(
            parse(
                OCI_IMAGE,
                Some(" Application/VND.oci.image.manifest.v1+json; charset=utf-8 ")
            )
            .unwrap(),
            m
        );
    }

    #[test]
    fn oci_index_with_platforms() {
        let m = parse(OCI_INDEX_FIXTURE, Some(OCI_INDEX)).unwrap();
        assert_eq!(m.kind, ManifestKind::OciIndex);
        assert!(m.kind.is_index());
        assert_eq!(m.config, None);
        assert!(m.layers.is_empty());
        assert_eq!(m.child_manifests().len(), 2);
        assert_eq!(m.manifests[1].platform.as_ref().unwrap()["variant"], "v8");
        assert_eq!(m.referenced_blobs().count(), 0);
        assert_eq!(m.effective_artifact_type(), None);
    }

    #[test]
    fn docker_schema2() {
        let m = parse(DOCKER_SCHEMA2, Some(DOCKER_MANIFEST)).unwrap();
        assert_eq!(m.kind, ManifestKind::DockerManifest);
        assert!(!m.kind.is_index());
        assert_eq!(m.layers.len(), 1);
        assert_eq!(m.referenced_blobs().count(), 2);
        assert_eq!(m.effective_artifact_type(), Some(DOCKER_IMAGE_CONFIG));
        assert_eq!(
            parse(DOCKER_SCHEMA2, None).unwrap().kind,
            ManifestKind::DockerManifest
        );
    }

    #[test]
    fn docker_manifest_list() {
        let m = parse(DOCKER_LIST, None).unwrap();
        assert_eq!(m.kind, ManifestKind::DockerManifestList);
        assert!(m.kind.is_index());
        assert_eq!(m.child_manifests().len(), 2);
        assert_eq!(m.child_manifests()[0].media_type, DOCKER_MANIFEST);
        assert_eq!(
            m.manifests[1].platform.as_ref().unwrap()["features"][0],
            "sse4"
        );
    }

    #[test]
    fn oci_artifact_with_empty_config() {
        let m = parse(OCI_ARTIFACT, Some(OCI_MANIFEST)).unwrap();
        assert_eq!(
            m.artifact_type.as_deref(),
            Some("application/vnd.example.sbom.v1+json")
        );
        assert_eq!(
            m.effective_artifact_type(),
            Some("application/vnd.example.sbom.v1+json")
        );
        let config = m.config.as_ref().unwrap();
        assert_eq!(config.media_type, OCI_EMPTY_JSON);
        assert_eq!(config.digest.as_str(), OCI_EMPTY_JSON_DIGEST);
        assert_eq!(config.data.as_deref(), Some("e30="));
        assert_eq!(m.referenced_blobs().count(), 2);
        assert_eq!(Digest::sha256_of(b"{}").as_str(), OCI_EMPTY_JSON_DIGEST);
    }

    #[test]
    fn artifact_with_no_layers() {
        let body = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
            "artifactType":"application/vnd.example+type",
            "config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},
            "layers":[]}"#;
        let m = parse(body, None).unwrap();
        assert!(m.layers.is_empty());
        assert_eq!(m.referenced_blobs().count(), 1);
    }

    #[test]
    fn helm_chart() {
        // Helm pushes without a mediaType in the body; the kind comes from the header or the shape.
        let m = parse(HELM_CHART, Some(OCI_MANIFEST)).unwrap();
        assert_eq!(m.kind, ManifestKind::OciManifest);
        assert_eq!(
            m.effective_artifact_type(),
            Some("application/vnd.cncf.helm.config.v1+json")
        );
        assert_eq!(
            m.layers[0].media_type,
            "application/vnd.cncf.helm.chart.content.v1.tar+gzip"
        );
        assert_eq!(parse(HELM_CHART, None).unwrap(), m);
    }

    #[test]
    fn windows_foreign_layers_are_not_referenced_blobs() {
        let m = parse(WINDOWS_FOREIGN, Some(DOCKER_MANIFEST)).unwrap();
        assert_eq!(m.layers.len(), 3);
        assert!(m.layers[0].is_foreign());
        assert!(m.layers[1].is_foreign());
        assert!(!m.layers[2].is_foreign());
        assert_eq!(m.layers[0].size, 1_654_613_376);
        let blobs: Vec<&str> = m.referenced_blobs().map(|d| d.digest.as_str()).collect();
        assert_eq!(blobs, [D1, D3]);
    }

    #[test]
    fn manifest_with_subject() {
        let m = parse(WITH_SUBJECT, Some(OCI_MANIFEST)).unwrap();
        let subject = m.subject.as_ref().unwrap();
        assert_eq!(
            subject.digest.as_str(),
            "sha256:5b0bcabd1ed22e9fb1310cf6c2dec7cdef19f0ad69efa1f392e94a4333501270"
        );
        assert_eq!(
            m.effective_artifact_type(),
            Some("application/vnd.cncf.notary.signature")
        );
        // The subject is not a blob the manifest needs.
        assert!(m.referenced_blobs().all(|d| d.digest != subject.digest));
    }

    #[test]
    fn index_with_subject_and_artifact_type() {
        let body = json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "artifactType": "application/vnd.example.bundle",
            "manifests": [],
            "subject": {"mediaType": OCI_MANIFEST, "digest": D1, "size": 1}
        })
        .to_string();
        let m = parse(&body, None).unwrap();
        assert_eq!(
            m.effective_artifact_type(),
            Some("application/vnd.example.bundle")
        );
        assert!(m.subject.is_some());
    }

    #[test]
    fn kind_inference() {
        let index = json!({"schemaVersion": 2, "manifests": []}).to_string();
        assert_eq!(parse(&index, None).unwrap().kind, ManifestKind::OciIndex);
        assert_eq!(
            parse(&index, Some(DOCKER_MANIFEST_LIST)).unwrap().kind,
            ManifestKind::DockerManifestList
        );
        let neither = json!({"schemaVersion": 2, "config": {}}).to_string();
        assert!(err(&neither, None).contains("cannot determine"));
        // A content type for an image manifest with an index body: config is missing.
        assert!(err(&index, Some(OCI_MANIFEST)).contains("missing config"));
        // Empty mediaType in the body counts as absent.
        let empty_mt = json!({"schemaVersion": 2, "mediaType": "", "manifests": []}).to_string();
        assert_eq!(parse(&empty_mt, None).unwrap().kind, ManifestKind::OciIndex);
    }

    #[test]
    fn error_cases() {
        let schema1 = r#"{"schemaVersion": 1, "name": "x", "tag": "latest", "fsLayers": []}"#;
        assert!(err(schema1, None).contains("schemaVersion 1"));
        assert!(
            err(
                schema1,
                Some("application/vnd.docker.distribution.manifest.v1+prettyjws")
            )
            .contains("unsupported manifest media type")
        );
        assert!(err(r#"{"schemaVersion": "2", "manifests": []}"#, None).contains("schemaVersion"));
        assert!(err(r#"{"schemaVersion": 2.5, "manifests": []}"#, None).contains("schemaVersion"));
        assert!(err(r#"{"manifests": []}"#, None).contains("missing schemaVersion"));

        assert!(err("{not json", None).contains("malformed json"));
        assert!(err("", None).contains("malformed json"));
        assert!(err("[]", None).contains("not a json object"));
        assert!(err("\u{feff}{}", None).contains("malformed json"));

        let no_config =
            json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": []}).to_string();
        assert!(err(&no_config, None).contains("missing config"));
        let no_layers = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_IMAGE_CONFIG, "digest": D1, "size": 1}})
        .to_string();
        assert!(err(&no_layers, None).contains("missing layers"));
        let no_manifests = json!({"schemaVersion": 2, "mediaType": OCI_INDEX}).to_string();
        assert!(err(&no_manifests, None).contains("missing manifests"));

        let bad_digest = OCI_IMAGE.replace(&D3[7..], "not-a-digest");
        let e = err(&bad_digest, None);
        assert!(
            e.contains("layers[1]") && e.contains("invalid digest"),
            "{e}"
        );
        let sha512 = OCI_IMAGE.replace(D3, "sha512:abcd");
        assert!(err(&sha512, None).contains("layers[1]"));

        let negative = OCI_IMAGE.replace("16724", "-16724");
        let e = err(&negative, None);
        assert!(
            e.contains("layers[1]") && e.contains("negative size"),
            "{e}"
        );
        let float_size = OCI_IMAGE.replace("16724", "1.5");
        assert!(err(&float_size, None).contains("layers[1]"));
        let huge_size = OCI_IMAGE.replace("16724", "99999999999999999999");
        assert!(err(&huge_size, None).contains("layers[1]"));

        let e = err(OCI_IMAGE, Some(DOCKER_MANIFEST));
        assert!(e.contains("media type mismatch"), "{e}");
        assert!(err(OCI_INDEX_FIXTURE, Some(OCI_MANIFEST)).contains("media type mismatch"));
        assert!(err(OCI_IMAGE, Some("text/plain")).contains("unsupported manifest media type"));
        let bogus_body = OCI_IMAGE.replace(OCI_MANIFEST, "application/vnd.example+json");
        assert!(err(&bogus_body, None).contains("unsupported manifest media type"));
        let numeric_mt = json!({"schemaVersion": 2, "mediaType": 5, "manifests": []}).to_string();
        assert!(err(&numeric_mt, None).contains("mediaType"));
    }

    #[test]
    fn descriptor_error_cases() {
        let with_layer = |layer: Value| {
            json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_IMAGE_CONFIG, "digest": D1, "size": 1},
                "layers": [layer]})
            .to_string()
        };
        for (layer, needle) in [
            (json!("sha256:abc"), "not a descriptor object"),
            (json!({"digest": D2, "size": 1}), "mediaType"),
            (
                json!({"mediaType": "x", "digest": D2, "size": 1}),
                "invalid mediaType",
            ),
            (json!({"mediaType": OCI_IMAGE_CONFIG, "size": 1}), "digest"),
            (json!({"mediaType": OCI_IMAGE_CONFIG, "digest": D2}), "size"),
            (
                json!({"mediaType": OCI_IMAGE_CONFIG, "digest": D2, "size": "1"}),
                "layers[0]",
            ),
            (
                json!({"mediaType": OCI_IMAGE_CONFIG, "digest": D2, "size": 1, "urls": "x"}),
                "layers[0]",
            ),
            (
                json!({"mediaType": OCI_IMAGE_CONFIG, "digest": D2, "size": 1, "annotations": {"a": 1}}),
                "layers[0]",
            ),
            (
                json!({"mediaType": OCI_IMAGE_CONFIG, "digest": D2, "size": 1, "artifactType": "bad"}),
                "artifactType",
            ),
            (
                json!({"mediaType": OCI_IMAGE_CONFIG, "digest": D2, "size": 1, "platform": "linux"}),
                "platform",
            ),
            (
                json!({"mediaType": OCI_EMPTY_JSON, "digest": OCI_EMPTY_JSON_DIGEST, "size": 2, "data": "e30"}),
                "base64",
            ),
            (
                json!({"mediaType": OCI_EMPTY_JSON, "digest": OCI_EMPTY_JSON_DIGEST, "size": 3, "data": "e30="}),
                "size",
            ),
            (
                json!({"mediaType": OCI_EMPTY_JSON, "digest": D2, "size": 2, "data": "e30="}),
                "digest",
            ),
        ] {
            let e = err(&with_layer(layer.clone()), None);
            assert!(e.contains(needle), "{layer}: {e}");
        }
        let bad_layers = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_IMAGE_CONFIG, "digest": D1, "size": 1}, "layers": {}})
        .to_string();
        assert!(err(&bad_layers, None).contains("not an array"));
        let bad_subject =
            OCI_IMAGE.replacen("\"layers\"", "\"subject\": {\"digest\": 1}, \"layers\"", 1);
        assert!(err(&bad_subject, None).contains("subject"));
        let bad_annotations = OCI_IMAGE.replace("\"value1\"", "1");
        assert!(err(&bad_annotations, None).contains("annotations"));
        let bad_artifact_type =
            OCI_ARTIFACT.replace("application/vnd.example.sbom.v1+json", "sbom");
        assert!(err(&bad_artifact_type, None).contains("artifactType"));
    }

    #[test]
    fn nulls_and_unknown_fields_are_ignored() {
        let body = json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST, "subject": null, "artifactType": null,
            "annotations": null, "somethingNew": {"x": [1, 2]},
            "config": {"mediaType": OCI_IMAGE_CONFIG, "digest": D1, "size": 0, "urls": null, "future": true},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": D2, "size": 10, "urls": []}]
        })
        .to_string();
        let m = parse(&body, None).unwrap();
        assert_eq!(m.subject, None);
        assert_eq!(m.artifact_type, None);
        assert_eq!(m.annotations, None);
        assert!(!m.layers[0].is_foreign());
        assert_eq!(m.referenced_blobs().count(), 2);
    }

    #[test]
    fn deeply_nested_json_is_an_error_not_a_crash() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(err(&deep, None).contains("malformed json"));
        let deep_annotation = format!(
            r#"{{"schemaVersion":2,"manifests":[],"x":{}{}}}"#,
            "{\"a\":".repeat(10_000),
            "}".repeat(10_000)
        );
        assert!(parse(&deep_annotation, None).is_err());
    }

    #[test]
    fn descriptor_serde() {
        let d = Descriptor::new(OCI_IMAGE_CONFIG, Digest::parse(D1).unwrap(), 7);
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(
            json,
            json!({"mediaType": OCI_IMAGE_CONFIG, "digest": D1, "size": 7})
        );
        assert_eq!(serde_json::from_value::<Descriptor>(json).unwrap(), d);
        let full = Descriptor {
            urls: Some(vec!["https://example.com/x".into()]),
            annotations: Some(BTreeMap::from([("k".into(), "v".into())])),
            artifact_type: Some("application/vnd.x".into()),
            platform: Some(json!({"os": "linux", "architecture": "amd64"})),
            data: Some("e30=".into()),
            ..d.clone()
        };
        let json = serde_json::to_value(&full).unwrap();
        for key in ["urls", "annotations", "artifactType", "platform", "data"] {
            assert!(json.get(key).is_some(), "{key}");
        }
        assert_eq!(serde_json::from_value::<Descriptor>(json).unwrap(), full);
        assert!(d.validate().is_ok());
        assert!(
            Descriptor {
                size: -1,
                ..d.clone()
            }
            .validate()
            .is_err()
        );
        assert_eq!(
            Descriptor {
                size: -1,
                ..d.clone()
            }
            .size_u64(),
            0
        );
        assert_eq!(d.size_u64(), 7);
        assert!(full.validate().is_err()); // data "{}" does not hash to D1
    }

    #[test]
    fn manifest_kinds() {
        for k in ManifestKind::ALL {
            assert_eq!(ManifestKind::from_media_type(k.media_type()), Some(k));
            assert_eq!(
                ManifestKind::from_media_type(&k.media_type().to_uppercase()),
                Some(k)
            );
            assert_eq!(
                ManifestKind::from_media_type(&format!("  {} ; charset=utf-8", k.media_type())),
                Some(k)
            );
            assert_eq!(k.to_string(), k.media_type());
        }
        assert!(ManifestKind::OciIndex.is_index() && ManifestKind::DockerManifestList.is_index());
        assert!(!ManifestKind::OciManifest.is_index() && !ManifestKind::DockerManifest.is_index());
        for s in [
            "",
            "application/json",
            OCI_EMPTY_JSON,
            "application/vnd.oci.image.manifest.v1+jsonx",
        ] {
            assert_eq!(ManifestKind::from_media_type(s), None, "{s:?}");
        }
    }

    #[test]
    fn media_types() {
        for s in [
            OCI_MANIFEST,
            OCI_EMPTY_JSON,
            "application/vnd.cncf.helm.chart.content.v1.tar+gzip",
            "text/plain",
            "Text/Plain",
            "application/spdx+json",
            "application/vnd.example+type;version=1",
            "text/plain; charset=utf-8",
            "text/plain ; charset=\"utf-8\"",
            "text/plain;a=\"x;y\\\"z\";b=c",
            "text/plain;",
            "text/plain; ;a=b",
            "a/b!#$&-^_.+",
        ] {
            let m = MediaType::parse(s).unwrap();
            assert_eq!(m.as_str(), s);
        }
        assert_eq!(
            MediaType::parse("text/plain; charset=utf-8")
                .unwrap()
                .essence(),
            "text/plain"
        );
        assert_eq!(MediaType::parse("a/b ;x=y").unwrap().essence(), "a/b");
        let long_ok = format!("a/{}", "b".repeat(127));
        assert!(MediaType::parse(&long_ok).is_ok());
        for s in [
            "",
            "text",
            "text/",
            "/plain",
            "text/plain/x",
            " text/plain",
            "text/plain ",
            "text /plain",
            "text/ plain",
            "-text/plain",
            "text/.plain",
            "te xt/plain",
            "text/plain;charset",
            "text/plain;charset=",
            "text/plain;=utf-8",
            "text/plain;a=\"unterminated",
            "text/plain;a=b c",
            "text/plain;a=\"x\"y",
            "text/plain,text/html",
            "tëxt/plain",
            &format!("a/{}", "b".repeat(128)),
        ] {
            assert_eq!(
                MediaType::parse(s),
                Err(TypesError::InvalidMediaType(s.to_owned())),
                "{s:?}"
            );
        }
        let m = MediaType::parse(OCI_MANIFEST).unwrap();
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            format!("\"{OCI_MANIFEST}\"")
        );
        assert_eq!(
            serde_json::from_str::<MediaType>(&format!("\"{OCI_MANIFEST}\"")).unwrap(),
            m
        );
    }

    #[test]
    fn base64() {
        assert_eq!(decode_base64(""), Some(vec![]));
        assert_eq!(decode_base64("YQ==").unwrap(), b"a");
        assert_eq!(decode_base64("YWI=").unwrap(), b"ab");
        assert_eq!(decode_base64("YWJj").unwrap(), b"abc");
        assert_eq!(decode_base64("e30=").unwrap(), b"{}");
        assert_eq!(decode_base64("+/+/").unwrap(), [0xfb, 0xff, 0xbf]);
        for s in [
            "e30", "YQ=", "Y===", "====", "YQ==YQ==", "a=bc", "YW-j", "YW_j", "YW j",
        ] {
            assert_eq!(decode_base64(s), None, "{s:?}");
        }
    }

    // ---- property tests ----

    fn encode_base64(bytes: &[u8]) -> String {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    fn media_type_strategy() -> impl Strategy<Value = String> {
        "[a-z0-9][a-z0-9.+-]{0,15}/[a-zA-Z0-9][a-zA-Z0-9!#$&^_.+-]{0,30}"
    }

    fn descriptor_strategy() -> impl Strategy<Value = Descriptor> {
        (
            media_type_strategy(),
            proptest::collection::vec(any::<u8>(), 0..16),
            0i64..=i64::MAX,
            proptest::option::of(proptest::collection::vec("[a-z:/.]{0,20}", 0..3)),
            proptest::option::of(proptest::collection::btree_map(
                "[a-z.]{1,10}",
                "\\PC{0,10}",
                0..3,
            )),
            proptest::option::of(media_type_strategy()),
            proptest::option::of(
                ("[a-z0-9]{1,8}", "[a-z]{1,8}")
                    .prop_map(|(a, o)| json!({"architecture": a, "os": o})),
            ),
            any::<bool>(),
        )
            .prop_map(
                |(mt, content, size, urls, annotations, artifact_type, platform, embed)| {
                    let digest = Digest::sha256_of(&content);
                    let (size, data) = if embed {
                        (content.len() as i64, Some(encode_base64(&content)))
                    } else {
                        (size, None)
                    };
                    Descriptor {
                        media_type: mt,
                        digest,
                        size,
                        urls,
                        annotations,
                        artifact_type,
                        platform,
                        data,
                    }
                },
            )
    }

    fn manifest_strategy() -> impl Strategy<Value = ParsedManifest> {
        (
            proptest::sample::select(ManifestKind::ALL.to_vec()),
            descriptor_strategy(),
            proptest::collection::vec(descriptor_strategy(), 0..4),
            proptest::option::of(descriptor_strategy()),
            proptest::option::of(media_type_strategy()),
            proptest::option::of(proptest::collection::btree_map(
                "[a-z.]{1,10}",
                "\\PC{0,10}",
                0..3,
            )),
        )
            .prop_map(
                |(kind, config, children, subject, artifact_type, annotations)| {
                    let (config, layers, manifests) = if kind.is_index() {
                        (None, vec![], children)
                    } else {
                        (Some(config), children, vec![])
                    };
                    ParsedManifest {
                        kind,
                        config,
                        layers,
                        manifests,
                        subject,
                        artifact_type,
                        annotations,
                    }
                },
            )
    }

    /// Serializes a manifest the way a client would.
    fn to_json(m: &ParsedManifest, with_media_type: bool) -> Value {
        let mut obj = json!({"schemaVersion": 2});
        if with_media_type {
            obj["mediaType"] = json!(m.kind.media_type());
        }
        if let Some(c) = &m.config {
            obj["config"] = serde_json::to_value(c).unwrap();
            obj["layers"] = serde_json::to_value(&m.layers).unwrap();
        } else {
            obj["manifests"] = serde_json::to_value(&m.manifests).unwrap();
        }
        if let Some(s) = &m.subject {
            obj["subject"] = serde_json::to_value(s).unwrap();
        }
        if let Some(a) = &m.artifact_type {
            obj["artifactType"] = json!(a);
        }
        if let Some(a) = &m.annotations {
            obj["annotations"] = json!(a);
        }
        obj
    }

    /// Independent statement of the kind rules: `Ok(kind)` or `Err(())`.
    fn expected_kind(
        body_mt: Option<&str>,
        ct: Option<&str>,
        has_manifests: bool,
        has_config_and_layers: bool,
    ) -> Result<ManifestKind, ()> {
        let lookup = |s: &str| ManifestKind::ALL.into_iter().find(|k| k.media_type() == s);
        let body = match body_mt {
            None => None,
            Some(s) => Some(lookup(s).ok_or(())?),
        };
        let header = match ct {
            None | Some("application/json") => None,
            Some(s) => Some(lookup(s).ok_or(())?),
        };
        match (header, body) {
            (Some(h), Some(b)) if h != b => Err(()),
            (Some(k), _) | (None, Some(k)) => Ok(k),
            (None, None) if has_manifests => Ok(ManifestKind::OciIndex),
            (None, None) if has_config_and_layers => Ok(ManifestKind::OciManifest),
            (None, None) => Err(()),
        }
    }

    fn media_type_choice() -> impl Strategy<Value = Option<&'static str>> {
        proptest::option::of(proptest::sample::select(vec![
            OCI_MANIFEST,
            OCI_INDEX,
            DOCKER_MANIFEST,
            DOCKER_MANIFEST_LIST,
            "application/json",
            "text/plain",
            OCI_EMPTY_JSON,
        ]))
    }

    #[test]
    fn duplicate_keys_are_refused_at_any_depth() {
        let cases = [
            (
                "top level",
                r#""schemaVersion": 2,"#,
                r#""schemaVersion": 2, "schemaVersion": 2,"#,
            ),
            (
                "escaped top-level key",
                r#""schemaVersion": 2,"#,
                r#""schemaVersion": 2, "\u0073chemaVersion": 3,"#,
            ),
            ("config", r#""size": 7023,"#, r#""size": 7023, "size": 1,"#),
            (
                "layer descriptor",
                r#""size": 32654,"#,
                r#""size": 32654, "digest": "sha256:b5b2b2c507a0944348e0303114d8d93aaaa081732b86451d9bce1f432a537bc7","#,
            ),
            (
                "annotations",
                r#""com.example.key1": "value1","#,
                r#""com.example.key1": "value1", "com.example.key1": "other","#,
            ),
        ];
        for (what, from, to) in cases {
            assert!(OCI_IMAGE.contains(from), "{what}");
            let json = OCI_IMAGE.replacen(from, to, 1);
            let e = err(&json, Some(OCI_MANIFEST));
            assert!(e.contains("duplicate key"), "{what}: {e}");
        }
        let platform = OCI_INDEX_FIXTURE.replacen(
            r#""os": "linux" }"#,
            r#""os": "linux", "os": "windows" }"#,
            1,
        );
        assert!(err(&platform, None).contains("duplicate key \"os\""));
        // The same key in two different objects is not a duplicate.
        assert!(parse(OCI_INDEX_FIXTURE, None).is_ok());
        // Trailing content after the value is refused as before.
        assert!(err(&format!("{OCI_IMAGE} {{}}"), None).contains("malformed json"));
    }

    /// Writes `v` as JSON, giving the `target`-th object (pre-order) one extra member whose key
    /// repeats one of its keys (or, when it has none, a key written twice).
    fn json_with_duplicate(v: &Value, dup: &Duplicate, next: &mut usize, out: &mut String) {
        let key = |k: &str| serde_json::to_string(k).unwrap();
        match v {
            Value::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    json_with_duplicate(item, dup, next, out);
                }
                out.push(']');
            }
            Value::Object(obj) => {
                let here = *next == dup.target;
                *next += 1;
                out.push('{');
                let mut members: Vec<String> = Vec::new();
                for (k, v) in obj {
                    let mut member = format!("{}:", key(k));
                    json_with_duplicate(v, dup, next, &mut member);
                    members.push(member);
                }
                if here {
                    let (k, v) = match obj.iter().nth(dup.key.index(obj.len().max(1))) {
                        Some((k, v)) if dup.same_value => (k.clone(), v.clone()),
                        Some((k, _)) => (k.clone(), json!(null)),
                        None => ("k".to_owned(), json!(1)),
                    };
                    if obj.is_empty() {
                        members.push(format!("{}:{v}", key(&k)));
                    }
                    // The repeat is written with its first character escaped, when asked.
                    let written = match k.chars().next() {
                        Some(c) if dup.escape && c.is_ascii() => {
                            format!("\"\\u{:04x}{}", c as u32, &key(&k)[2..])
                        }
                        _ => key(&k),
                    };
                    members.insert(
                        dup.position.index(members.len() + 1),
                        format!("{written}:{v}"),
                    );
                }
                out.push_str(&members.join(","));
                out.push('}');
            }
            other => out.push_str(&other.to_string()),
        }
    }

    #[derive(Debug)]
    struct Duplicate {
        target: usize,
        key: prop::sample::Index,
        position: prop::sample::Index,
        escape: bool,
        same_value: bool,
    }

    fn count_objects(v: &Value) -> usize {
        match v {
            Value::Array(items) => items.iter().map(count_objects).sum(),
            Value::Object(obj) => 1 + obj.values().map(count_objects).sum::<usize>(),
            _ => 0,
        }
    }

    proptest! {
        #[test]
        fn any_duplicated_key_is_refused(
            m in manifest_strategy(),
            target in any::<prop::sample::Index>(),
            key in any::<prop::sample::Index>(),
            position in any::<prop::sample::Index>(),
            escape in any::<bool>(),
            same_value in any::<bool>(),
        ) {
            let value = to_json(&m, true);
            let dup = Duplicate { target: target.index(count_objects(&value)), key, position, escape, same_value };
            let mut body = String::new();
            json_with_duplicate(&value, &dup, &mut 0, &mut body);
            // Without the duplicate the same writer produces a manifest that parses.
            let mut clean = String::new();
            json_with_duplicate(&value, &Duplicate { target: usize::MAX, ..dup }, &mut 0, &mut clean);
            prop_assert_eq!(ParsedManifest::parse(clean.as_bytes(), None).unwrap(), m);
            match ParsedManifest::parse(body.as_bytes(), None) {
                Err(TypesError::InvalidManifest(e)) => prop_assert!(e.contains("duplicate key"), "{}: {}", e, body),
                other => prop_assert!(false, "accepted {}: {:?}", body, other),
            }
        }

        #[test]
        fn descriptor_round_trip(d in descriptor_strategy()) {
            prop_assert!(d.validate().is_ok());
            let json = serde_json::to_string(&d).unwrap();
            prop_assert_eq!(serde_json::from_str::<Descriptor>(&json).unwrap(), d);
        }

        #[test]
        fn manifest_round_trip(m in manifest_strategy(), with_media_type in any::<bool>(), with_ct in any::<bool>()) {
            let body = serde_json::to_vec(&to_json(&m, with_media_type)).unwrap();
            let ct = with_ct.then(|| m.kind.media_type());
            let parsed = ParsedManifest::parse(&body, ct);
            if with_media_type || with_ct || m.kind == ManifestKind::OciManifest || m.kind == ManifestKind::OciIndex {
                prop_assert_eq!(parsed.unwrap(), m);
            } else {
                // Without any media type a Docker kind is inferred as its OCI twin.
                let p = parsed.unwrap();
                prop_assert_eq!(p.kind, if m.kind.is_index() { ManifestKind::OciIndex } else { ManifestKind::OciManifest });
                prop_assert_eq!(p.layers, m.layers);
                prop_assert_eq!(p.manifests, m.manifests);
            }
        }

        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512), ct in media_type_choice()) {
            let _ = ParsedManifest::parse(&bytes, ct);
        }

        #[test]
        fn never_panics_on_json_like_input(s in "[{}\\[\\]\":,0-9a-zA-Z -]{0,200}") {
            let _ = ParsedManifest::parse(s.as_bytes(), None);
        }

        #[test]
        fn never_panics_on_mutated_manifests(m in manifest_strategy(), cut in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let mut body = serde_json::to_vec(&to_json(&m, true)).unwrap();
            let i = cut.index(body.len());
            body[i] = byte;
            let _ = ParsedManifest::parse(&body, None);
            body.truncate(i);
            let _ = ParsedManifest::parse(&body, Some(m.kind.media_type()));
        }

        #[test]
        fn accepts_exactly_the_kind_rules(
            body_mt in media_type_choice(),
            ct in media_type_choice(),
            has_config in any::<bool>(),
            has_layers in any::<bool>(),
            has_manifests in any::<bool>(),
            schema_version in prop_oneof![Just(json!(2)), Just(json!(1)), Just(json!("2")), Just(Value::Null)],
        ) {
            let mut obj = json!({"schemaVersion": schema_version.clone()});
            if let Some(mt) = body_mt { obj["mediaType"] = json!(mt); }
            if has_config { obj["config"] = json!({"mediaType": OCI_IMAGE_CONFIG, "digest": D1, "size": 1}); }
            if has_layers { obj["layers"] = json!([{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": D2, "size": 2}]); }
            if has_manifests { obj["manifests"] = json!([{"mediaType": OCI_MANIFEST, "digest": D3, "size": 3}]); }
            let got = ParsedManifest::parse(obj.to_string().as_bytes(), ct);
            let expected = if schema_version != json!(2) {
                Err(())
            } else {
                expected_kind(body_mt, ct, has_manifests, has_config && has_layers).and_then(|k| {
                    let complete = if k.is_index() { has_manifests } else { has_config && has_layers };
                    if complete { Ok(k) } else { Err(()) }
                })
            };
            match (expected, got) {
                (Ok(k), Ok(m)) => {
                    prop_assert_eq!(m.kind, k);
                    prop_assert_eq!(m.config.is_some(), !k.is_index());
                    prop_assert_eq!(m.layers.len(), usize::from(!k.is_index()));
                    prop_assert_eq!(m.manifests.len(), usize::from(k.is_index()));
                }
                (Err(()), Err(TypesError::InvalidManifest(_))) => {}
                (e, g) => prop_assert!(false, "expected {:?}, got {:?}", e, g),
            }
        }

        #[test]
        fn media_type_round_trip(s in media_type_strategy(), params in proptest::collection::vec(("[a-z]{1,5}", "[a-z0-9]{1,5}|\"[ a-z;=]{0,5}\""), 0..3)) {
            let full = params.iter().fold(s.clone(), |acc, (k, v)| format!("{acc}; {k}={v}"));
            let m = MediaType::parse(&full).unwrap();
            prop_assert_eq!(m.as_str(), full.as_str());
            prop_assert_eq!(m.essence(), s.as_str());
            prop_assert_eq!(m.to_string().parse::<MediaType>().unwrap(), m.clone());
        }

        #[test]
        fn media_type_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = MediaType::parse(&String::from_utf8_lossy(&bytes));
            let _ = ManifestKind::from_media_type(&String::from_utf8_lossy(&bytes));
        }

        #[test]
        fn media_type_accepts_exactly_the_grammar(s in "[a-zA-Z0-9/;= \t.+!_-]{0,20}") {
            prop_assert_eq!(MediaType::parse(&s).is_ok(), media_type_oracle(&s), "{:?}", s);
        }

        #[test]
        fn base64_round_trip(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            prop_assert_eq!(decode_base64(&encode_base64(&bytes)), Some(bytes));
        }

        #[test]
        fn base64_never_panics(s in "[A-Za-z0-9+/=-]{0,20}") {
            let _ = decode_base64(&s);
        }
    }

    /// Independent oracle for media types without quoted strings: split on `;`.
    fn media_type_oracle(s: &str) -> bool {
        let restricted = |n: &str| {
            let mut cs = n.chars();
            cs.next().is_some_and(|c| c.is_ascii_alphanumeric())
                && n.len() <= 127
                && cs.all(|c| c.is_ascii_alphanumeric() || "!#$&-^_.+".contains(c))
        };
        let token = |t: &str| {
            !t.is_empty()
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c))
        };
        let mut parts = s.split(';');
        let essence = parts.next().unwrap_or("");
        let has_params = s.contains(';');
        let essence = if has_params {
            essence.trim_end_matches([' ', '\t'])
        } else {
            essence
        };
        let Some((t, st)) = essence.split_once('/') else {
            return false;
        };
        restricted(t)
            && restricted(st)
            && parts.all(|p| {
                let p = p.trim_matches([' ', '\t']);
                p.is_empty() || p.split_once('=').is_some_and(|(k, v)| token(k) && token(v))
            })
    }
}
