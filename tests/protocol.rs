//! The FastCGI protocol as the workers speak it, checked record by record
//! against the real daemon with real Julia workers.

mod common;

use std::io::Write;
use std::time::Duration;

use common::fcgi::{self, *};
use common::{page, Daemon, Options};

const HELLO: &str = r#"print("Content-Type: text/plain\r\n\r\nhello")"#;

#[test]
fn management_records_and_roles() {
    let d = Daemon::start(Options::default());
    let mut s = fcgi::connect(&d.addr);

    // GET_VALUES answers only what was asked, with our limits.
    let query = pairs(&[
        ("FCGI_MAX_CONNS", ""),
        ("FCGI_MAX_REQS", ""),
        ("FCGI_MPXS_CONNS", ""),
        ("SOMETHING_ELSE", ""),
    ]);
    s.write_all(&record(RecordType::GetValues, 0, &query))
        .unwrap();
    let rec = read_record(&mut *s).unwrap();
    assert_eq!(rec.kind, RecordType::GetValuesResult);
    assert_eq!(rec.id, 0);
    let text = String::from_utf8_lossy(&rec.content).into_owned();
    assert!(text.contains("FCGI_MAX_CONNS1"), "{text:?}");
    assert!(text.contains("FCGI_MAX_REQS1"), "{text:?}");
    assert!(text.contains("FCGI_MPXS_CONNS0"), "{text:?}");
    assert!(!text.contains("SOMETHING_ELSE"), "{text:?}");

    // An unknown management record: UNKNOWN_TYPE naming the type.
    s.write_all(&record(RecordType::Other(42), 0, b"????????"))
        .unwrap();
    let rec = read_record(&mut *s).unwrap();
    assert_eq!(rec.kind, RecordType::UnknownType);
    assert_eq!(rec.content[0], 42);

    // A role other than RESPONDER: END_REQUEST with UNKNOWN_ROLE.
    s.write_all(&begin(7, Role::Authorizer, true)).unwrap();
    let rec = read_record(&mut *s).unwrap();
    assert_eq!(rec.kind, RecordType::EndRequest);
    assert_eq!(rec.id, 7);
    assert_eq!(rec.content[4], ProtocolStatus::UnknownRole.code());

    // The same connection still serves a real request afterwards.
    let p = page(d.dir.path(), "hello.jl", HELLO);
    let mut req = Request::get(&p, "");
    req.id = 3;
    s.write_all(&req.encode()).unwrap();
    let resp = read_response(&mut *s, 3);
    assert_eq!(resp.body_text(), "hello");
    assert_eq!(resp.protocol_status, ProtocolStatus::RequestComplete);
    assert_eq!(resp.app_status, 0);
}

#[test]
fn params_split_everywhere_and_long_lengths() {
    let d = Daemon::start(Options::default());
    let p = page(
        d.dir.path(),
        "env.jl",
        r#"print("Content-Type: text/plain\r\n\r\n", length(ENV["LONG"]), " ", ENV["SHORT"], " ", ENV[repeat("N", 200)])"#,
    );
    let long = "x".repeat(70_000);
    for chunk in [1, 3, 7, 100, 65535] {
        let mut req = Request::get(&p, "");
        req.param("LONG", &long)
            .param("SHORT", "s")
            .param(&"N".repeat(200), "long-name");
        req.params_chunk = chunk;
        let resp = request(&d.addr, &req);
        assert_eq!(
            resp.body_text(),
            "70000 s long-name",
            "params in {chunk}-byte records"
        );
    }
}

#[test]
fn keep_conn_serves_several_requests_on_one_connection() {
    let d = Daemon::start(Options::default());
    let p = page(
        d.dir.path(),
        "q.jl",
        r#"print("Content-Type: text/plain\r\n\r\nq=", ENV["QUERY_STRING"])"#,
    );
    let mut s = fcgi::connect(&d.addr);
    for i in 1..=5u16 {
        let mut req = Request::get(&p, &format!("n={i}"));
        req.id = i;
        req.keep_conn = true;
        s.write_all(&req.encode()).unwrap();
        assert_eq!(read_response(&mut *s, i).body_text(), format!("q=n={i}"));
    }
    // Without KEEP_CONN the worker closes after END_REQUEST.
    let req = Request::get(&p, "last");
    s.write_all(&req.encode()).unwrap();
    assert_eq!(read_response(&mut *s, 1).body_text(), "q=last");
    assert!(closed(&mut *s));
}

#[test]
fn large_bodies_both_ways() {
    let d = Daemon::start(Options::default());
    // 1 MiB POST, checksummed by the page.
    let echo = page(
        d.dir.path(),
        "sum.jl",
        r#"b = read(stdin); print("Content-Type: text/plain\r\n\r\n", length(b), " ", sum(Int, b))"#,
    );
    let body: Vec<u8> = (0..1 << 20).map(|i| (i * 7 % 251) as u8).collect();
    let expected: u64 = body.iter().map(|&b| b as u64).sum();
    let req = Request::post(&echo, "application/octet-stream", body);
    let resp = request(&d.addr, &req);
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.body_text(), format!("{} {expected}", 1 << 20));

    // A 200 KiB response comes back whole, in records of at most 65535 bytes.
    let big = page(
        d.dir.path(),
        "big.jl",
        r#"print("Content-Type: application/octet-stream\r\n\r\n"); for i in 1:200; print(repeat(string(i % 10), 1024)); end"#,
    );
    let resp = fcgi::get(&d.addr, &big, "");
    let body = resp.http().2;
    assert_eq!(body.len(), 200 * 1024);
    assert_eq!(&body[..3], b"111");
    assert_eq!(&body[body.len() - 3..], b"000");
    assert!(resp.stdout_records.iter().all(|&n| n <= 65535));
    assert!(resp.stdout_records.len() >= 4, "{:?}", resp.stdout_records);
}

