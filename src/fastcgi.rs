//! The FastCGI wire format, once for the master's side: record headers and
//! types, the bodies of `BEGIN_REQUEST` and `END_REQUEST`, and name-value
//! pairs (the FastCGI 1.0 specification, sections 3, 5 and 8).
//!
//! Bytes in, values out: nothing here reads or writes a socket, so the
//! status server ([`crate::status`]) and the tests' client use the same
//! encoding and decoding, each with its own I/O. The workers speak the
//! same format in Julia (`julia/src/FastCGI.jl`).

/// The only protocol version there is.
pub const VERSION: u8 = 1;
/// Every record starts with a header of this many bytes.
pub const HEADER_LEN: usize = 8;
/// The most content one record carries; longer data is a stream of records.
pub const MAX_CONTENT_LEN: usize = u16::MAX as usize;
/// The request id of management records (`GET_VALUES`, `UNKNOWN_TYPE`).
pub const MANAGEMENT_ID: u16 = 0;
/// `BEGIN_REQUEST`'s flag: keep the connection open after this request.
const KEEP_CONN: u8 = 1;

/// What a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordType {
    BeginRequest,
    AbortRequest,
    EndRequest,
    Params,
    Stdin,
    Stdout,
    Stderr,
    Data,
    GetValues,
    GetValuesResult,
    UnknownType,
    /// A type the specification does not define (answered with
    /// `UNKNOWN_TYPE` by a responder).
    Other(u8),
}

impl RecordType {
    /// Its number on the wire.
    pub const fn code(self) -> u8 {
        match self {
            RecordType::BeginRequest => 1,
            RecordType::AbortRequest => 2,
            RecordType::EndRequest => 3,
            RecordType::Params => 4,
            RecordType::Stdin => 5,
            RecordType::Stdout => 6,
            RecordType::Stderr => 7,
            RecordType::Data => 8,
            RecordType::GetValues => 9,
            RecordType::GetValuesResult => 10,
            RecordType::UnknownType => 11,
            RecordType::Other(code) => code,
        }
    }

    pub const fn from_code(code: u8) -> RecordType {
        match code {
            1 => RecordType::BeginRequest,
            2 => RecordType::AbortRequest,
            3 => RecordType::EndRequest,
            4 => RecordType::Params,
            5 => RecordType::Stdin,
            6 => RecordType::Stdout,
            7 => RecordType::Stderr,
            8 => RecordType::Data,
            9 => RecordType::GetValues,
            10 => RecordType::GetValuesResult,
            11 => RecordType::UnknownType,
            other => RecordType::Other(other),
        }
    }
}

impl From<u8> for RecordType {
    fn from(code: u8) -> Self {
        RecordType::from_code(code)
    }
}

impl From<RecordType> for u8 {
    fn from(kind: RecordType) -> Self {
        kind.code()
    }
}

/// A record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub version: u8,
    pub kind: RecordType,
    pub request_id: u16,
    pub content_len: u16,
    pub padding_len: u8,
}

impl Header {
    /// The header of a record with `content_len` bytes of content, padded
    /// to a multiple of 8 bytes as the specification recommends.
    pub fn new(kind: RecordType, request_id: u16, content_len: u16) -> Header {
        Header {
            version: VERSION,
            kind,
            request_id,
            content_len,
            padding_len: padding(content_len.into()) as u8,
        }
    }

    pub fn decode(bytes: [u8; HEADER_LEN]) -> Header {
        Header {
            version: bytes[0],
            kind: RecordType::from_code(bytes[1]),
            request_id: u16::from_be_bytes([bytes[2], bytes[3]]),
            content_len: u16::from_be_bytes([bytes[4], bytes[5]]),
            padding_len: bytes[6],
        }
    }

    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let [id1, id0] = self.request_id.to_be_bytes();
        let [len1, len0] = self.content_len.to_be_bytes();
        [
            self.version,
            self.kind.code(),
            id1,
            id0,
            len1,
            len0,
            self.padding_len,
            0,
        ]
    }

    /// What follows the header: the content and its padding.
    pub fn body_len(&self) -> usize {
        usize::from(self.content_len) + usize::from(self.padding_len)
    }
}

fn padding(content_len: usize) -> usize {
    (8 - content_len % 8) % 8
}

/// Appends one record (header, `content`, padding) to `out`.
///
/// # Panics
/// When `content` is longer than [`MAX_CONTENT_LEN`]: longer data is a
/// stream ([`push_stream`]).
pub fn push_record(out: &mut Vec<u8>, kind: RecordType, request_id: u16, content: &[u8]) {
    let len = u16::try_from(content.len()).expect("a record carries at most 65535 bytes");
    let header = Header::new(kind, request_id, len);
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(content);
    out.extend(std::iter::repeat_n(0, header.padding_len.into()));
}

/// One record, as bytes.
pub fn record(kind: RecordType, request_id: u16, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + content.len() + 7);
    push_record(&mut out, kind, request_id, content);
    out
}

