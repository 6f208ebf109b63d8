//! A raw FastCGI client for tests: it can say everything a web server says,
//! and also what no web server should (garbage, truncated records), so the
//! tests can check the workers' answers byte by byte.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

pub const BEGIN_REQUEST: u8 = 1;
pub const ABORT_REQUEST: u8 = 2;
pub const END_REQUEST: u8 = 3;
pub const PARAMS: u8 = 4;
pub const STDIN: u8 = 5;
pub const STDOUT: u8 = 6;
pub const STDERR: u8 = 7;
pub const GET_VALUES: u8 = 9;
pub const GET_VALUES_RESULT: u8 = 10;
pub const UNKNOWN_TYPE: u8 = 11;

pub const RESPONDER: u16 = 1;
pub const AUTHORIZER: u16 = 2;
pub const REQUEST_COMPLETE: u8 = 0;
pub const UNKNOWN_ROLE: u8 = 3;

/// Where a test connects: the daemon's socket.
#[derive(Debug, Clone)]
pub enum Addr {
    Unix(std::path::PathBuf),
    Tcp(std::net::SocketAddr),
}

pub trait Stream: Read + Write + Send {}
impl Stream for UnixStream {}
impl Stream for TcpStream {}

pub fn connect(addr: &Addr) -> Box<dyn Stream> {
    let timeout = Some(Duration::from_secs(60));
    match addr {
        Addr::Unix(path) => {
            let s = UnixStream::connect(path).unwrap_or_else(|e| panic!("connect {path:?}: {e}"));
            s.set_read_timeout(timeout).unwrap();
            Box::new(s)
        }
        Addr::Tcp(addr) => {
            let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
            s.set_read_timeout(timeout).unwrap();
            Box::new(s)
        }
    }
}

/// One record: header, content, padding to a multiple of 8.
pub fn record(kind: u8, id: u16, content: &[u8]) -> Vec<u8> {
    assert!(content.len() <= 65535);
    let pad = (8 - content.len() % 8) % 8;
    let mut out = vec![
        1,
        kind,
        (id >> 8) as u8,
        id as u8,
        (content.len() >> 8) as u8,
        content.len() as u8,
        pad as u8,
        0,
    ];
    out.extend_from_slice(content);
    out.extend(std::iter::repeat_n(0, pad));
    out
}

pub fn begin(id: u16, role: u16, keep_conn: bool) -> Vec<u8> {
    record(
        BEGIN_REQUEST,
        id,
        &[
            (role >> 8) as u8,
            role as u8,
            keep_conn as u8,
            0,
            0,
            0,
            0,
            0,
        ],
    )
}

fn push_len(out: &mut Vec<u8>, len: usize) {
    if len < 128 {
        out.push(len as u8);
    } else {
        out.extend_from_slice(&(len as u32 | 0x8000_0000).to_be_bytes());
    }
}

