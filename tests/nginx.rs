//! End to end: a real nginx, configured with the README's snippet
//! (`packaging/nginx/julia-fcgi.conf`), in front of the real daemon serving
//! the example pages, driven by curl.

mod common;

use common::web::{curl, start_nginx};
use common::{examples, Addr, Daemon, Options};

#[test]
fn nginx_serves_the_example_pages() {
    let d = Daemon::start(Options {
        workers: 2,
        ..Options::default()
    });
    let Addr::Unix(sock) = &d.addr else {
        unreachable!()
    };
    let nginx = start_nginx(sock, &examples());
    let port = nginx.port;

    let r = curl(port, "/hello.jl", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("Hello, world!"), "{}", r.text());

    let r = curl(port, "/form.jl?name=Ada", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("Ada"), "{}", r.text());
    let r = curl(port, "/form.jl", &["--data", "name=Grace+%3Cb%3E"]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.text().contains("Grace &lt;b&gt;"),
        "escaped form input: {}",
        r.text()
    );

    let r = curl(port, "/cgi_env.jl?x=1", &["--data-binary", "raw body"]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.text().contains("QUERY_STRING") && r.text().contains("raw body"),
        "{}",
        r.text()
    );

    let first = curl(port, "/handler.jl", &[]);
    assert_eq!(first.status, 200, "{}", first.text());

    let r = curl(port, "/throws.jl", &[]);
    assert_eq!(r.status, 500, "{}", r.text());

    // nginx's own 404 for a page that does not exist (the snippet's try_files).
    assert_eq!(curl(port, "/missing.jl", &[]).status, 404);

    // Many requests over several connections: no 502 from lost workers.
    for i in 0..50 {
        let r = curl(port, &format!("/hello.jl?i={i}"), &[]);
        assert_eq!(r.status, 200);
    }
    let errors = std::fs::read_to_string(nginx.prefix.path().join("error.log")).unwrap_or_default();
    assert!(
        !errors.contains("connect() to unix"),
        "nginx could not reach julia-fcgi:\n{errors}"
    );
}
