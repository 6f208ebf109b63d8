//! A raw FastCGI client for tests: it can say everything a web server says,
//! and also what no web server should (garbage, truncated records), so the
//! tests can check the workers' answers byte by byte. The wire format is
//! the crate's own ([`julia_fcgi::fastcgi`]); this adds the sockets.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

pub use julia_fcgi::fastcgi::{
    pairs, record, stream, BeginRequest, EndRequest, Header, ProtocolStatus, RecordType, Role,
};

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

/// A `BEGIN_REQUEST` record.
pub fn begin(id: u16, role: Role, keep_conn: bool) -> Vec<u8> {
    record(
        RecordType::BeginRequest,
        id,
        &BeginRequest { role, keep_conn }.encode(),
    )
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
        let mut out = begin(self.id, Role::Responder, self.keep_conn);
        out.extend(stream(
            RecordType::Params,
            self.id,
            &pairs(&self.params),
            self.params_chunk,
        ));
        out.extend(stream(RecordType::Stdin, self.id, &self.body, 65535));
        out
    }
}

/// One record as read back.
#[derive(Debug, Clone)]
pub struct Record {
    pub kind: RecordType,
    pub id: u16,
    pub content: Vec<u8>,
}

/// Reads one record; `None` at a clean end of stream.
pub fn read_record(s: &mut dyn Stream) -> Option<Record> {
    let mut header = [0u8; julia_fcgi::fastcgi::HEADER_LEN];
    let mut got = 0;
    while got < header.len() {
        match s.read(&mut header[got..]) {
            Ok(0) if got == 0 => return None,
            Ok(0) => panic!("stream ended inside a record header"),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && got == 0 => return None,
            Err(e) => panic!("read: {e}"),
        }
    }
    let header = Header::decode(header);
    assert_eq!(
        header.version,
        julia_fcgi::fastcgi::VERSION,
        "bad version in {header:?}"
    );
    let mut content = vec![0u8; header.body_len()];
    s.read_exact(&mut content).expect("record content");
    content.truncate(header.content_len.into());
    Some(Record {
        kind: header.kind,
        id: header.request_id,
        content,
    })
}

/// What a request produced.
#[derive(Debug)]
pub struct Response {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub app_status: u32,
    pub protocol_status: ProtocolStatus,
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
    let mut resp = Response {
        stdout: Vec::new(),
        stderr: Vec::new(),
        app_status: 0,
        protocol_status: ProtocolStatus::RequestComplete,
        stdout_records: Vec::new(),
    };
    loop {
        let rec = read_record(s).expect("connection closed before END_REQUEST");
        assert_eq!(rec.id, id, "record for another request: {rec:?}");
        match rec.kind {
            RecordType::Stdout => {
                resp.stdout_records.push(rec.content.len());
                resp.stdout.extend(rec.content);
            }
            RecordType::Stderr => resp.stderr.extend(rec.content),
            RecordType::EndRequest => {
                let end = EndRequest::decode(&rec.content).expect("END_REQUEST body");
                resp.app_status = end.app_status;
                resp.protocol_status = end.protocol_status;
                return resp;
            }
            other => panic!("unexpected record type {other:?}"),
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