/// Appends a stream (`PARAMS`, `STDIN`, `STDOUT`…): `data` in records of at
/// most `chunk` bytes, closed by an empty record.
pub fn push_stream(
    out: &mut Vec<u8>,
    kind: RecordType,
    request_id: u16,
    data: &[u8],
    chunk: usize,
) {
    for piece in data.chunks(chunk.clamp(1, MAX_CONTENT_LEN)) {
        push_record(out, kind, request_id, piece);
    }
    push_record(out, kind, request_id, &[]);
}

/// A whole stream, as bytes.
pub fn stream(kind: RecordType, request_id: u16, data: &[u8], chunk: usize) -> Vec<u8> {
    let mut out = Vec::new();
    push_stream(&mut out, kind, request_id, data, chunk);
    out
}

/// The role a web server asks an application to play.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Responder,
    Authorizer,
    Filter,
    Other(u16),
}

impl Role {
    pub const fn code(self) -> u16 {
        match self {
            Role::Responder => 1,
            Role::Authorizer => 2,
            Role::Filter => 3,
            Role::Other(code) => code,
        }
    }

    pub const fn from_code(code: u16) -> Role {
        match code {
            1 => Role::Responder,
            2 => Role::Authorizer,
            3 => Role::Filter,
            other => Role::Other(other),
        }
    }
}

/// The content of a `BEGIN_REQUEST` record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BeginRequest {
    pub role: Role,
    /// Keep the connection open for another request afterwards.
    pub keep_conn: bool,
}

impl BeginRequest {
    pub fn encode(&self) -> [u8; 8] {
        let [role1, role0] = self.role.code().to_be_bytes();
        let flags = if self.keep_conn { KEEP_CONN } else { 0 };
        [role1, role0, flags, 0, 0, 0, 0, 0]
    }

    /// `None` when the content is too short to be one.
    pub fn decode(content: &[u8]) -> Option<BeginRequest> {
        let bytes: [u8; 3] = content.get(..3)?.try_into().ok()?;
        Some(BeginRequest {
            role: Role::from_code(u16::from_be_bytes([bytes[0], bytes[1]])),
            keep_conn: bytes[2] & KEEP_CONN != 0,
        })
    }
}

/// How a request ended, as the application says in `END_REQUEST`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolStatus {
    RequestComplete,
    CantMpxConn,
    Overloaded,
    UnknownRole,
    Other(u8),
}

impl ProtocolStatus {
    pub const fn code(self) -> u8 {
        match self {
            ProtocolStatus::RequestComplete => 0,
            ProtocolStatus::CantMpxConn => 1,
            ProtocolStatus::Overloaded => 2,
            ProtocolStatus::UnknownRole => 3,
            ProtocolStatus::Other(code) => code,
        }
    }

    pub const fn from_code(code: u8) -> ProtocolStatus {
        match code {
            0 => ProtocolStatus::RequestComplete,
            1 => ProtocolStatus::CantMpxConn,
            2 => ProtocolStatus::Overloaded,
            3 => ProtocolStatus::UnknownRole,
            other => ProtocolStatus::Other(other),
        }
    }
}

/// The content of an `END_REQUEST` record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndRequest {
    /// The application's exit status (a CGI program's).
    pub app_status: u32,
    pub protocol_status: ProtocolStatus,
}

impl EndRequest {
    pub fn encode(&self) -> [u8; 8] {
        let [a3, a2, a1, a0] = self.app_status.to_be_bytes();
        [a3, a2, a1, a0, self.protocol_status.code(), 0, 0, 0]
    }

    /// `None` when the content is too short to be one.
    pub fn decode(content: &[u8]) -> Option<EndRequest> {
        let bytes: [u8; 5] = content.get(..5)?.try_into().ok()?;
        Some(EndRequest {
            app_status: u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
            protocol_status: ProtocolStatus::from_code(bytes[4]),
        })
    }
}

/// Appends a name-value pair's length: one byte below 128, else four with
/// the high bit set.
fn push_len(out: &mut Vec<u8>, len: usize) {
    match u8::try_from(len) {
        Ok(short) if short < 0x80 => out.push(short),
        _ => {
            let len = u32::try_from(len).expect("a name or value is shorter than 2 GiB");
            out.extend_from_slice(&(len | 0x8000_0000).to_be_bytes());
        }
    }
}

/// Appends one name-value pair.
pub fn push_pair(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    push_len(out, name.len());
    push_len(out, value.len());
    out.extend_from_slice(name);
    out.extend_from_slice(value);
}

/// Name-value pairs, encoded (the content of a `PARAMS` stream or of
/// `GET_VALUES`).
pub fn pairs<K: AsRef<[u8]>, V: AsRef<[u8]>>(items: &[(K, V)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in items {
        push_pair(&mut out, name.as_ref(), value.as_ref());
    }
    out
}

/// Name-value pairs whose lengths run past the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("name-value pair truncated")]
pub struct Truncated;

/// The name-value pairs in `data`, in order; a truncated pair ends the
/// iteration with an error.
pub fn decode_pairs(data: &[u8]) -> Pairs<'_> {
    Pairs { data }
}

