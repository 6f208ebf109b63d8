//! Just enough of a FastCGI client (on [`crate::fastcgi`]'s wire format) to
//! send a worker real requests while a build records what it compiles, and
//! to see a new image serve before it is installed.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use crate::fastcgi::{self, BeginRequest, Header, RecordType, Role, HEADER_LEN, MAX_CONTENT_LEN};

/// One request: its params and body.
pub struct Request<'a> {
    pub params: Vec<(&'a str, String)>,
    pub body: &'a [u8],
}

const ID: u16 = 1;

fn encode(request: &Request, keep_conn: bool) -> Vec<u8> {
    let begin = BeginRequest {
        role: Role::Responder,
        keep_conn,
    };
    let mut out = fastcgi::record(RecordType::BeginRequest, ID, &begin.encode());
    let params = fastcgi::pairs(&request.params);
    fastcgi::push_stream(&mut out, RecordType::Params, ID, &params, MAX_CONTENT_LEN);
    fastcgi::push_stream(
        &mut out,
        RecordType::Stdin,
        ID,
        request.body,
        MAX_CONTENT_LEN,
    );
    out
}

/// Sends `requests` on one connection (kept open between them) and returns
/// each one's STDOUT.
pub fn exchange(stream: &mut UnixStream, requests: &[Request]) -> io::Result<Vec<Vec<u8>>> {
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut answers = Vec::new();
    for (i, request) in requests.iter().enumerate() {
        stream.write_all(&encode(request, i + 1 < requests.len()))?;
        answers.push(read_response(stream)?);
    }
    Ok(answers)
}

fn read_response(stream: &mut UnixStream) -> io::Result<Vec<u8>> {
    let mut stdout = Vec::new();
    loop {
        let mut bytes = [0u8; HEADER_LEN];
        stream.read_exact(&mut bytes)?;
        let header = Header::decode(bytes);
        let mut body = vec![0u8; header.body_len()];
        stream.read_exact(&mut body)?;
        body.truncate(header.content_len.into());
        match header.kind {
            RecordType::Stdout => stdout.extend_from_slice(&body),
            RecordType::EndRequest => return Ok(stdout),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_begin_params_and_stdin() {
        let request = Request {
            params: vec![("A", "1".into())],
            body: b"xyz",
        };
        let bytes = encode(&request, true);
        let mut at = 0;
        let mut kinds = Vec::new();
        while at < bytes.len() {
            let header = Header::decode(bytes[at..at + HEADER_LEN].try_into().unwrap());
            kinds.push((header.kind, header.content_len));
            at += HEADER_LEN + header.body_len();
        }
        assert_eq!(at, bytes.len());
        assert_eq!(
            kinds,
            [
                (RecordType::BeginRequest, 8),
                (RecordType::Params, 4),
                (RecordType::Params, 0),
                (RecordType::Stdin, 3),
                (RecordType::Stdin, 0)
            ]
        );
        assert!(BeginRequest::decode(&bytes[8..16]).unwrap().keep_conn);
    }
}