#[test]
fn abort_before_the_page_runs() {
    let d = Daemon::start(Options::default());
    let marker = d.dir.path().join("ran");
    let p = page(
        d.dir.path(),
        "side.jl",
        &format!(
            "touch({:?}); print(\"Content-Type: text/plain\\r\\n\\r\\nran\")",
            marker.display().to_string()
        ),
    );
    let mut s = fcgi::connect(&d.addr);
    let req = Request::get(&p, "");
    s.write_all(&begin(1, Role::Responder, true)).unwrap();
    s.write_all(&stream(RecordType::Params, 1, &pairs(&req.params), 65535))
        .unwrap();
    s.write_all(&record(RecordType::AbortRequest, 1, &[]))
        .unwrap();
    let rec = read_record(&mut *s).unwrap();
    assert_eq!(rec.kind, RecordType::EndRequest, "{rec:?}");
    assert_eq!(rec.id, 1);
    assert!(!marker.exists(), "an aborted request must not run its page");
    // The kept connection goes on.
    let mut req = Request::get(&p, "");
    req.id = 2;
    s.write_all(&req.encode()).unwrap();
    assert_eq!(read_response(&mut *s, 2).body_text(), "ran");
}

/// Sends `bytes`, checks the worker closes the connection, then checks a
/// normal request on a new connection still works.
fn closes_then_serves(d: &Daemon, what: &str, bytes: &[u8]) {
    let p = d.dir.path().join("hello.jl");
    let mut s = fcgi::connect(&d.addr);
    s.write_all(bytes).unwrap();
    assert!(closed(&mut *s), "{what}: connection not closed");
    drop(s);
    let resp = fcgi::get(&d.addr, &p, "");
    assert_eq!(resp.body_text(), "hello", "{what}: next request failed");
}

#[test]
fn hostile_streams_close_only_their_connection() {
    let d = Daemon::start(Options {
        config: Some("max_params_bytes = 4096\nread_timeout = \"2s\"\n".into()),
        ..Options::default()
    });
    page(d.dir.path(), "hello.jl", HELLO);
    let pids = d.worker_pids();

    let mut bad_version = begin(1, Role::Responder, false);
    bad_version[0] = 9;
    closes_then_serves(&d, "bad version", &bad_version);
    closes_then_serves(&d, "garbage", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");

    // A name-value pair whose length runs past the params.
    let mut bogus = begin(1, Role::Responder, false);
    bogus.extend(record(RecordType::Params, 1, &[0x85, 0, 0, 0, 1, b'A']));
    bogus.extend(record(RecordType::Params, 1, &[]));
    closes_then_serves(&d, "pair length past the record", &bogus);

    // Params beyond max_params_bytes.
    let mut huge = begin(1, Role::Responder, false);
    huge.extend(stream(
        RecordType::Params,
        1,
        &pairs(&[("X", "y".repeat(10_000))]),
        65535,
    ));
    closes_then_serves(&d, "oversized params", &huge);

    // A truncated record: header promises 100 bytes, 10 arrive, then silence
    // (the read timeout ends it).
    let mut truncated = begin(1, Role::Responder, false);
    let promised = Header {
        padding_len: 0,
        ..Header::new(RecordType::Params, 1, 100)
    };
    truncated.extend_from_slice(&promised.encode());
    truncated.extend_from_slice(&[0; 10]);
    closes_then_serves(&d, "truncated record", &truncated);

    // A truncated record then EOF from the client.
    {
        let mut s = fcgi::connect(&d.addr);
        s.write_all(&truncated).unwrap();
    }
    let p = d.dir.path().join("hello.jl");
    assert_eq!(fcgi::get(&d.addr, &p, "").body_text(), "hello");

    // A client that hangs up before reading a large response.
    let big = page(
        d.dir.path(),
        "big.jl",
        r#"print("Content-Type: text/plain\r\n\r\n", repeat("z", 4_000_000))"#,
    );
    for _ in 0..3 {
        let mut s = fcgi::connect(&d.addr);
        s.write_all(&Request::get(&big, "").encode()).unwrap();
        drop(s);
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(fcgi::get(&d.addr, &p, "").body_text(), "hello");

    assert_eq!(d.worker_pids(), pids, "no worker may have died");
    let log = d.log_text();
    assert!(
        log.contains("WARN"),
        "each closed connection is logged:\n{log}"
    );
}

#[test]
fn the_fastcgi_client_crate_gets_pages() {
    use fastcgi_client::{Client, Params, Request as CrateRequest};
    let d = Daemon::start(Options {
        tcp: true,
        ..Options::default()
    });
    let p = page(
        d.dir.path(),
        "post.jl",
        r#"print("Content-Type: text/plain\r\n\r\n", ENV["REQUEST_METHOD"], " ", String(read(stdin)))"#,
    );
    let Addr::Tcp(addr) = d.addr.clone() else {
        unreachable!()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let script = p.to_str().unwrap();
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut client = Client::new_keep_alive(stream);
        for i in 0..3 {
            let body = format!("body number {i}");
            let params = Params::default()
                .request_method("POST")
                .script_filename(script)
                .script_name("/post.jl")
                .request_uri("/post.jl")
                .content_type("text/plain")
                .content_length(body.len());
            let out = client
                .execute(CrateRequest::new(params, &mut body.as_bytes()))
                .await
                .unwrap();
            let stdout = String::from_utf8(out.stdout.unwrap()).unwrap();
            assert!(
                stdout.ends_with(&format!("POST body number {i}")),
                "{stdout}"
            );
        }
    });
}