/// Iterator of [`decode_pairs`].
#[derive(Debug, Clone)]
pub struct Pairs<'a> {
    data: &'a [u8],
}

impl<'a> Pairs<'a> {
    fn length(&mut self) -> Option<usize> {
        let first = *self.data.first()?;
        if first < 0x80 {
            self.data = &self.data[1..];
            return Some(first.into());
        }
        let bytes: [u8; 4] = self.data.get(..4)?.try_into().ok()?;
        self.data = &self.data[4..];
        usize::try_from(u32::from_be_bytes(bytes) & 0x7fff_ffff).ok()
    }

    fn next_pair(&mut self) -> Option<(&'a [u8], &'a [u8])> {
        let (name_len, value_len) = (self.length()?, self.length()?);
        let end = name_len.checked_add(value_len)?;
        let data = self.data;
        let (pair, rest) = (data.get(..end)?, &data[end..]);
        self.data = rest;
        Some(pair.split_at(name_len))
    }
}

impl<'a> Iterator for Pairs<'a> {
    type Item = Result<(&'a [u8], &'a [u8]), Truncated>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.data.is_empty() {
            return None;
        }
        match self.next_pair() {
            Some(pair) => Some(Ok(pair)),
            None => {
                self.data = &[];
                Some(Err(Truncated))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_types_keep_their_numbers() {
        for code in 0..=u8::MAX {
            assert_eq!(RecordType::from_code(code).code(), code);
        }
        assert_eq!(RecordType::Params.code(), 4);
        assert_eq!(RecordType::from(6), RecordType::Stdout);
        assert_eq!(RecordType::from(42), RecordType::Other(42));
    }

    #[test]
    fn headers_round_trip_and_pad_to_eight() {
        let header = Header::new(RecordType::Stdout, 0x0102, 13);
        assert_eq!(header.padding_len, 3);
        assert_eq!(header.body_len(), 16);
        assert_eq!(header.encode(), [1, 6, 1, 2, 0, 13, 3, 0]);
        assert_eq!(Header::decode(header.encode()), header);
        let rec = record(RecordType::EndRequest, 1, &[0; 8]);
        assert_eq!(rec.len(), 16);
        assert_eq!(Header::new(RecordType::Stdin, 1, 0).padding_len, 0);
    }

    #[test]
    fn streams_end_with_an_empty_record() {
        let out = stream(RecordType::Stdin, 1, b"abcde", 2);
        let lengths: Vec<u16> = out
            .chunks(8)
            .filter(|c| c[0] == VERSION && c[1] == RecordType::Stdin.code())
            .map(|c| Header::decode(c.try_into().unwrap()).content_len)
            .collect();
        assert_eq!(lengths, [2, 2, 1, 0]);
    }

    #[test]
    fn request_bodies_round_trip() {
        let begin = BeginRequest {
            role: Role::Authorizer,
            keep_conn: true,
        };
        assert_eq!(begin.encode(), [0, 2, 1, 0, 0, 0, 0, 0]);
        assert_eq!(BeginRequest::decode(&begin.encode()), Some(begin));
        let end = EndRequest {
            app_status: 258,
            protocol_status: ProtocolStatus::UnknownRole,
        };
        assert_eq!(end.encode(), [0, 0, 1, 2, 3, 0, 0, 0]);
        assert_eq!(EndRequest::decode(&end.encode()), Some(end));
        assert_eq!(EndRequest::decode(&[0, 0]), None);
    }

    #[test]
    fn pairs_round_trip_with_short_and_long_lengths() {
        let long = "v".repeat(300);
        let data = pairs(&[("A", "1"), ("LONG", long.as_str()), ("EMPTY", "")]);
        assert_eq!(&data[..4], [1, 1, b'A', b'1']);
        let decoded: Vec<(&[u8], &[u8])> = decode_pairs(&data).map(Result::unwrap).collect();
        assert_eq!(
            decoded,
            [
                (&b"A"[..], &b"1"[..]),
                (b"LONG", long.as_bytes()),
                (b"EMPTY", b""),
            ]
        );
    }

    #[test]
    fn a_truncated_pair_ends_the_pairs() {
        // A 5-byte name announced with a 4-byte length, 1 byte there.
        let mut data = pairs(&[("OK", "yes")]);
        data.extend_from_slice(&[0x80, 0, 0, 5, 1, b'A']);
        let decoded: Vec<_> = decode_pairs(&data).collect();
        assert_eq!(decoded, [Ok((&b"OK"[..], &b"yes"[..])), Err(Truncated)]);
        assert_eq!(decode_pairs(&[0x85]).collect::<Vec<_>>(), [Err(Truncated)]);
    }
}