/// Name-value pairs, FastCGI encoded.
pub fn pairs<K: AsRef<[u8]>, V: AsRef<[u8]>>(items: &[(K, V)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in items {
        push_len(&mut out, k.as_ref().len());
        push_len(&mut out, v.as_ref().len());
        out.extend_from_slice(k.as_ref());
        out.extend_from_slice(v.as_ref());
    }
    out
}

/// A stream of records of `kind` carrying `data` in pieces of at most
/// `chunk` bytes, ended by an empty record.
pub fn stream(kind: u8, id: u16, data: &[u8], chunk: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in data.chunks(chunk.max(1)) {
        out.extend(record(kind, id, piece));
    }
    out.extend(record(kind, id, &[]));
    out
}

/// A whole request as nginx would send it.
pub struct Request {
    pub id: u16,
    pub params: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub keep_conn: bool,
    /// Largest PARAMS record content; small values split pairs across records.
    pub params_chunk: usize,
}

impl Request {
    pub fn get(script: &Path, query: &str) -> Self {
        let uri = if query.is_empty() {
            "/page".to_string()
        } else {
            format!("/page?{query}")
        };
        Request {
            id: 1,
            params: vec![
                ("SCRIPT_FILENAME".into(), script.display().to_string()),
                ("QUERY_STRING".into(), query.into()),
                ("REQUEST_METHOD".into(), "GET".into()),
                ("REQUEST_URI".into(), uri),
                ("SERVER_PROTOCOL".into(), "HTTP/1.1".into()),
                ("GATEWAY_INTERFACE".into(), "CGI/1.1".into()),
            ],
            body: Vec::new(),
            keep_conn: false,
            params_chunk: 65535,
        }
    }

    pub fn post(script: &Path, content_type: &str, body: Vec<u8>) -> Self {
        let mut req = Request::get(script, "");
        req.param("REQUEST_METHOD", "POST");
        req.param("CONTENT_TYPE", content_type);
        req.param("CONTENT_LENGTH", &body.len().to_string());
        req.body = body;
        req
    }

    /// Sets (or replaces) a param.
    pub fn param(&mut self, name: &str, value: &str) -> &mut Self {
        self.params.retain(|(k, _)| k != name);
        self.params.push((name.into(), value.into()));
        self
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = begin(self.id, RESPONDER, self.keep_conn);
        out.extend(stream(
            PARAMS,
            self.id,
            &pairs(&self.params),
            self.params_chunk,
        ));
        out.extend(stream(STDIN, self.id, &self.body, 65535));
        out
    }
}

/// One record as read back.
#[derive(Debug, Clone)]
pub struct Record {
    pub kind: u8,
    pub id: u16,
    pub content: Vec<u8>,
}

/// Reads one record; `None` at a clean end of stream.
pub fn read_record(s: &mut dyn Stream) -> Option<Record> {
    let mut header = [0u8; 8];
    let mut got = 0;
    while got < 8 {
        match s.read(&mut header[got..]) {
            Ok(0) if got == 0 => return None,
            Ok(0) => panic!("stream ended inside a record header"),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && got == 0 => return None,
            Err(e) => panic!("read: {e}"),
        }
    }
    assert_eq!(header[0], 1, "bad version in {header:?}");
    let len = u16::from_be_bytes([header[4], header[5]]) as usize;
    let mut content = vec![0u8; len + header[6] as usize];
    s.read_exact(&mut content).expect("record content");
    content.truncate(len);
    Some(Record {
        kind: header[1],
        id: u16::from_be_bytes([header[2], header[3]]),
        content,
    })
}

/// What a request produced.
#[derive(Debug, Default)]
pub struct Response {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub app_status: u32,
    pub protocol_status: u8,
    /// Content lengths of the STDOUT records, to check the record split.
    pub stdout_records: Vec<usize>,
}

impl Response {
    /// The CGI response: status code, headers, body.
    pub fn http(&self) -> (u16, Vec<(String, String)>, Vec<u8>) {
        let out = &self.stdout;
        let (head, body) = match find(out, b"\r\n\r\n") {
            Some(i) => (&out[..i], &out[i + 4..]),
            None => match find(out, b"\n\n") {
                Some(i) => (&out[..i], &out[i + 2..]),
                None => panic!("no header block in {:?}", String::from_utf8_lossy(out)),
            },
        };
        let head = String::from_utf8_lossy(head);
        let headers: Vec<(String, String)> = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let status = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("status"))
            .map(|(_, v)| v[..3].parse().unwrap())
            .unwrap_or(200);
        (status, headers, body.to_vec())
    }

    pub fn status(&self) -> u16 {
        self.http().0
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.http().2).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.http()
            .1
            .into_iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Reads records until END_REQUEST for `id`.
pub fn read_response(s: &mut dyn Stream, id: u16) -> Response {
    let mut resp = Response::default();
    loop {
        let rec = read_record(s).expect("connection closed before END_REQUEST");
        assert_eq!(rec.id, id, "record for another request: {rec:?}");
        match rec.kind {
            STDOUT => {
                resp.stdout_records.push(rec.content.len());
                resp.stdout.extend(rec.content);
            }
            STDERR => resp.stderr.extend(rec.content),
            END_REQUEST => {
                let c = &rec.content;
                resp.app_status = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
                resp.protocol_status = c[4];
                return resp;
            }
            other => panic!("unexpected record type {other}"),
        }
    }
}

/// One request on a fresh connection.
pub fn request(addr: &Addr, req: &Request) -> Response {
    let mut s = connect(addr);
    s.write_all(&req.encode()).unwrap();
    read_response(&mut *s, req.id)
}

pub fn get(addr: &Addr, script: &Path, query: &str) -> Response {
    request(addr, &Request::get(script, query))
}

/// True when the peer closed the connection (EOF or reset) within the
/// read timeout, without sending anything more.
pub fn closed(s: &mut dyn Stream) -> bool {
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(n) => panic!("expected close, got {:?}", &buf[..n]),
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    }
}
